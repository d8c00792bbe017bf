"""Test rig for the proxy: an M4 stand-in on a real raw pty, and the proxy in-process.

``PtyM4`` is the stand-in for the hardware boundary (the M4 behind /dev/x8h7_ui): it holds the
master side of a pty, the proxy opens the slave through a symlink (so a "reset" can swap in a
fresh pty at the same path, as a re-enumerated device would). It speaks msgpack-RPC with real
msgpack, records every message it receives byte for byte, answers bound procedures (with
rpclib's str8 error text for unknown ones, which crashed the original proxy), and can write
arbitrary bytes (garbage, split messages, raw text) toward the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack

from x8manager.proxy import M4Proxy, ProxyConfig
from x8manager.proxy.link import DeviceLink, ReaderMode
from x8manager.rpc import RpcService
from x8manager.rpc.framing import Frame, Request, Response, StreamDecoder

# The M4 stamps its calls with the RTOS thread id (reference §6).
M4_THREAD_ID = 0x10003000
# Conditions are polled until this deadline; nothing in the tests waits for a fixed time.
WAIT = 10.0


async def wait_for(predicate: Callable[[], bool], within: float = WAIT, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


Procedure = Callable[..., Any]


class PtyM4:
    """The M4 stand-in on the master side of a raw pty (see module docstring)."""

    def __init__(self, link_path: Path) -> None:
        self.link_path = link_path
        self.procedures: dict[str, Procedure] = {}
        self.received: list[bytes] = []  # raw messages as the M4 got them
        self.answer = True  # set False to play an M4 that never replies
        self.writes: list[bytes] = []  # raw write()s the M4 saw (one message each)
        self._replies: dict[int, asyncio.Future[Frame]] = {}
        self._master = -1
        self._slave = -1
        self._decoder = StreamDecoder()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- pty plumbing -----------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link_path.with_suffix(".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link_path)
        self._decoder.reset()
        assert self._loop is not None
        self._loop.add_reader(master, self._on_readable)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._open_pty()

    def close(self) -> None:
        if self._master >= 0:
            assert self._loop is not None
            self._loop.remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1

    def reset(self) -> None:
        """Play an M4 reset / device re-enumeration: the pty goes away, a new one appears."""
        self.close()
        self._open_pty()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # the proxy closed its side; it reopens the link path
        self.writes.append(data)
        for frame in self._decoder.feed_frames(data):
            self.received.append(frame.raw)
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        message = frame.message
        if isinstance(message, Response):
            future = self._replies.get(message.msgid)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if not isinstance(message, Request):  # a notification: run it, nothing to answer
            handler = self.procedures.get(message.method)
            if handler is not None:
                handler(*message.params)
            return
        if not self.answer:
            return
        fn = self.procedures.get(message.method)
        if fn is None:
            # rpclib's text: 68 bytes for 'gas', so msgpack-c packs it as str8 (d9).
            text = (f"rpclib: server could not find function '{message.method}' "
                    f"with argument count {len(message.params)}.")
            self.write(msgpack.packb([1, message.msgid, text, None]))
            return
        result = fn(*message.params)
        if asyncio.iscoroutine(result):
            async def later(msgid: int = message.msgid, pending: Any = result) -> None:
                value = await pending
                self.write(msgpack.packb([1, msgid, None, value], use_bin_type=True))
            asyncio.get_running_loop().create_task(later())
            return
        self.write(msgpack.packb([1, message.msgid, None, result], use_bin_type=True))

    # -- M4 → Linux -------------------------------------------------------------------------

    def write(self, data: bytes, chunk: int = 128) -> None:
        """Bytes toward the proxy, cut like the H7 firmware does (≤128 per subpacket)."""
        for start in range(0, len(data), chunk):
            os.write(self._master, data[start:start + chunk])

    async def call(self, method: str, *args: Any, msgid: int = M4_THREAD_ID, within: float = WAIT) -> Frame:
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._replies[msgid] = future
        try:
            # msgpack-c packs the thread id unsigned: ce xx xx xx xx.
            header = b"\x94\x00\xce" + msgid.to_bytes(4, "big")
            self.write(header + msgpack.packb(method) + msgpack.packb(list(args), use_bin_type=True))
            async with asyncio.timeout(within):
                return await future
        finally:
            self._replies.pop(msgid, None)

    def notify(self, method: str, *args: Any) -> None:
        self.write(msgpack.packb([2, method, list(args)], use_bin_type=True))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_proxy(tmp_path: Path, reader: ReaderMode = "auto",
                        **options: Any) -> AsyncIterator[tuple[M4Proxy, PtyM4]]:
    """The proxy in-process on loopback with ephemeral ports, and the pty M4 behind it.

    ``reader="thread"`` reads the pty the way the proxy reads x8h7_ui (no poll method).
    """
    m4 = PtyM4(tmp_path / "x8h7_ui")
    m4.start()
    config = ProxyConfig(device=str(m4.link_path), bind="127.0.0.1", register_port=0, call_port=0, **options)
    proxy = M4Proxy(config, link=DeviceLink(config.device, reader=reader))
    await proxy.start()
    try:
        yield proxy, m4
    finally:
        await proxy.stop()
        m4.close()


async def exchange(port: int, data: bytes, *, half_close: bool = False, within: float = WAIT) -> bytes:
    """Send *data* to 127.0.0.1:*port*, return everything received until the proxy closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(within):
            return await reader.read(-1)
    finally:
        writer.close()


async def register(port: int, data: bytes, replies: int = 1, within: float = WAIT) -> bytes:
    """Send to the register port and read *replies* msgpack objects back (connection stays open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        unpacker = msgpack.Unpacker()
        got = b""
        count = 0
        async with asyncio.timeout(within):
            while count < replies:
                chunk = await reader.read(4096)
                assert chunk, "register port closed the connection"
                got += chunk
                unpacker.feed(chunk)
                count += sum(1 for _ in unpacker)
        return got
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def serving(proxy: M4Proxy, **procedures: Procedure) -> AsyncIterator[RpcService]:
    """A Linux service with *procedures*, registered with *proxy* for as long as the block runs."""
    service = RpcService(0, host="127.0.0.1")
    for name, fn in procedures.items():
        service.add(name, fn)
    task = asyncio.create_task(service.serve(register_port=proxy.register_port))
    try:
        await asyncio.wait_for(service.wait_registered(), WAIT)
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await service.close()
