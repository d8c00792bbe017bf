"""The proxy: one routing core and one M4 link behind three fronts.

- the M4 link (:class:`~.m4port.M4Port`): calls into the M4 with proxy-assigned msgids, the
  M4's replies back to their callers, the M4's own calls and notifications to the core;
- the routing table (:class:`~.routing.RoutingTable`): method name → provider, a legacy
  service (register port) or a router-front connection;
- the fronts: the register port (5000) fills the table, the call port (5001) calls the M4 one
  message per connection, the router front speaks arduino-router's protocol.

M4→Linux: the M4's calls and notifications go to the provider of their method; its reply goes
back to the M4 with the M4's own msgid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from x8manager.common.systemd import ListenFd, ListenFdsError, listen_fds
from x8manager.proxy.callport import CallContext, CallPort, CallPortStats
from x8manager.proxy.link import M4Link, ReaderMode, StartupError, open_link
from x8manager.proxy.m4port import M4Port
from x8manager.proxy.monitor import MonitorPort
from x8manager.proxy.ratelimit import RateLimitedLog
from x8manager.proxy.registry import handle_register_connection
from x8manager.proxy.routerfront import RouterFront, router_socket_from_systemd
from x8manager.proxy.routing import ProviderFailed, RoutingTable
from x8manager.proxy.tap import TapServer
from x8manager.rpc.framing import (
    M4_MAX_MESSAGE,
    Frame,
    Notification,
    Request,
    pack_response,
)

__all__ = ["M4Proxy", "ProxyConfig", "ProxyStats"]

log = logging.getLogger(__name__)
limited_log = RateLimitedLog(log)

# The original waits 1 s for the M4's reply; clients (msgpack-rpc-python) are tuned to it.
DEFAULT_CALL_TIMEOUT: Final = 1.0
# M4→Linux calls: the original waits forever for a service, which freezes every other call.
DEFAULT_SERVICE_TIMEOUT: Final = 10.0
# M4→Linux calls in flight; the M4 has at most 10 callers, anything past this is garbage.
MAX_SERVICE_CALLS: Final = 64
# Register-port connections at once (a registration takes one message; idle ones time out).
MAX_REGISTER_CONNECTIONS: Final = 256


@dataclass
class ProxyConfig:
    device: str = "/dev/x8h7_ui"
    bind: str | None = None  # None: all interfaces (IPv4 and IPv6)
    register_port: int = 5000
    call_port: int = 5001
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    service_timeout: float = DEFAULT_SERVICE_TIMEOUT
    # Opt-in changes of behaviour the original's users can observe:
    timeout_error_reply: bool = False  # Linux caller gets an error reply instead of a bare close
    m4_error_replies: bool = False  # M4 gets an error reply for unregistered methods/dead services
    max_message: int = M4_MAX_MESSAGE
    registry_file: str | os.PathLike[str] | None = None  # keep the registry across proxy restarts
    device_reader: ReaderMode = "auto"  # how the char device is read (tests force one)
    router_socket: str = ""  # UNIX socket of the router front ('' = off; the daemon's default is on)
    router_socket_group: str | None = None  # group that may connect to it (mode 0660)
    router_listen: str | None = None  # HOST:PORT of the router front on TCP (off by default)
    monitor_listen: str | None = None  # HOST:PORT of the monitor port (off in-process; on in the daemon)
    trace_socket: str = ""  # UNIX socket of the trace tap, root only ('' = off; on in the daemon)
    # Take the sockets systemd passes (socket activation, m4-proxy.socket): the daemon does; an
    # in-process proxy never looks at LISTEN_FDS.
    systemd_sockets: bool = False


def _listen_socket(host: str, port: int, *, family: socket.AddressFamily,
                   v6only: bool | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_error(what: str, host: str, port: int, exc: OSError) -> StartupError:
    return StartupError(f"cannot listen for {what} on {host or '*'}:{port}: {exc.strerror or exc}")


def _numeric_family(host: str) -> socket.AddressFamily | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def _bind_address(bind: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The family and address of --bind. A numeric address is taken as it is: getaddrinfo on
    a str encodes it with the idna codec, which loads unicodedata (memory for nothing)."""
    family = _numeric_family(bind)
    if family is not None:
        return family, bind
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"--bind {bind!r}: {exc}") from exc
    family, _, _, _, address = infos[0]
    return family, str(address[0])


