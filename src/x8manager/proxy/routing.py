"""The one routing table: method name → the Linux program that provides it.

A provider is either a legacy service (registered on port 5000 with ``register(port, names)``,
reached at ``127.0.0.1:port``) or a router-front connection (an ``arduino-router-bridge``
client that sent ``$/register``). The M4's calls and notifications, and router-front calls,
go to the provider of their method; a router-front call nobody on Linux provides goes to the
M4. A name has one provider at a time:

- a legacy name and a router route for the same name conflict: the later one is refused
  (router error 5) and the attempt logged, unless the holder is a legacy service whose port
  refuses connections (dial-back), which then loses the name;
- a legacy name held by a live service stays with it when another port registers it (logged
  with both ports); a dead holder's name is taken over;
- a router route is dropped by ``$/unregister``, ``$/reset`` or its connection ending.

Dial-backs (:class:`Liveness`) cannot be turned against a live holder: a port is dialled once at a
time, everybody who asks meanwhile shares the answer, a port is dialled at most
:data:`DIAL_BACKS_PER_SECOND` times a second (past that its last answer stands), and at most
:data:`MAX_DIAL_BACKS` run at once. Only a refused connection is "dead"; a dial-back that cannot
be made (our descriptors are out, too many at once, a timeout, cancelled) says nothing, and the
holder keeps its names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

from x8manager.proxy.ratelimit import RateLimitedLog, shown
from x8manager.proxy.services import ServiceCallFailed, ServiceLink
from x8manager.rpc.framing import Frame, Request

__all__ = [
    "LegacyService",
    "Liveness",
    "Provider",
    "ProviderDone",
    "ProviderFailed",
    "RegistryFile",
    "RouteExists",
    "RoutingTable",
    "is_listening",
]

log = logging.getLogger("x8manager.proxy.registry")

# A dial-back to decide whether a legacy holder is alive waits this long.
DIAL_BACK_TIMEOUT: Final = 0.5
# Dial-backs of one port per second at most; past that, its last answer stands.
DIAL_BACKS_PER_SECOND: Final = 4
# Dial-backs of holders (different ports) at once; past that the answer is "unknown".
MAX_DIAL_BACKS: Final = 8
# Route changes logged per LOG_EVERY seconds (apps starting log every name; a flood does not).
ROUTE_LOG_BURST: Final = 64
# Names listed in one "no longer provides" line; the rest are counted.
NAMES_LOGGED: Final = 8
# Registry-file writes are batched: one write at most this long after a change.
SAVE_DELAY: Final = 0.2
# A registered port is dialled back once, this long after its registration (off the reply path;
# an app may register a moment before its server listens).
REGISTER_CHECK_DELAY: Final = 1.0
# Dial-backs of new registrations at once; past that, registrations are not checked.
MAX_REGISTER_CHECKS: Final = 64

# Router error codes (arduino-router's internal/msgpackrouter/errors.go, Bridge 0.5.1's table).
ERR_INVALID_PARAMS: Final = 1
ERR_METHOD_NOT_AVAILABLE: Final = 2
ERR_FAILED_TO_SEND: Final = 3
ERR_GENERIC: Final = 4
ERR_ROUTE_EXISTS: Final = 5
ERR_OVER_SIZE_LIMIT: Final = 6


class ProviderFailed(Exception):
    """A provider gave no reply: it is gone, unreachable or too slow. ``code`` is the router's."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


# Gets the provider's response (its raw bytes carry the caller's msgid) or why there is none.
ProviderDone = Callable[["Frame | ProviderFailed"], None]


class Provider(Protocol):
    """Something on Linux that answers calls and takes notifications for the names it holds."""

    label: str

    def call(self, frame: Frame, done: ProviderDone, *, wait: float) -> Callable[[], None]:
        """Deliver the raw request; *done* gets the outcome once. Returns a withdraw function."""
        ...

    def notify(self, frame: Frame) -> None: ...


class RouteExists(Exception):
    """``$/register`` of a name somebody else holds (router error 5)."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"route already exists: {name}")
        self.name = name
        self.holder = holder


class LegacyService:
    """A service registered on the register port, reached at ``127.0.0.1:port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.label = f"service on port {port}"
        self.link = ServiceLink(port)

    def call(self, frame: Frame, done: ProviderDone, *, wait: float) -> Callable[[], None]:
        assert isinstance(frame.message, Request)

        def finished(result: Frame | ServiceCallFailed) -> None:
            if isinstance(result, ServiceCallFailed):
                done(ProviderFailed(ERR_FAILED_TO_SEND, str(result)))
            else:
                done(result)

        return self.link.start_call(frame, wait=wait, done=finished)

    def notify(self, frame: Frame) -> None:
        self.link.notify(frame.raw)


