"""Test rig for the proxy: the virtual M4 on a raw pty, and the proxy in-process.

The M4 is :class:`x8manager.m4sim.VirtualM4`, the one stand-in M4 of every test, behaving as
Arduino's real RPC library does, on a pty the proxy opens through a symlink (so ``await
m4.replug_pty()`` can swap in a fresh pty at the same path, as a re-enumerated device would).
Its test switches live in ``m4.switches`` (``answer_calls``: an M4 that takes calls and never
replies; ``chunk_size``; ...); ``raw_received`` records every message the M4 got, byte for byte;
``send_raw`` (any bytes toward Linux), ``call_raw`` (an ``RPC.call`` as any thread id, the reply
byte for byte) and ``bind(..., replace=True)`` are the test-only actions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack

from tests.support import wait_until
from x8manager.m4sim import VirtualM4
from x8manager.m4sim.wire import THREAD_ID_BASE
from x8manager.proxy import M4Proxy, ProxyConfig
from x8manager.proxy.link import ReaderMode
from x8manager.rpc import RpcService

# The M4 stamps its calls with the RTOS thread id (reference §6).
M4_THREAD_ID = THREAD_ID_BASE
# Conditions are polled until this deadline; nothing in the tests waits for a fixed time.
WAIT = 10.0


async def wait_for(predicate: Callable[[], bool], within: float = WAIT, what: str = "condition") -> None:
    """The proxy tests' argument order for :func:`tests.support.wait_until`."""
    await wait_until(predicate, what, within)


Procedure = Callable[..., Any]


def bare_m4() -> VirtualM4:
    """A bare sketch: no demo procedures, no SerialRPC; procedures run one at a time, as on the M4."""
    return VirtualM4(demo=False, serial=False)


async def m4_on_pty(tmp_path: Path) -> tuple[VirtualM4, str]:
    m4 = bare_m4()
    path = await m4.start_on_pty(alias=tmp_path / "x8h7_ui")
    return m4, path


@contextlib.asynccontextmanager
async def running_proxy(tmp_path: Path, reader: ReaderMode = "auto", m4: VirtualM4 | None = None,
                        **options: Any) -> AsyncIterator[tuple[M4Proxy, VirtualM4]]:
    """The proxy in-process on loopback with ephemeral ports, and the virtual M4 behind it.

    ``reader="thread"`` reads the pty the way the proxy reads x8h7_ui (no poll method); *m4*
    replaces the bare sketch.
    """
    if m4 is None:
        m4, path = await m4_on_pty(tmp_path)
    else:
        path = await m4.start_on_pty(alias=tmp_path / "x8h7_ui")
    config = ProxyConfig(device=path, bind="127.0.0.1", register_port=0, call_port=0,
                         device_reader=reader, **options)
    proxy = M4Proxy(config)
    await proxy.start()
    try:
        yield proxy, m4
    finally:
        await proxy.stop()
        await m4.stop()


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


def monitor_rig(tmp_path: Path) -> contextlib.AbstractAsyncContextManager[tuple[M4Proxy, VirtualM4]]:
    """The proxy with its monitor port on 127.0.0.1, and a virtual M4 whose SerialRPC binds tty."""
    return running_proxy(tmp_path, m4=VirtualM4(demo=False), monitor_listen="127.0.0.1:0")
