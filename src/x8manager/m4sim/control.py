"""The virtual M4's control surface: msgpack-RPC on a local socket, for people and tests.

Requests are ``[0, msgid, method, params]`` on a persistent connection; replies are
``[1, msgid, error, result]``. Methods:

- ``call(name, args[, reply_timeout])``: make the M4 call a Linux procedure; the result, or the error;
- ``notify(name, args)``: make the M4 send a notification;
- ``serial_write(data)``: ``Serial.write`` on the M4 (a ``tty`` notification);
- ``serial_println(text)``: ``Serial.println`` (two ``tty`` notifications: the text, then CR LF);
- ``serial_read()``: take the bytes Linux wrote to the M4's ``Serial``;
- ``print_raw(text)``: raw ``RPC.print`` text into the stream;
- ``bind_echo(name)``: bind a procedure that returns its arguments;
- ``calls_received()``: ``[[method, params, is_notification], ...]`` Linux sent to the M4;
- ``stats()``: counters; ``bound()``: the bound procedure names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from x8manager.m4sim import wire
from x8manager.m4sim.links import Endpoint
from x8manager.m4sim.m4 import LinuxCallError, M4SimError, VirtualM4
from x8manager.rpc.framing import StreamDecoder

__all__ = ["ControlClient", "ControlError", "serve_control"]

log = logging.getLogger(__name__)


class ControlError(M4SimError):
    """The control surface answered with an error, or could not be reached."""


def _methods(m4: VirtualM4) -> dict[str, Callable[..., Awaitable[Any]]]:
    async def call(name: str, args: list[Any], reply_timeout: float | None = None) -> Any:
        return await m4.call(name, *args, reply_timeout=reply_timeout)

    async def notify(name: str, args: list[Any]) -> None:
        await m4.notify(name, *args)

    async def serial_write(data: bytes | str) -> None:
        await m4.serial_write(data)

    async def serial_println(text: str) -> None:
        await m4.serial_println(text)

    async def serial_read() -> bytes:
        return m4.serial_read()

    async def print_raw(text: bytes | str) -> None:
        await m4.print_raw(text)

    async def bind_echo(name: str) -> None:
        m4.bind_echo(name)

    async def calls_received() -> list[list[Any]]:
        return [[c.method, c.params, c.notification] for c in m4.calls_received]

    async def stats() -> dict[str, Any]:
        return m4.stats.as_dict()

    async def bound() -> list[str]:
        return m4.bound_names

    async def sketch() -> dict[str, Any] | None:
        return None if m4.sketch is None else m4.sketch.as_dict()

    return {
        "call": call,
        "notify": notify,
        "serial_write": serial_write,
        "serial_println": serial_println,
        "serial_read": serial_read,
        "print_raw": print_raw,
        "bind_echo": bind_echo,
        "calls_received": calls_received,
        "stats": stats,
        "bound": bound,
        "sketch": sketch,
    }


async def _answer(
    methods: dict[str, Callable[..., Awaitable[Any]]],
    message: Any,
    writer: asyncio.StreamWriter,
) -> None:
    if not (isinstance(message, list) and len(message) == 4 and message[0] == wire.REQUEST):
        log.warning("m4-sim control: ignored a message that is not a request: %r", message)
        return
    _, msgid, method, params = message
    error: Any = None
    result: Any = None
    handler = methods.get(method) if isinstance(method, str) else None
    if handler is None:
        error = f"unknown control method {method!r}; known: {', '.join(sorted(methods))}"
    elif not isinstance(params, list):
        error = f"control method {method!r}: params must be an array, got {params!r}"
    else:
        try:
            result = await handler(*params)
        except LinuxCallError as exc:
            error = exc.error
        except (M4SimError, TypeError, ValueError) as exc:
            error = f"{method}: {exc}"
    writer.write(wire.response(msgid, error, result))
    await writer.drain()


@contextlib.asynccontextmanager
async def serve_control(m4: VirtualM4, endpoint: Endpoint) -> AsyncIterator[Endpoint]:
    """Serve the control surface on *endpoint*; yields the bound endpoint (port 0 resolved)."""
    methods = _methods(m4)
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[Any]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = StreamDecoder()
        writers.add(writer)
        current = asyncio.current_task()
        if current is not None:
            handlers.add(current)
        try:
            while data := await reader.read(65536):
                for item in decoder.feed(data):
                    # Each request runs on its own so a slow M4 call does not hold up the others.
                    task = asyncio.create_task(_answer(methods, item.value, writer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except ConnectionError as exc:
            log.warning("m4-sim control: dropping connection: %s", exc)
        finally:
            writers.discard(writer)
            if current is not None:
                handlers.discard(current)
            writer.close()

    server: asyncio.base_events.Server
    if endpoint.kind == "unix":
        server = await asyncio.start_unix_server(connection, endpoint.path)
        bound = endpoint
    else:
        server = await asyncio.start_server(connection, endpoint.host, endpoint.port)
        host, port = server.sockets[0].getsockname()[:2]
        bound = Endpoint("tcp", host=host, port=port)
    try:
        yield bound
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        # Python 3.11 logs an error for a cancelled connection handler, so end each one by
        # closing its connection (its read returns end of stream) and let it return normally.
        for writer in list(writers):
            writer.close()
        if handlers:
            await asyncio.wait(set(handlers), timeout=5)
        await server.wait_closed()


class ControlClient:
    """Blocking client of the control surface (used by ``m4-sim call ...`` and by tests)."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._decoder = StreamDecoder()
        self._msgid = 0

    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                if self.endpoint.kind == "unix":
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(self.timeout)
                    sock.connect(self.endpoint.path)
                else:
                    sock = socket.create_connection((self.endpoint.host, self.endpoint.port), self.timeout)
            except OSError as exc:
                raise ControlError(f"cannot reach m4-sim control at {self.endpoint}: {exc}") from exc
            self._sock = sock
        return self._sock

    def request(self, method: str, *params: Any) -> Any:
        """Send one request and return its result; raise ``ControlError`` on an error reply."""
        sock = self._connect()
        self._msgid += 1
        msgid = self._msgid
        try:
            sock.sendall(wire.request(msgid, method, list(params)))
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ControlError(f"m4-sim control at {self.endpoint} closed the connection")
                for item in self._decoder.feed(data):
                    message = item.value
                    if isinstance(message, list) and len(message) == 4 and message[1] == msgid:
                        if message[2] is not None:
                            raise ControlError(message[2])
                        return message[3]
        except OSError as exc:
            self.close()
            raise ControlError(f"m4-sim control at {self.endpoint}: {method}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._decoder = StreamDecoder()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
