"""The virtual M4's control surface: msgpack-RPC (:mod:`x8manager.rpc`) on a local socket.

Served by :class:`~x8manager.rpc.RpcService` on ``tcp:HOST:PORT`` or ``unix:PATH``; called with
:class:`~x8manager.rpc.M4Client` (:class:`ControlClient` wraps it). Methods:

- ``call(name, args[, timeout_ms])``: an ``RPC.call`` from an idle sketch thread with
  ``RPC.setTimeout(timeout_ms)`` (default: ``m4-sim --call-timeout``); the result, nil after an error
  reply (the text is lost, as on the M4), an error when the call timed out;
- ``thread_calls(index, calls[, timeout_ms])``: ``calls`` (``[[name, args], ...]``) one after the other
  from sketch thread *index* (0..9, its one fixed msgid) with ``RPC.setTimeout(timeout_ms)`` (none: wait
  forever); ``[[result, timed_out], ...]``, a timed-out call's result nil, as the sketch sees it;
- ``call_as(type, name, args[, timeout_ms])``: the same with ``.as<type>()`` (a C++ type name): on nil
  or a wrong type the virtual M4 halts, as a real one does;
- ``notify(name, args)``, ``serial_write(data)``, ``serial_println(text)``, ``print_raw(text)``: output;
- ``serial_read()``: take the bytes Linux wrote to the M4's ``Serial``;
- ``bind_echo(name)``: bind a stand-in procedure that returns its arguments;
- ``calls_received()``: ``[[method, params, is_notification], ...]`` Linux sent to the M4;
- ``stats()``, ``bound()``, ``sketch()``; ``reset()``: reset the M4 (ends a halt).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from x8manager.m4sim.errors import M4SimError
from x8manager.m4sim.links import Endpoint
from x8manager.m4sim.m4 import VirtualM4
from x8manager.rpc.client import M4Client
from x8manager.rpc.errors import RpcError, X8RpcError
from x8manager.rpc.server import RpcService

__all__ = ["DEFAULT_CALL_TIMEOUT_MS", "ControlClient", "ControlError", "control_methods", "serve_control"]

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT_MS = 5000


class ControlError(M4SimError):
    """The control surface answered with an error, or could not be reached."""


def control_methods(m4: VirtualM4, call_timeout_ms: int = DEFAULT_CALL_TIMEOUT_MS,
                    ) -> dict[str, Callable[..., Awaitable[Any]]]:
    """The control procedures (coroutines: they run on the virtual M4's event loop)."""

    async def call(name: str, args: list[Any], timeout_ms: int | None = None) -> Any:
        thread = m4.idle_thread()
        wait = call_timeout_ms if timeout_ms is None else timeout_ms
        thread.set_timeout(wait)
        result = await thread.call(name, *args)
        if thread.timed_out:
            raise ValueError(f"no reply from Linux to {name!r} within {wait} ms (RPC.timedOut())")
        return result

    async def thread_calls(index: int, calls: list[list[Any]],
                           timeout_ms: int | None = None) -> list[list[Any]]:
        thread = m4.thread(index)
        thread.set_timeout(timeout_ms)
        answers: list[list[Any]] = []
        for name, args in calls:
            answers.append([await thread.call(name, *args), thread.timed_out])
        return answers

    async def call_as(kind: str, name: str, args: list[Any], timeout_ms: int | None = None) -> Any:
        thread = m4.idle_thread()
        thread.set_timeout(call_timeout_ms if timeout_ms is None else timeout_ms)
        return await thread.call_as(kind, name, *args)

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

    async def reset() -> None:
        m4.reset()

    methods: dict[str, Callable[..., Awaitable[Any]]] = {
        "call": call, "call_as": call_as, "notify": notify, "serial_write": serial_write,
        "serial_println": serial_println, "serial_read": serial_read, "print_raw": print_raw,
        "bind_echo": bind_echo, "calls_received": calls_received, "stats": stats, "bound": bound,
        "sketch": sketch, "reset": reset, "thread_calls": thread_calls,
    }
    return {name: _plain_errors(fn) for name, fn in methods.items()}


def _plain_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The virtual M4's own errors (a halted M4, a busy thread) answer as plain error texts."""

    async def wrapped(*args: Any) -> Any:
        try:
            return await fn(*args)
        except M4SimError as exc:
            raise ValueError(str(exc)) from exc

    return wrapped


@contextlib.asynccontextmanager
async def serve_control(m4: VirtualM4, endpoint: Endpoint,
                        call_timeout_ms: int = DEFAULT_CALL_TIMEOUT_MS) -> AsyncIterator[Endpoint]:
    """Serve the control surface on *endpoint*; yields the bound endpoint (port 0 resolved)."""
    if endpoint.kind == "unix":
        service = RpcService(0, path=endpoint.path)
    else:
        service = RpcService(endpoint.port, host=endpoint.host)
    for name, fn in control_methods(m4, call_timeout_ms).items():
        service.add(name, fn)
    await service.start()
    bound = endpoint if endpoint.kind == "unix" else Endpoint("tcp", host=endpoint.host, port=service.port)
    try:
        yield bound
    finally:
        await service.close()


class ControlClient:
    """Blocking client of the control surface (``m4-sim call ...``, the virtual X8, tests)."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        if endpoint.kind == "unix":
            self._client = M4Client(timeout=timeout, path=endpoint.path)
        else:
            self._client = M4Client(endpoint.host, endpoint.port, timeout=timeout)

    def request(self, method: str, *params: Any) -> Any:
        """Call *method*; its result, or ``ControlError`` with the error text."""
        try:
            return self._client.call(method, *params)
        except RpcError as exc:
            error = exc.error.decode("utf-8", "replace") if isinstance(exc.error, bytes) else str(exc.error)
            raise ControlError(error) from None
        except X8RpcError as exc:
            raise ControlError(f"cannot reach m4-sim control at {self.endpoint}: {exc}") from exc

    def close(self) -> None:
        """Nothing to close: each request has its own connection."""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
