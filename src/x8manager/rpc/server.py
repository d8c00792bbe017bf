"""Serve procedures to the M4: a msgpack-RPC server that registers its names with the proxy.

The proxy connects to ``127.0.0.1:<port>`` for every call the M4 makes. The server accepts any
peer speaking msgpack-RPC over TCP: persistent connections, several requests per connection,
replies in completion order (matched by msgid), notifications handled in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgpack

from x8manager.rpc.client import DEFAULT_REGISTER_PORT, proxy_host
from x8manager.rpc.errors import RpcConnectionError, RpcError, RpcTimeout
from x8manager.rpc.framing import (
    Notification,
    Request,
    Response,
    StreamDecoder,
    pack_request,
    pack_response,
)

__all__ = ["REGISTER_TIMEOUT", "RpcService"]

log = logging.getLogger(__name__)

Procedure = Callable[..., Any]
ProcedureT = TypeVar("ProcedureT", bound=Procedure)

# register() is answered by the proxy itself, without the M4: a second is generous.
REGISTER_TIMEOUT: Final = 5.0
# Re-registration after the proxy went away: first retry soon (a restart takes ~2 s under
# systemd), then back off so a proxy that is down for good costs nothing.
REREGISTER_FIRST_DELAY: Final = 0.2
REREGISTER_MAX_DELAY: Final = 5.0
READ_CHUNK: Final = 64 * 1024


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class RpcService:
    """Procedures for the M4 (or any msgpack-RPC peer), served on *port*.

    >>> service = RpcService(5005)
    >>> @service.procedure
    ... def multiply(a, b):
    ...     return a * b
    >>> service.run()  # doctest: +SKIP  (registers with the proxy, serves forever)

    Synchronous procedures run in a worker thread so a slow one does not stall the others;
    coroutine functions run on the event loop.
    """

    def __init__(self, port: int, host: str = "0.0.0.0", *, path: str | None = None) -> None:
        """Serve on *host*:*port*, or on the UNIX socket *path* when given (a local control surface)."""
        self.host = host
        self.path = path
        self.requested_port = port
        self._procedures: dict[str, Procedure] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._registered = asyncio.Event()

    # -- procedures -------------------------------------------------------------------------

    def procedure(self, fn: ProcedureT) -> ProcedureT:
        """Decorator: serve *fn* under its own name."""
        self.add(fn.__name__, fn)
        return fn

    def add(self, name: str, fn: Procedure) -> None:
        """Serve *fn* (sync or async) as *name*."""
        if not callable(fn):
            raise TypeError(f"procedure {name!r} is not callable: {fn!r}")
        self._procedures[name] = fn

    @property
    def names(self) -> list[str]:
        return sorted(self._procedures)

    # -- serving ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (differs from the requested one when that was 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("RpcService is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and start accepting connections (serve() does this for you)."""
        if self._server is None and self.path is not None:
            self._server = await asyncio.start_unix_server(self._on_connection, self.path)
        elif self._server is None:
            self._server = await asyncio.start_server(self._on_connection, self.host, self.requested_port)

    async def close(self) -> None:
        """Stop serving and drop open connections."""
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def serve(self, register: bool = True, proxy_host: str | None = None,
                    register_port: int = DEFAULT_REGISTER_PORT) -> None:
        """Start, register the names with the proxy (and again whenever it comes back), serve forever."""
        await self.start()
        assert self._server is not None
        if register:
            self._spawn(self._keep_registered(proxy_host, register_port), "register")
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    def run(self, register: bool = True, proxy_host: str | None = None,
            register_port: int = DEFAULT_REGISTER_PORT) -> None:
        """Synchronous entry point for apps: ``service.run()``."""
        asyncio.run(self.serve(register, proxy_host, register_port))

    async def wait_registered(self) -> None:
        """Wait until the proxy has acknowledged the current registration."""
        await self._registered.wait()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"RpcService[{self.requested_port}].{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- registration -----------------------------------------------------------------------

    async def register(self, proxy_host_name: str | None = None,
                       register_port: int = DEFAULT_REGISTER_PORT,
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Register once; return the open connection (EOF on it means the proxy restarted)."""
        host = proxy_host(proxy_host_name)
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, register_port)
                writer.write(pack_request(0, "register", [self.port, self.names]))
                decoder = StreamDecoder()
                while True:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        writer.close()
                        raise RpcConnectionError(
                            f"register: proxy {host}:{register_port} closed the connection")
                    for frame in decoder.feed_frames(data):
                        if isinstance(frame.message, Response):
                            if frame.message.error is not None:
                                writer.close()
                                raise RpcError("register", frame.message.error)
                            log.info("registered %s on port %d with the proxy at %s:%d",
                                     ", ".join(self.names), self.port, host, register_port)
                            return reader, writer
        except TimeoutError:
            raise RpcTimeout(f"register: no answer from the proxy at {host}:{register_port}") from None
        except OSError as exc:
            if isinstance(exc, RpcConnectionError):
                raise
            raise RpcConnectionError(
                f"register: cannot reach the proxy at {host}:{register_port}: {exc}") from exc

    async def _keep_registered(self, proxy_host_name: str | None, register_port: int) -> None:
        delay = REREGISTER_FIRST_DELAY
        while True:
            try:
                reader, writer = await self.register(proxy_host_name, register_port)
            except (RpcConnectionError, RpcTimeout, RpcError) as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REREGISTER_MAX_DELAY)
                continue
            delay = REREGISTER_FIRST_DELAY
            self._registered.set()
            try:
                # The proxy never writes again on this connection: EOF means it restarted and
                # forgot every registration, so register again.
                while await reader.read(READ_CHUNK):
                    pass
            except OSError as exc:
                log.debug("registration connection broke: %s", exc)
            finally:
                self._registered.clear()
                writer.close()
            log.warning("the proxy closed the registration connection; registering again")

    # -- connections ------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        notifications: asyncio.Queue[Notification | None] = asyncio.Queue()
        notifier = self._spawn(self._run_notifications(notifications), "notifications")
        decoder = StreamDecoder()
        try:
            while data := await reader.read(READ_CHUNK):
                for frame in decoder.feed_frames(data):
                    message = frame.message
                    if isinstance(message, Request):
                        self._spawn(self._answer(message, writer), f"call.{message.method}")
                    elif isinstance(message, Notification):
                        notifications.put_nowait(message)
                    else:
                        log.debug("ignoring a response from %s: %r", peer, message)
        except (ConnectionError, OSError) as exc:
            log.debug("connection from %s broke: %s", peer, exc)
        except asyncio.CancelledError:
            # End normally: Python 3.11's start_server callback calls task.exception() on the
            # handler, which raises for a cancelled task and logs a spurious error.
            notifier.cancel()
        finally:
            notifications.put_nowait(None)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await notifier
            writer.close()

    async def _invoke(self, method: str, params: list[Any]) -> Any:
        fn = self._procedures.get(method)
        if fn is None:
            raise LookupError(f"'{method}' method not found")
        if inspect.iscoroutinefunction(fn):
            return await fn(*params)
        result = await asyncio.to_thread(fn, *params)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _answer(self, request: Request, writer: asyncio.StreamWriter) -> None:
        try:
            result = await self._invoke(request.method, request.params)
            reply = pack_response(request.msgid, None, result)
        except LookupError as exc:
            log.warning("call of an unknown procedure: %s", exc)
            reply = pack_response(request.msgid, str(exc.args[0]) if exc.args else str(exc), None)
        except (TypeError, ValueError, msgpack.PackException) as exc:
            # Also covers results msgpack cannot encode and wrong argument counts.
            log.warning("procedure %s failed: %s", request.method, _error_text(exc))
            reply = pack_response(request.msgid, _error_text(exc), None)
        except Exception as exc:
            log.exception("procedure %s raised", request.method)
            reply = pack_response(request.msgid, _error_text(exc), None)
        if writer.is_closing():
            return
        writer.write(reply)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _run_notifications(self, queue: asyncio.Queue[Notification | None]) -> None:
        # One after another: `tty` output must reach the app in the order the M4 wrote it.
        while (notification := await queue.get()) is not None:
            try:
                await self._invoke(notification.method, notification.params)
            except LookupError as exc:
                log.warning("notification of an unknown procedure: %s", exc)
            except Exception:
                log.exception("notification %s raised", notification.method)