async def is_listening(port: int) -> bool | None:
    """Dial back ``127.0.0.1:port``: True if it accepts, False if it refuses, None if we cannot tell.

    Only a refusal means nobody listens: running out of our own descriptors (``EMFILE``), a
    full accept backlog (the connect times out) or a cancelled attempt says nothing about the
    service.
    """
    try:
        async with asyncio.timeout(DIAL_BACK_TIMEOUT):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return False
    except (OSError, TimeoutError):
        return None
    writer.close()
    return True


class Liveness:
    """Whether legacy ports accept connections, asked of :func:`is_listening` sparingly.

    One dial-back per port at a time, its answer shared by every caller waiting meanwhile; at
    most :data:`DIAL_BACKS_PER_SECOND` a second per port (past that the port's last answer
    stands) and :data:`MAX_DIAL_BACKS` ports at once (past that: ``None``, unknown). A flood of
    registrations thus costs a live service a few connections a second, and can never make a
    failed dial-back look like a dead service; a registration now and then always dials afresh.
    """

    def __init__(self, probe: Callable[[int], Awaitable[bool | None]] = is_listening) -> None:
        self._probe = probe
        self._running: dict[int, asyncio.Task[bool | None]] = {}
        # port -> (when its current second began, dial-backs in it, the last answer)
        self._recent: dict[int, tuple[float, int, bool | None]] = {}

    @property
    def dialling(self) -> int:
        """Dial-backs under way."""
        return len(self._running)

    async def alive(self, port: int) -> bool | None:
        """True: *port* accepts; False: it refuses (nobody listens); None: unknown."""
        running = self._running.get(port)
        if running is None:
            now = asyncio.get_running_loop().time()
            began, dials, last = self._recent.get(port, (now, 0, None))
            if now - began >= 1.0:
                began, dials = now, 0
            if dials >= DIAL_BACKS_PER_SECOND:
                return last
            if len(self._running) >= MAX_DIAL_BACKS:
                return None
            if len(self._recent) > 4 * MAX_DIAL_BACKS:  # forget ports not dialled this second
                self._recent = {p: r for p, r in self._recent.items() if now - r[0] < 1.0}
            self._recent[port] = (began, dials + 1, last)
            running = self._running[port] = asyncio.get_running_loop().create_task(self._dial(port))
        # Shielded: a waiter that goes away does not cancel the answer the others wait for.
        return await asyncio.shield(running)

    async def _dial(self, port: int) -> bool | None:
        try:
            alive = await self._probe(port)
        except Exception:  # a probe that fails says nothing
            alive = None
        finally:
            del self._running[port]
        recent = self._recent.get(port)
        if recent is not None:
            self._recent[port] = (recent[0], recent[1], alive)
        return alive

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)


class RegistryFile:
    """The legacy names kept in a JSON file, so a restarted proxy still knows the services.

    The original forgot them, and services that register only at their own start-up then never
    heard from the M4 again. Writes are batched (many registrations, one write).
    """

    # Paths as str and os functions: pathlib (with urllib.parse and ipaddress, which it imports)
    # would be about half a megabyte of the daemon's memory for these few calls.
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._timer: asyncio.TimerHandle | None = None
        self._snapshot: Callable[[], dict[str, int]] | None = None

    def load(self) -> dict[str, int]:
        try:
            with open(self.path, encoding="utf-8") as file:
                saved = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("registry file %s unreadable, starting empty: %s", self.path, exc)
            return {}
        if not isinstance(saved, dict):
            log.warning("registry file %s does not hold a name → port map, starting empty", self.path)
            return {}
        return {str(name): port for name, port in saved.items()
                if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535}

    def save_soon(self, snapshot: Callable[[], dict[str, int]]) -> None:
        """Write *snapshot()* shortly (at once when no event loop runs)."""
        self._snapshot = snapshot
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer is None:
            self._timer = loop.call_later(SAVE_DELAY, self.flush)

    def flush(self) -> None:
        """Write now if a write is due."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return
        temporary = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as file:
                file.write(json.dumps(snapshot()))
            os.replace(temporary, self.path)
        except OSError as exc:
            # Only restarts lose from this; the registration itself stands.
            log.warning("cannot save the registry to %s: %s", self.path, exc)


def go_map(ports: dict[str, int]) -> str:
    """A name → port map the way the original's ``fmt.Println`` printed it."""
    return "map[" + " ".join(f"{name}:{port}" for name, port in sorted(ports.items())) + "]"


