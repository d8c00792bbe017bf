"""Clients that call procedures on the M4 through the proxy's call port (5001).

Both clients open one TCP connection per call and read one reply: that is the original
proxy's rule (it closes after each message), so the same code works against it and ours.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from typing import Any, Final

from x8manager.rpc.errors import RpcConnectionError, RpcError, RpcTimeout, X8RpcError
from x8manager.rpc.framing import (
    MAX_MSGID,
    Frame,
    Response,
    StreamDecoder,
    pack_notification,
    pack_request,
)

__all__ = [
    "DEFAULT_CALL_PORT",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_REGISTER_PORT",
    "AsyncM4Client",
    "M4Client",
    "proxy_host",
]

DEFAULT_CALL_PORT: Final = 5001
DEFAULT_REGISTER_PORT: Final = 5000
# The proxy waits 1 s for the M4 and then gives up; the client allows that plus connection
# set-up on a busy X8, so a missing reply surfaces as the proxy's answer, not ours.
DEFAULT_CALL_TIMEOUT: Final = 3.0
READ_CHUNK: Final = 64 * 1024
PROXY_HOST_ENV: Final = "M4_PROXY_HOST"
LOCAL_HOST: Final = "127.0.0.1"


def proxy_host(host: str | None = None) -> str:
    """*host*, else ``$M4_PROXY_HOST``, else 127.0.0.1 (the proxy's call port is IPv4)."""
    return host or os.environ.get(PROXY_HOST_ENV) or LOCAL_HOST


class _MsgidSource:
    """Per-client msgids; wrap inside uint32, which is what the M4 accepts."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def next(self) -> int:
        return next(self._counter) & MAX_MSGID


def _answer(method: str, msgid: int, frames: list[Frame]) -> tuple[bool, Any]:
    """``(done, result)`` from the frames read so far; raises on an error reply."""
    for frame in frames:
        message = frame.message
        if not isinstance(message, Response):
            continue
        if message.msgid != msgid:
            raise RpcConnectionError(
                f"{method}: reply for msgid {message.msgid} on the connection of msgid {msgid}"
                " (an old proxy that routes replies first-in first-out?)"
            )
        if message.error is not None:
            raise RpcError(method, message.error)
        return True, message.result
    return False, None


def _closed_without_reply(method: str, address: tuple[str, int], pending: int) -> Exception:
    if pending:
        return RpcConnectionError(
            f"{method}: {address[0]}:{address[1]} closed the connection in the middle of a reply"
        )
    # The proxy closes without a byte when the M4 did not answer within its wait.
    return RpcTimeout(f"{method}: no reply from the M4 (the proxy at {address[0]}:{address[1]} "
                      "closed the connection without one)")


class M4Client:
    """Synchronous client: ``M4Client().call("temperature")``.

    *timeout* bounds each call as a whole (connect, send, reply).
    """

    def __init__(self, host: str | None = None, port: int = DEFAULT_CALL_PORT,
                 timeout: float = DEFAULT_CALL_TIMEOUT, *, path: str | None = None) -> None:
        """*path*: call a msgpack-RPC server on that UNIX socket instead (a local control surface)."""
        self.address = (proxy_host(host), port)
        self.path = path
        self.timeout = timeout
        self._msgids = _MsgidSource()

    def _connect(self, method: str, deadline: float) -> socket.socket:
        if self.path is not None:
            return self._connect_unix(method, self.path, deadline)
        try:
            sock = socket.create_connection(self.address, timeout=max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            host, port = self.address
            raise RpcTimeout(f"{method}: connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise RpcConnectionError(
                f"{method}: cannot connect to the proxy at {self.address[0]}:{self.address[1]}: {exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    @staticmethod
    def _connect_unix(method: str, path: str, deadline: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise RpcConnectionError(f"{method}: cannot connect to {path}: {exc}") from exc
        return sock

    def call(self, method: str, *args: Any) -> Any:
        """Call *method* on the M4 and return its result; raise :class:`RpcError` on an error reply."""
        deadline = time.monotonic() + self.timeout
        msgid = self._msgids.next()
        payload = pack_request(msgid, method, args)
        with self._connect(method, deadline) as sock:
            decoder = StreamDecoder()
            try:
                sock.sendall(payload)
                while True:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    data = sock.recv(READ_CHUNK)
                    if not data:
                        raise _closed_without_reply(method, self.address, decoder.pending)
                    done, result = _answer(method, msgid, decoder.feed_frames(data))
                    if done:
                        return result
            except X8RpcError:
                raise
            except TimeoutError:
                raise RpcTimeout(f"{method}: no reply within {self.timeout:g} s") from None
            except OSError as exc:
                raise RpcConnectionError(f"{method}: connection to the proxy failed: {exc}") from exc

    def notify(self, method: str, *args: Any) -> None:
        """Send a notification; return once the proxy has taken it (it closes the connection)."""
        deadline = time.monotonic() + self.timeout
        with self._connect(method, deadline) as sock:
            try:
                sock.sendall(pack_notification(method, args))
                sock.shutdown(socket.SHUT_WR)
                while True:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    if not sock.recv(READ_CHUNK):
                        return
            except TimeoutError:
                return  # sent; the proxy just has not closed yet
            except X8RpcError:
                raise
            except OSError as exc:
                raise RpcConnectionError(f"{method}: connection to the proxy failed: {exc}") from exc


class AsyncM4Client:
    """asyncio client: ``await AsyncM4Client().call("temperature")``."""

    def __init__(self, host: str | None = None, port: int = DEFAULT_CALL_PORT,
                 timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.address = (proxy_host(host), port)
        self.timeout = timeout
        self._msgids = _MsgidSource()

    async def _connect(self, method: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(*self.address)
        except OSError as exc:
            raise RpcConnectionError(
                f"{method}: cannot connect to the proxy at {self.address[0]}:{self.address[1]}: {exc}"
            ) from exc

    async def call(self, method: str, *args: Any) -> Any:
        """Call *method* on the M4 and return its result; raise :class:`RpcError` on an error reply."""
        msgid = self._msgids.next()
        payload = pack_request(msgid, method, args)
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect(method)
                try:
                    writer.write(payload)
                    decoder = StreamDecoder()
                    while True:
                        data = await reader.read(READ_CHUNK)
                        if not data:
                            raise _closed_without_reply(method, self.address, decoder.pending)
                        done, result = _answer(method, msgid, decoder.feed_frames(data))
                        if done:
                            return result
                finally:
                    writer.close()
        except X8RpcError:
            raise
        except TimeoutError:
            raise RpcTimeout(f"{method}: no reply within {self.timeout:g} s") from None
        except OSError as exc:
            raise RpcConnectionError(f"{method}: connection to the proxy failed: {exc}") from exc

    async def notify(self, method: str, *args: Any) -> None:
        """Send a notification; return once the proxy has taken it (it closes the connection)."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect(method)
                try:
                    writer.write(pack_notification(method, args))
                    writer.write_eof()
                    while await reader.read(READ_CHUNK):
                        pass
                finally:
                    writer.close()
        except X8RpcError:
            raise
        except TimeoutError:
            return  # sent; the proxy just has not closed yet
        except OSError as exc:
            raise RpcConnectionError(f"{method}: connection to the proxy failed: {exc}") from exc
