"""The M4's calls and notifications, to the Linux programs that provide their methods.

A real sketch (Arduino's RPC library) calls with one msgid per thread, call after call, waits
forever unless it set ``RPC.setTimeout``, and turns an error reply into nil, on which Arduino's
own examples call ``.as<T>()`` and halt the M4. So, for the M4's calls:

- **one call per msgid.** A new call with the msgid of one still in flight means the thread gave
  up on the old one: it is withdrawn from its provider (a router client gets
  ``$/cancelRequest``) and its reply, if one comes, is dropped. The thread's new call gets its
  own reply, never the late one.
- **held, not dropped, while nobody provides the method yet** (an app starting or restarting,
  Bridge apps re-providing after a proxy restart): up to :attr:`DispatchPolicy.hold` seconds,
  :data:`MAX_HELD_PER_METHOD` per method and :data:`MAX_HELD` in all (past those the oldest held
  call goes), then delivered as soon as a provider registers the method on either front. A call
  nobody provides in time gets no reply, as with the original proxy: the sketch's own
  ``RPC.setTimeout`` decides.
- **only a provider answers the M4.** What the proxy itself could say (nobody provides it, the
  provider is gone or too slow, too many calls in flight) is silence, unless
  ``--m4-error-replies`` (then an error reply at once, as before; nothing is held).
- **a limit per provider** (:data:`MAX_CALLS_PER_PROVIDER` unanswered calls), so one app that
  never answers cannot starve the M4's calls to the others; :data:`MAX_M4_CALLS` in all, for memory.

Notifications go to their provider or are dropped (not held: they are fire-and-forget, often a
stream of readings, and a burst of stale ones after a restart helps nobody); ``tty`` goes to the
monitor port as well. Methods the M4 calls or notifies that nobody provides are counted
(:meth:`M4Dispatcher.unprovided`, the register port's ``unprovided``, which ``x8-doctor`` reads).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from x8manager.proxy.m4port import MONITOR, REGISTER_PORT, ROUTER_FRONT, M4Port
from x8manager.proxy.ratelimit import RateLimitedLog
from x8manager.proxy.routing import LegacyService, Provider, ProviderFailed, RoutingTable
from x8manager.rpc.framing import Frame, Notification, Request, pack_response

__all__ = ["DEFAULT_HOLD", "MAX_CALLS_PER_PROVIDER", "MAX_HELD", "MAX_HELD_PER_METHOD", "MAX_M4_CALLS",
           "DispatchPolicy", "DispatchStats", "M4Dispatcher"]

log = logging.getLogger("x8manager.proxy.core")
limited_log = RateLimitedLog(log)

# A held call waits this long for a provider: a container restart (docker's 10 s stop timeout,
# then the app's start-up) or a Bridge app reconnecting to a restarted proxy (every 3 s).
DEFAULT_HOLD: Final = 30.0
# Held calls: per method and in all. A sketch has at most 10 calling threads.
MAX_HELD_PER_METHOD: Final = 16
MAX_HELD: Final = 64
# The M4's calls a provider has not answered yet, per provider and in all.
MAX_CALLS_PER_PROVIDER: Final = 32
MAX_M4_CALLS: Final = 256
# Methods remembered as called in vain (the least recently called is forgotten first).
MAX_UNPROVIDED: Final = 64
NOBODY: Final = "no Linux service registered for it"

_HELD: Final = 0
_SENT: Final = 1
_ENDED: Final = 2


@dataclass
class DispatchPolicy:
    service_timeout: float  # a provider's reply is waited for this long
    hold: float = DEFAULT_HOLD  # seconds a call waits for a provider to come (0: not held)
    error_replies: bool = False  # --m4-error-replies: the proxy's own failures as error replies
    max_message: int = 248  # the biggest reply the M4 link carries


@dataclass
class DispatchStats:
    """Counters of the M4→Linux side; tests read them."""

    m4_calls: int = 0
    m4_notifications: int = 0
    unroutable: int = 0  # calls and notifications that found no provider when they came
    held: int = 0
    held_delivered: int = 0
    held_expired: int = 0  # no provider came in time (or the held calls were full): no reply
    abandoned: int = 0  # the same msgid called again: the old call withdrawn
    over_limit: int = 0  # dropped: the provider (or the proxy) had too many calls unanswered
    failed: int = 0  # the provider failed (gone, unreachable, too slow)


class _M4Call:
    """One of the M4's calls: held for a provider, or sent to one."""

    __slots__ = ("arrived", "frame", "provider", "request", "state", "withdraw")

    def __init__(self, frame: Frame, request: Request) -> None:
        self.frame = frame
        self.request = request
        self.state = _SENT
        self.provider: Provider | None = None
        self.withdraw: Callable[[], None] = _nothing
        self.arrived = 0.0


