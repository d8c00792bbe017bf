"""The proxy: one routing core and one M4 link behind three fronts.

- the M4 link (:class:`~.m4port.M4Port`): calls into the M4 with proxy-assigned msgids, the
  M4's replies back to their callers, the M4's own calls and notifications to the core;
- the routing table (:class:`~.routing.RoutingTable`): method name → provider, a legacy
  service (register port) or a router-front connection;
- the fronts, peers that each get a narrow context: the register port (5000) fills the table,
  the call port (5001) calls the M4 one message per connection, the router front speaks
  arduino-router's protocol, the monitor port carries the sketch's Serial;
- the M4's own calls and notifications (:class:`~.dispatch.M4Dispatcher`): to the provider of
  their method, held while nobody provides it yet; the reply goes back with the M4's own msgid.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass
from typing import Final

from x8manager.common.systemd import ListenFd, ListenFdsError, listen_fds
from x8manager.proxy.callport import CallContext, CallPort, CallPortStats
from x8manager.proxy.dispatch import DEFAULT_HOLD, DispatchPolicy, DispatchStats, M4Dispatcher
from x8manager.proxy.link import M4Link, ReaderMode, StartupError, open_link
from x8manager.proxy.listeners import close_all, make_listeners, split_host_port
from x8manager.proxy.m4port import MONITOR, M4Port
from x8manager.proxy.monitor import MonitorPort
from x8manager.proxy.registerport import RegisterPort
from x8manager.proxy.registry import RegisterContext
from x8manager.proxy.routerfront import RouterFront, router_socket_from_systemd
from x8manager.proxy.routing import RoutingTable
from x8manager.proxy.tap import TapServer
from x8manager.rpc.framing import M4_MAX_MESSAGE

__all__ = ["M4Proxy", "ProxyConfig", "ProxyStats"]

log = logging.getLogger(__name__)

# The original waits 1 s for the M4's reply; clients (msgpack-rpc-python) are tuned to it.
DEFAULT_CALL_TIMEOUT: Final = 1.0
# M4→Linux calls: the original waits forever for a service, which freezes every other call.
DEFAULT_SERVICE_TIMEOUT: Final = 10.0
# The M4's calls for a method nobody provides yet wait this long for a provider.
DEFAULT_HOLD_CALLS: Final = DEFAULT_HOLD

# The counters of the M4→Linux side (tests read proxy.stats).
ProxyStats = DispatchStats


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
    # The M4's calls for a method nobody provides yet are held this long for a provider (0: not
    # held, dropped at once as by the original; ignored with m4_error_replies, which answers at once).
    hold_calls: float = DEFAULT_HOLD_CALLS
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


class M4Proxy:
    """The m4-proxy daemon's engine; ``await start()``, then ``await stop()``."""

    def __init__(self, config: ProxyConfig, link: M4Link | None = None) -> None:
        self.config = config
        self.routes = RoutingTable(config.registry_file)
        self.stats = ProxyStats()
        self.call_port_stats = CallPortStats()
        self._link = link
        self._m4: M4Port | None = None
        self.dispatch: M4Dispatcher | None = None
        self._register_port: RegisterPort | None = None
        self._call_port: CallPort | None = None
        self.router: RouterFront | None = None
        self.monitor: MonitorPort | None = None
        self.trace: TapServer | None = None
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
            close_all(register_sockets)
            raise
        try:
            if self._link is None:
                self._link = await open_link(config.device, config.device_reader)
        except BaseException:
            close_all(register_sockets + call_sockets)
            raise
        loop = asyncio.get_running_loop()
        m4 = self._m4 = M4Port(self._link, call_timeout=config.call_timeout, max_message=config.max_message)
        self.dispatch = M4Dispatcher(self.routes, m4, DispatchPolicy(
            service_timeout=config.service_timeout, hold=config.hold_calls,
            error_replies=config.m4_error_replies, max_message=config.max_message), self.stats)
        m4.start(self.dispatch.on_frame)
        self._register_port = RegisterPort(RegisterContext(self.routes, self.dispatch.unprovided),
                                           register_sockets)
        await self._register_port.start()
        self._call_port = CallPort(
            CallContext(loop, m4, config.timeout_error_reply, self.call_port_stats), call_sockets)
        self.register_ports = self._register_port.addresses
        self.call_ports = [s.getsockname()[:2] for s in call_sockets]
        try:
            await self._start_router_front(passed)
            if config.monitor_listen:
                self.monitor = MonitorPort(functools.partial(m4.notify, front=MONITOR))
                await self.monitor.listen(*split_host_port(config.monitor_listen, "--monitor-listen"))
                self.dispatch.monitor_output = self.monitor.output
        except BaseException:
            await self.stop()
            raise
        if config.trace_socket:
            await self._start_trace(config.trace_socket)

    async def _start_trace(self, path: str) -> None:
        # Diagnostics only: without its socket the proxy still serves every front.
        trace = TapServer(self.m4)
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
        if self._register_port is not None:
            self._register_port.close()
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
        if self.dispatch is not None:
            self.dispatch.close()
        if self._register_port is not None:
            await self._register_port.wait_closed()
            self._register_port = None
        await self.routes.close()
        if self._m4 is not None:
            await self._m4.close()