class RoutingTable:
    """Method name → provider, for every front (see the module docstring)."""

    def __init__(self, registry_file: str | os.PathLike[str] | None = None,
                 live: Callable[[int], Awaitable[bool | None]] = is_listening) -> None:
        self._ports: dict[str, int] = {}  # legacy names
        self._routes: dict[str, Provider] = {}  # router-front names
        self._provided: dict[Provider, set[str]] = {}  # router-front names by provider
        self._services: dict[int, LegacyService] = {}
        self.liveness = Liveness(live)
        self._checks: set[asyncio.Task[None]] = set()
        self._unheard: set[int] = set()  # registered ports found not listening (logged once)
        self._limited = RateLimitedLog(log)
        self._route_log = RateLimitedLog(log, burst=ROUTE_LOG_BURST)
        self._file = RegistryFile(registry_file) if registry_file is not None else None
        # Told each name that gains a provider, on either front (the M4's held calls wait for it).
        self.on_route_added: list[Callable[[str], None]] = []
        if self._file is not None:
            self._ports = self._file.load()
            if self._ports:
                log.info("registry restored from %s: %s", registry_file, go_map(self._ports))

    # -- lookups --------------------------------------------------------------------------

    def provider_of(self, name: str) -> Provider | None:
        route = self._routes.get(name)
        if route is not None:
            return route
        port = self._ports.get(name)
        if port is None:
            return None
        service = self._services.get(port)
        if service is None:
            service = self._services[port] = LegacyService(port)
        return service

    def port_of(self, name: str) -> int | None:
        return self._ports.get(name)

    def snapshot(self) -> dict[str, int]:
        """The legacy names (what the register port's ``list`` returns)."""
        return dict(sorted(self._ports.items()))

    def routes(self) -> dict[str, str]:
        """Router-front names and who provides them."""
        return {name: provider.label for name, provider in sorted(self._routes.items())}

    def __len__(self) -> int:
        return len(self._ports) + len(self._routes)

    # -- legacy registrations ---------------------------------------------------------------

    async def register_legacy(self, port: int, names: list[str], *, peer: object = None) -> list[str]:
        """``register(port, names)``; returns why names were refused (empty: all taken)."""
        accepted: dict[str, int] = {}
        refused: list[str] = []
        for name in names:
            holder = self._ports.get(name)
            alive: bool | None = None
            if holder is not None and holder != port and name not in self._routes:
                alive = await self.liveness.alive(holder)
            # Looked at after the dial-back: the table may have changed meanwhile.
            route = self._routes.get(name)
            if route is not None:
                self._limited.warning(
                    "register-refused", "register port: %s for port %d (from %s) refused: %s provides it "
                    "through the router socket", shown(name), port, peer, route.label)
                refused.append(f"route already exists: {name}")
                continue
            holder = self._ports.get(name)
            if holder is not None and holder != port:
                if alive is not False:  # alive, or it could not be told: the holder keeps it
                    self._limited.warning(
                        "register-refused", "register port: %s for port %d (from %s) refused: the "
                        "service on port %d holds it and is %s", shown(name), port, peer, holder,
                        "alive" if alive else "not known to be dead")
                    refused.append(f"'{name}' is registered by the live service on port {holder}")
                    continue
                self._route_log.info("routes", "register port: %s moves from port %d (not answering) to "
                                     "port %d", shown(name), holder, port)
            accepted[name] = port
        if accepted or not names:
            self._ports.update(accepted)
            # The original's line, with the names of this registration only (not the table).
            log.info("Registering service on port  %d  with functions  %s", port, go_map(accepted))
            self._save()
            if accepted:
                self._check_soon(port, sorted(accepted), peer)
                self._added(accepted)
        return refused

    def _added(self, names: Iterable[str]) -> None:
        for name in names:
            for callback in self.on_route_added:
                callback(name)

    @property
    def checks_pending(self) -> int:
        """Registration dial-backs not finished yet (tests wait for none)."""
        return len(self._checks)

    def _check_soon(self, port: int, names: list[str], peer: object) -> None:
        """Dial the registered port back once, later; nobody listening is logged once a port."""
        if len(self._checks) >= MAX_REGISTER_CHECKS:
            return
        task = asyncio.get_running_loop().create_task(self._check_listening(port, names, peer))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check_listening(self, port: int, names: list[str], peer: object) -> None:
        await asyncio.sleep(REGISTER_CHECK_DELAY)
        alive = await self.liveness.alive(port)
        if alive:
            self._unheard.discard(port)
            return
        if alive is None or port in self._unheard:
            return
        self._unheard.add(port)
        log.warning("register port: nobody listens on port %d, which registered %s (from %s): the "
                    "M4's calls to them will fail until a server listens on 127.0.0.1:%d",
                    port, ", ".join(names), peer, port)

    def _save(self) -> None:
        if self._file is not None:
            self._file.save_soon(self.snapshot)

    # -- router routes ----------------------------------------------------------------------

    def routes_of(self, provider: Provider) -> int:
        """How many names *provider* holds."""
        return len(self._provided.get(provider, ()))

    def add_route_now(self, name: str, provider: Provider) -> bool:
        """``$/register`` without waiting: True if added, False if a legacy service holds *name*
        (:meth:`add_route` then dials it back); raises :class:`RouteExists` if a route holds it."""
        route = self._routes.get(name)
        if route is not None:
            raise RouteExists(name, route.label)
        if name in self._ports:
            return False
        self._put_route(name, provider)
        return True

    async def add_route(self, name: str, provider: Provider) -> None:
        """``$/register``; raises :class:`RouteExists` if somebody else (or *provider*) holds it.

        A name a legacy service holds is taken only if its port refuses a dial-back; the table
        is looked at again after every dial-back (it may have changed meanwhile).
        """
        for _ in range(3):
            route = self._routes.get(name)
            if route is not None:
                raise RouteExists(name, route.label)
            holder = self._ports.get(name)
            if holder is None:
                self._put_route(name, provider)
                return
            alive = await self.liveness.alive(holder)
            if name in self._routes or self._ports.get(name) != holder:
                continue  # the name changed hands while we dialled back: look again
            if alive is not False:
                self._limited.warning(
                    "router-refused", "router: %s for %s refused: the service on port %d registered it "
                    "on the register port and is %s", shown(name), provider.label, holder,
                    "alive" if alive else "not known to be dead")
                raise RouteExists(name, f"service on port {holder}")
            self._route_log.info("routes", "router: %s moves from port %d (not answering) to %s",
                                 shown(name), holder, provider.label)
            del self._ports[name]
            self._save()
            self._put_route(name, provider)
            return
        route = self._routes.get(name)  # contested all along: the holder keeps it
        label = route.label if route is not None else f"service on port {self._ports.get(name)}"
        raise RouteExists(name, label)

    def _put_route(self, name: str, provider: Provider) -> None:
        self._routes[name] = provider
        self._provided.setdefault(provider, set()).add(name)
        self._route_log.info("routes", "router: %s provides %s", provider.label, shown(name))
        self._added((name,))

    def remove_route(self, name: str, provider: Provider) -> bool:
        """``$/unregister``; False if *provider* does not hold *name*."""
        if self._routes.get(name) is not provider:
            return False
        del self._routes[name]
        names = self._provided[provider]
        names.discard(name)
        if not names:
            del self._provided[provider]
        self._route_log.info("routes", "router: %s no longer provides %s", provider.label, shown(name))
        return True

    def drop_provider(self, provider: Provider) -> list[str]:
        """Every route of *provider* (``$/reset``, or its connection ended)."""
        names = sorted(self._provided.pop(provider, ()))
        for name in names:
            del self._routes[name]
        if names:
            listed = ", ".join(shown(name) for name in names[:NAMES_LOGGED])
            more = f" and {len(names) - NAMES_LOGGED} more" if len(names) > NAMES_LOGGED else ""
            self._route_log.info("routes", "router: %s no longer provides %s%s", provider.label, listed, more)
        return names

    async def close(self) -> None:
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        await self.liveness.close()
        if self._file is not None:
            self._file.flush()
        for service in self._services.values():
            await service.link.close()