def _nothing() -> None:
    """Nothing to withdraw."""


class _Unprovided:
    """A method the M4 called (or notified) that nobody provides."""

    __slots__ = ("calls", "held", "last", "notifications", "unanswered")

    def __init__(self) -> None:
        self.calls = 0
        self.notifications = 0
        self.held = 0
        self.unanswered = 0
        self.last = time.monotonic()


def front_of(provider: Provider) -> str:
    return REGISTER_PORT if isinstance(provider, LegacyService) else ROUTER_FRONT


class M4Dispatcher:
    """Hands the M4's calls and notifications to their providers (see the module docstring)."""

    def __init__(self, table: RoutingTable, m4: M4Port, policy: DispatchPolicy, stats: DispatchStats) -> None:
        self._table = table
        self._m4 = m4
        self._policy = policy
        self.stats = stats
        # The monitor port's output, while there is one: gets every tty notification's params.
        self.monitor_output: Callable[..., None] | None = None
        self._calls: dict[int, _M4Call] = {}  # by the M4's msgid: held or sent, not answered yet
        self._per_provider: dict[Provider, int] = {}
        self._in_flight = 0
        self._held: dict[str, list[_M4Call]] = {}  # by method, oldest first
        self._held_order: deque[_M4Call] = deque()  # every held call, oldest first
        self._timer: asyncio.TimerHandle | None = None
        self._unprovided: dict[str, _Unprovided] = {}
        table.on_route_added.append(self._route_added)

    @property
    def held(self) -> int:
        """Calls held for a provider now."""
        return len(self._held_order)

    @property
    def in_flight(self) -> int:
        """Calls sent to a provider and not answered yet."""
        return self._in_flight

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_frame(self, frame: Frame) -> None:
        """A call or notification from the M4 (the M4 port's handler)."""
        message = frame.message
        if isinstance(message, Request):
            self._on_call(frame, message)
        else:
            assert isinstance(message, Notification)
            self._on_notification(frame, message)

    # -- notifications --------------------------------------------------------------------------

    def _on_notification(self, frame: Frame, message: Notification) -> None:
        provider = self._table.provider_of(message.method)
        tap = self._m4.tap
        if self.monitor_output is not None and message.method == "tty":
            # The sketch's Serial output: to the monitor port (or the journal), and to a Linux
            # program that provides tty itself as well.
            self.monitor_output(message.params, taken=provider is not None)
            if provider is None:
                if tap is not None:
                    tap.m4_notification(frame, message, MONITOR, "")
                return
        if provider is None:
            self.stats.unroutable += 1
            self._note_unprovided(message.method).notifications += 1
            limited_log.warning("m4-unroutable-notification", "M4 notification %r: %s; dropped",
                                message.method, NOBODY)
            if tap is not None:
                tap.m4_notification(frame, message, "", "", NOBODY)
            return
        self.stats.m4_notifications += 1
        if tap is not None:
            tap.m4_notification(frame, message, front_of(provider), provider.label)
        provider.notify(frame)

    # -- calls ----------------------------------------------------------------------------------

    def _on_call(self, frame: Frame, request: Request) -> None:
        self.stats.m4_calls += 1
        before = self._calls.pop(request.msgid, None)
        if before is not None:
            self._abandon(before)
        call = _M4Call(frame, request)
        provider = self._table.provider_of(request.method)
        if provider is None:
            self._no_provider(call)
        else:
            self._send(call, provider, held=False)

    def _send(self, call: _M4Call, provider: Provider, *, held: bool) -> None:
        request = call.request
        unanswered = self._per_provider.get(provider, 0)
        if unanswered >= MAX_CALLS_PER_PROVIDER or self._in_flight >= MAX_M4_CALLS:
            self.stats.over_limit += 1
            limit = (f"{provider.label} has {unanswered} of the M4's calls unanswered"
                     if unanswered >= MAX_CALLS_PER_PROVIDER
                     else f"{self._in_flight} M4 calls are unanswered")
            limited_log.warning("m4-over-limit", "M4 call %r dropped: %s already", request.method, limit)
            self._end_unanswered(call, f"dropped: {limit} already")
            return
        self._per_provider[provider] = unanswered + 1
        self._in_flight += 1
        call.state = _SENT
        call.provider = provider
        self._calls[request.msgid] = call
        tap = self._m4.tap
        if tap is not None:
            tap.m4_request(call.frame, request, front_of(provider), provider.label, held=held)
        try:
            withdraw = provider.call(call.frame, lambda result: self._done(call, result),
                                     wait=self._policy.service_timeout)
        except Exception:  # a provider's bug must not keep the call counted against it forever
            log.exception("M4 call %r: %s could not take it", request.method, provider.label)
            if call.state == _SENT:
                self._release(call)
            return
        if call.state == _SENT:  # a provider may fail at once
            call.withdraw = withdraw

    def _release(self, call: _M4Call) -> None:
        """A sent call is over: it no longer counts against its provider."""
        call.state = _ENDED
        provider = call.provider
        assert provider is not None
        left = self._per_provider[provider] - 1
        if left:
            self._per_provider[provider] = left
        else:
            del self._per_provider[provider]
        self._in_flight -= 1
        msgid = call.request.msgid
        if self._calls.get(msgid) is call:
            del self._calls[msgid]

    def _done(self, call: _M4Call, result: Frame | ProviderFailed) -> None:
        """The provider answered the M4's call (or failed to): the reply goes to the M4."""
        if call.state != _SENT:
            return  # abandoned: withdrawn, its reply dropped
        self._release(call)
        request = call.request
        if isinstance(result, ProviderFailed):
            self.stats.failed += 1
            limited_log.warning("m4-call-failed", "M4 call %r: %s; no reply to the M4", request.method,
                                result.text)
            self._end_unanswered(call, result.text)
            return
        if len(result.raw) > self._policy.max_message:
            log.error("M4 call %r: the reply is %d bytes, over the M4 link limit of %d; "
                      "sending an error instead", request.method, len(result.raw), self._policy.max_message)
            self._reply_error(request.msgid, f"reply too large for the M4 link ({len(result.raw)} bytes)")
            return
        self._m4.reply(result.raw)

    def _end_unanswered(self, call: _M4Call, reason: str) -> None:
        """The call ends without its provider's reply: silence, or an error with --m4-error-replies."""
        if self._policy.error_replies:
            self._reply_error(call.request.msgid, f"m4-proxy: {reason}")
            return
        tap = self._m4.tap
        if tap is not None:
            tap.m4_call_ended(call.request.msgid, "error", f"{reason}: no reply to the M4")

    def _reply_error(self, msgid: int, text: str) -> None:
        self._m4.reply(pack_response(msgid, text, None))

    def _abandon(self, call: _M4Call) -> None:
        """The M4 called again with *call*'s msgid: its thread gave up on *call*."""
        self.stats.abandoned += 1
        request = call.request
        limited_log.log(logging.INFO, "m4-abandoned",
                        "M4 call %r (msgid %d) abandoned: the sketch called again with its msgid (the thread "
                        "stopped waiting); a late reply to it is dropped", request.method, request.msgid)
        if call.state == _HELD:
            self._unhold(call)
        elif call.state == _SENT:
            self._release(call)
            call.withdraw()
        tap = self._m4.tap
        if tap is not None:
            tap.m4_call_ended(request.msgid, "abandoned",
                              "the sketch called again with this msgid: this call's reply is dropped")

    # -- held calls -----------------------------------------------------------------------------

    def _no_provider(self, call: _M4Call) -> None:
        request = call.request
        self.stats.unroutable += 1
        unprovided = self._note_unprovided(request.method)
        unprovided.calls += 1
        tap = self._m4.tap
        if self._policy.error_replies or self._policy.hold <= 0:
            limited_log.warning("m4-unroutable-call", "M4 call %r: %s", request.method, NOBODY)
            unprovided.unanswered += 1
            if tap is not None:
                tap.m4_request(call.frame, request, "", "")
            self._end_unanswered(call, f"no service registered for '{request.method}'")
            return
        waiting = self._held.setdefault(request.method, [])
        if len(waiting) >= MAX_HELD_PER_METHOD:
            self._expire(waiting[0], f"{MAX_HELD_PER_METHOD} later calls of it are held: dropped")
        elif len(self._held_order) >= MAX_HELD:
            self._expire(self._held_order[0], f"{MAX_HELD} later calls are held: dropped")
        loop = asyncio.get_running_loop()
        call.state = _HELD
        call.arrived = loop.time()
        self._held.setdefault(request.method, []).append(call)
        self._held_order.append(call)
        self._calls[request.msgid] = call
        unprovided.held += 1
        self.stats.held += 1
        limited_log.warning("m4-held", "M4 call %r held: no Linux program provides it yet (up to %g s for "
                            "one to register it)", request.method, self._policy.hold)
        if tap is not None:
            tap.m4_held(call.frame, request, self._policy.hold)
        if self._timer is None:
            self._timer = loop.call_at(call.arrived + self._policy.hold, self._expire_due)

    def _unhold(self, call: _M4Call) -> None:
        """Take *call* out of the held calls (delivered, abandoned or expired)."""
        call.state = _ENDED
        method = call.request.method
        waiting = self._held.get(method)
        if waiting is not None:
            waiting.remove(call)
            if not waiting:
                del self._held[method]
        self._held_order.remove(call)
        unprovided = self._unprovided.get(method)
        if unprovided is not None:
            unprovided.held -= 1
        if self._calls.get(call.request.msgid) is call:
            del self._calls[call.request.msgid]

    def _expire(self, call: _M4Call, reason: str) -> None:
        self._unhold(call)
        self.stats.held_expired += 1
        unprovided = self._unprovided.get(call.request.method)
        if unprovided is not None:
            unprovided.unanswered += 1
        limited_log.warning("m4-held-expired", "M4 call %r: %s; no reply (the sketch's own timeout decides)",
                            call.request.method, reason)
        self._end_unanswered(call, reason)

    def _expire_due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        hold = self._policy.hold
        due = loop.time() - hold
        while self._held_order and self._held_order[0].arrived <= due:
            self._expire(self._held_order[0], f"nobody provided it within {hold:g} s")
        if self._held_order:
            self._timer = loop.call_at(self._held_order[0].arrived + hold, self._expire_due)

    def _route_added(self, name: str) -> None:
        self._unprovided.pop(name, None)
        if name in self._held:
            # After the registration is through (its reply first): the provider is ready.
            asyncio.get_running_loop().call_soon(self._deliver_held, name)

    def _deliver_held(self, name: str) -> None:
        provider = self._table.provider_of(name)
        waiting = self._held.get(name)
        if provider is None or not waiting:
            return  # gone again meanwhile: still held
        for call in list(waiting):
            self._unhold(call)
            self.stats.held_delivered += 1
            self._send(call, provider, held=True)
        if not self._held_order and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- what the M4 called in vain ---------------------------------------------------------------

    def _note_unprovided(self, method: str) -> _Unprovided:
        entry = self._unprovided.pop(method, None)
        if entry is None:
            entry = _Unprovided()
            while len(self._unprovided) >= MAX_UNPROVIDED:
                del self._unprovided[next(iter(self._unprovided))]
        entry.last = time.monotonic()
        self._unprovided[method] = entry  # the most recently called last
        return entry

    def unprovided(self) -> dict[str, dict[str, Any]]:
        """Methods the M4 called or notified since the proxy started that nobody provides now:
        name → ``calls``, ``notifications``, ``held`` (now), ``unanswered`` (calls that got no
        reply: not held, or no provider in time) and ``seconds_ago`` (the last call)."""
        now = time.monotonic()
        return {name: {"calls": entry.calls, "notifications": entry.notifications, "held": entry.held,
                       "unanswered": entry.unanswered, "seconds_ago": round(now - entry.last, 1)}
                for name, entry in self._unprovided.items()}