def make_listeners(what: str, bind: str | None, port: int, *, dual_stack: bool) -> list[socket.socket]:
    """Listening sockets for one port.

    With --bind: that address only. Otherwise *dual_stack* gives one ``[::]`` socket that also
    takes IPv4 (the original's register port), else ``0.0.0.0`` plus a best-effort IPv6-only
    ``[::]`` on the same port (the original's call port is IPv4 only).
    """
    if bind is not None:
        family, host = _bind_address(bind, port)
        try:
            return [_listen_socket(host, port, family=family, v6only=True)]
        except OSError as exc:
            raise _bind_error(what, bind, port, exc) from exc
    if dual_stack:
        try:
            return [_listen_socket("::", port, family=socket.AF_INET6, v6only=False)]
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise _bind_error(what, "[::]", port, exc) from exc
            # No IPv6 on this host: IPv4 alone.
    try:
        sockets = [_listen_socket("0.0.0.0", port, family=socket.AF_INET, v6only=None)]
    except OSError as exc:
        raise _bind_error(what, "0.0.0.0", port, exc) from exc
    actual_port = sockets[0].getsockname()[1]
    try:
        sockets.append(_listen_socket("::", actual_port, family=socket.AF_INET6, v6only=True))
    except OSError as exc:
        log.debug("no IPv6 listener for %s on port %d: %s", what, actual_port, exc)
    return sockets


