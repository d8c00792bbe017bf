"""The register port (5000) as a front: its listeners, its connections and their limit.

What a connection may say is :mod:`.registry`'s; this front only accepts, bounds and tracks the
connections so that the proxy can stop them. Like :class:`~.routerfront.RouterFront` it gets a
narrow context (:class:`~.registry.RegisterContext`), not the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Final

from x8manager.proxy.ratelimit import RateLimitedLog
from x8manager.proxy.registry import RegisterContext, handle_register_connection

__all__ = ["MAX_REGISTER_CONNECTIONS", "RegisterPort"]

log = logging.getLogger("x8manager.proxy.core")
limited_log = RateLimitedLog(log)

# Register-port connections at once (a registration takes one message; idle ones time out).
MAX_REGISTER_CONNECTIONS: Final = 256


class RegisterPort:
    """The register port's listening sockets and the connections they accepted."""

    def __init__(self, context: RegisterContext, sockets: list[socket.socket]) -> None:
        self._context = context
        self._sockets = sockets
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[object]] = set()
        self.addresses: list[tuple[str, int]] = [sock.getsockname()[:2] for sock in sockets]

    async def start(self) -> None:
        for sock in self._sockets:
            self._servers.append(await asyncio.start_server(self._on_connection, sock=sock))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_REGISTER_CONNECTIONS:
            limited_log.warning("register-full", "register port: connection from %s refused: %d open already",
                                writer.get_extra_info("peername"), MAX_REGISTER_CONNECTIONS)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await handle_register_connection(reader, writer, self._context)
        except asyncio.CancelledError:
            # Stopping. The handler ends normally even so: asyncio's start_server callback in
            # Python 3.11 calls task.exception() on it, which raises for a cancelled task and
            # logs a spurious error at every shutdown.
            writer.close()
        except Exception:  # the proxy outlives any peer
            log.exception("register connection failed")
            writer.close()
        finally:
            self._connections.discard(task)

    def close(self) -> None:
        """Stop accepting; :meth:`wait_closed` ends the open connections."""
        for server in self._servers:
            server.close()

    async def wait_closed(self) -> None:
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