def split_host_port(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) of a listening flag."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StartupError(f"{flag} {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class ProxyStats:
    """Counters of the M4→Linux side; tests read them."""

    m4_calls: int = 0
    m4_notifications: int = 0
    unroutable: int = 0


class M4Proxy:
    """The m4-proxy daemon's engine; ``await start()``, then ``await stop()``."""

    def __init__(self, config: ProxyConfig, link: M4Link | None = None) -> None:
        self.config = config
        self.routes = RoutingTable(config.registry_file)
        self.stats = ProxyStats()
        self.call_port_stats = CallPortStats()
        self._link = link
        self._m4: M4Port | None = None
        self._call_port: CallPort | None = None
        self.router: RouterFront | None = None
        self.monitor: MonitorPort | None = None
        self.trace: TapServer | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._service_calls = 0  # M4→Linux calls in flight
        self._register_connections = 0
        self.register_ports: list[tuple[str, int]] = []
        self.call_ports: list[tuple[str, int]] = []

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the M4 link and the listeners; raise :class:`StartupError` on failure."""
        config = self.config
        passed = self._systemd_sockets()
        register_sockets = make_listeners("register calls", config.bind, config.register_port,
                                          dual_stack=True)
        try:
            call_sockets = make_listeners("M4 calls", config.bind, config.call_port, dual_stack=False)
        except StartupError:
            for sock in register_sockets:
                sock.close()
            raise
        try:
            if self._link is None:
                self._link = await open_link(config.device, config.device_reader)
        except BaseException:
            for sock in register_sockets + call_sockets:
                sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._m4 = M4Port(self._link, call_timeout=config.call_timeout, max_message=config.max_message)
        self._m4.start(self._on_m4_frame)
        for sock in register_sockets:
            self._servers.append(await asyncio.start_server(self._on_register_connection, sock=sock))
        self._call_port = CallPort(
            CallContext(loop, self._m4, config.timeout_error_reply, self.call_port_stats), call_sockets)
        self.register_ports = [s.getsockname()[:2] for s in register_sockets]
        self.call_ports = [s.getsockname()[:2] for s in call_sockets]
        try:
            await self._start_router_front(passed)
            if config.monitor_listen:
                self.monitor = MonitorPort(self.m4.notify)
                await self.monitor.listen(*split_host_port(config.monitor_listen, "--monitor-listen"))
        except BaseException:
            await self.stop()
            raise
        if config.trace_socket:
            await self._start_trace(config.trace_socket)

    async def _start_trace(self, path: str) -> None:
        # Diagnostics only: without its socket the proxy still serves every front.
        trace = TapServer(self.m4, self.routes.provider_of)
        try:
            await trace.listen(path)
        except OSError as exc:
            log.warning("no trace socket (x8-trace will not work): cannot listen on %s: %s",
                        path, exc.strerror or exc)
            return
        self.trace = trace

    def _systemd_sockets(self) -> list[ListenFd]:
        if not self.config.systemd_sockets:
            return []
        try:
            return listen_fds()
        except ListenFdsError as exc:
            raise StartupError(f"socket activation: {exc}") from exc

    async def _start_router_front(self, passed: list[ListenFd]) -> None:
        config = self.config
        inherited, unused = router_socket_from_systemd(passed, config.router_socket)
        for each in unused:
            log.warning("descriptor %d (%s) from systemd is not a socket m4-proxy serves; closed",
                        each.fd, each.name)
            os.close(each.fd)
        if inherited is not None and not config.router_socket:
            log.warning("the router front is off (--router-socket ''), but systemd passed the router "
                        "socket %s: it is not served (disable m4-proxy.socket)", inherited.getsockname())
            inherited.close()
            inherited = None
        if not config.router_socket and not config.router_listen:
            return
        self.router = RouterFront(self.routes, self.m4)
        if inherited is not None:
            await self.router.adopt_unix(inherited, requested=config.router_socket)
        elif config.router_socket:
            await self.router.listen_unix(config.router_socket, group=config.router_socket_group)
        if config.router_listen:
            host, port = split_host_port(config.router_listen, "--router-listen")
            await self.router.listen_tcp(host, port)

    @property
    def register_port(self) -> int:
        return self.register_ports[0][1]

    @property
    def call_port(self) -> int:
        return self.call_ports[0][1]

    @property
    def m4(self) -> M4Port:
        assert self._m4 is not None, "M4Proxy.start() first"
        return self._m4

    @property
    def link_description(self) -> str:
        return self._link.description if self._link is not None else self.config.device

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self.trace is not None:
            await self.trace.close()
            self.trace = None
        if self.router is not None:
            await self.router.close()
            self.router = None
        if self.monitor is not None:
            await self.monitor.close()
            self.monitor = None
        if self._call_port is not None:
            self._call_port.close()
            self._call_port = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.routes.close()
        if self._m4 is not None:
            await self._m4.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()

    @contextlib.contextmanager
    def _connection_task(self) -> Iterator[None]:
        """Track a connection handler so stop() can end it.

        Handlers end normally even when cancelled: asyncio's start_server callback in Python
        3.11 calls task.exception() on the finished handler, which raises for a cancelled task
        and logs a spurious error at every shutdown.
        """
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    # -- register port ----------------------------------------------------------------------

    async def _on_register_connection(self, reader: asyncio.StreamReader,
                                      writer: asyncio.StreamWriter) -> None:
        if self._register_connections >= MAX_REGISTER_CONNECTIONS:
            limited_log.warning("register-full", "register port: connection from %s refused: %d open already",
                                writer.get_extra_info("peername"), MAX_REGISTER_CONNECTIONS)
            writer.transport.abort()
            return
        self._register_connections += 1
        try:
            await self._serve_register_connection(reader, writer)
        finally:
            self._register_connections -= 1

    async def _serve_register_connection(self, reader: asyncio.StreamReader,
                                         writer: asyncio.StreamWriter) -> None:
        with self._connection_task():
            try:
                await handle_register_connection(reader, writer, self.routes)
            except asyncio.CancelledError:
                writer.close()  # shutting down (see _connection_task)
            except Exception:  # the proxy outlives any peer
                log.exception("register connection failed")
                writer.close()

    # -- the M4's calls and notifications (M4 → Linux) --------------------------------------

    def _on_m4_frame(self, frame: Frame) -> None:
        message = frame.message
        assert isinstance(message, Request | Notification)
        provider = self.routes.provider_of(message.method)
        if self.monitor is not None and message.method == "tty" and isinstance(message, Notification):
            # The sketch's Serial output: to the monitor port (or the journal), and to a Linux
            # program that provides tty itself as well.
            self.monitor.output(message.params, taken=provider is not None)
            if provider is None:
                return
        if provider is None:
            self.stats.unroutable += 1
            log.warning("M4 %s %r: no Linux service registered for it",
                        "call" if isinstance(message, Request) else "notification", message.method)
            if isinstance(message, Request) and self.config.m4_error_replies:
                self._reply_to_m4(message.msgid, f"m4-proxy: no service registered for '{message.method}'")
            return
        if isinstance(message, Notification):
            self.stats.m4_notifications += 1
            provider.notify(frame)
            return
        self.stats.m4_calls += 1
        if self._service_calls >= MAX_SERVICE_CALLS:
            log.warning("M4 call %r dropped: %d calls already in flight", message.method, MAX_SERVICE_CALLS)
            return
        self._service_calls += 1
        provider.call(frame, lambda result: self._m4_call_done(message, result),
                      wait=self.config.service_timeout)

    def _m4_call_done(self, request: Request, result: Frame | ProviderFailed) -> None:
        """The provider answered the M4's call (or failed to): the reply goes to the M4."""
        self._service_calls -= 1
        if isinstance(result, ProviderFailed):
            log.warning("M4 call %r: %s", request.method, result.text)
            if result.answer_m4:
                self.m4.reply(pack_response(request.msgid, [result.code, result.text], None))
            elif self.config.m4_error_replies:
                self._reply_to_m4(request.msgid, f"m4-proxy: {result.text}")
            return
        if len(result.raw) > self.config.max_message:
            log.error("M4 call %r: the reply is %d bytes, over the M4 link limit of %d; "
                      "sending an error instead", request.method, len(result.raw), self.config.max_message)
            self._reply_to_m4(request.msgid, f"reply too large for the M4 link ({len(result.raw)} bytes)")
            return
        self.m4.reply(result.raw)

    def _reply_to_m4(self, msgid: int, text: str) -> None:
        self.m4.reply(pack_response(msgid, text, None))
