"""The one M4 link as the fronts see it: calls into the M4, notifications, and the M4's own traffic.

Every front (call port, router front) reaches the M4 through :class:`M4Port` only:

- :meth:`M4Port.call` puts a caller's raw request on the wire with a proxy-assigned msgid
  (every msgpack-rpc-python client sends msgid 0, so the callers' own ids cannot tell replies
  apart), checks the link's size limit before anything is sent, and hands back the M4's raw
  reply with the caller's msgid bytes restored, or why there is none;
- :meth:`M4Port.notify` and :meth:`M4Port.reply` send one message each;
- the M4's byte stream is cut into messages; replies go to their callers, the M4's calls and
  notifications to the routing core's handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgpack

from x8manager.proxy.link import LinkDown, M4Link
from x8manager.proxy.pending import PendingCalls
from x8manager.proxy.ratelimit import RateLimitedLog
from x8manager.rpc.framing import (
    M4_MAX_MESSAGE,
    M4_MAX_SEND,
    Frame,
    InvalidMessage,
    Response,
    StreamDecoder,
    replace_msgid,
)

if TYPE_CHECKING:
    from x8manager.proxy.tap import Tap

__all__ = ["CALL_PORT", "MONITOR", "REGISTER_PORT", "ROUTER_FRONT", "M4CallFailed", "M4Port", "M4Stats",
           "TooLarge"]

log = logging.getLogger(__name__)
# Lines a Linux peer's messages can cause (a notification lost while the M4 does not read).
limited_log = RateLimitedLog(log)

# The M4 link carries ≤ ~496 bytes per RPMsg message; a larger partial object is garbage.
M4_DECODER_BUFFER: Final = 8 * 1024
# A partial M4 message with no new byte for this long is abandoned (the M4 reset mid-message).
# The H7 forwards one message's chunks back to back, so real gaps are far shorter.
STALE_PARTIAL_AFTER: Final = 0.5
# Distinct call waits (one per front, as configured) kept as queues even while empty.
MAX_WAIT_QUEUES: Final = 8

# The fronts, as the trace and the logs name them.
CALL_PORT: Final = "call port"
REGISTER_PORT: Final = "register port"  # the M4's calls to a service registered there
ROUTER_FRONT: Final = "router front"
MONITOR: Final = "monitor"


class M4CallFailed(Exception):
    """A call into the M4 got no reply: not sent, refused by the link, or timed out."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class TooLarge(M4CallFailed):
    """The message is over the M4 link's size limit; nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message too large for the M4 link: {size} bytes (limit {limit})")
        self.size = size
        self.limit = limit


# Gets the M4's raw reply (the caller's msgid bytes restored) or why there is none; once.
CallDone = Callable[["bytes | M4CallFailed"], None]
# Gets each call or notification the M4 sends (the routing core).
FrameHandler = Callable[[Frame], None]


@dataclass
class M4Stats:
    """Counters of the M4 link; tests and the benchmark read them."""

    calls: int = 0
    call_timeouts: int = 0
    late_replies: int = 0
    m4_bytes: int = 0
    stale_partials: int = 0


class _Call:
    """One call in flight: its wire msgid, the caller's msgid bytes, deadline and callback."""

    __slots__ = ("caller_msgid", "deadline", "done", "port", "wait", "wire_msgid", "written")

    def __init__(self, port: M4Port, done: CallDone) -> None:
        self.port = port
        self.done: CallDone | None = done  # None once finished
        self.wire_msgid = -1
        self.caller_msgid = b""
        self.wait = 0.0
        self.deadline = 0.0
        self.written: asyncio.Future[None] | None = None

    def replied(self, raw: bytes) -> None:
        try:
            restored, _ = replace_msgid(raw, self.caller_msgid)
        except InvalidMessage as exc:  # pragma: no cover - the decoder passed it as a response
            self.finish(M4CallFailed(f"the M4's reply is unusable: {exc.reason}"))
            return
        self.finish(restored)

    def timed_out(self) -> None:
        self.port.stats.call_timeouts += 1
        self.port.pending.close(self.wire_msgid)  # a late reply finds nobody waiting
        failure = M4CallFailed(f"no reply from the M4 within {self.wait:g} s", timed_out=True)
        if self.port.tap is not None:
            self.port.tap.call_ended(self.wire_msgid, failure.reason)
        self.finish(failure)

    def finish(self, result: bytes | M4CallFailed) -> None:
        done = self._settle()
        if done is not None:
            done(result)

    def cancel(self) -> None:
        """The caller gave up (or went away): forget the call, send nothing more."""
        if self.done is None:
            return
        self.port.pending.close(self.wire_msgid)
        self._settle()
        if self.port.tap is not None:
            self.port.tap.call_ended(self.wire_msgid, "withdrawn: the caller gave up or went away")

    def _settle(self) -> CallDone | None:
        """Mark the call finished, once; return its callback if it was not finished yet."""
        done, self.done = self.done, None
        if done is not None:
            self.port.deadlines.finished(self.wait)
            if self.written is not None and not self.written.done():
                self.written.cancel()  # not written yet: the link drops it unless it has started
        return done

    def on_written(self, written: asyncio.Future[None]) -> None:
        if written.cancelled() or self.done is None:
            return
        exc = written.exception()
        if exc is not None:
            self.port.pending.close(self.wire_msgid)
            reason = str(exc) if isinstance(exc, LinkDown) else f"writing to the M4 failed: {exc!r}"
            if self.port.tap is not None:
                self.port.tap.call_ended(self.wire_msgid, reason)
            self.finish(M4CallFailed(reason))


class _Deadlines:
    """The reply deadlines of the calls in flight, kept with one event-loop timer.

    A timer handle per call (created, pushed on the loop's heap, cancelled, popped) was a
    tenth of the call port's time. Calls given the same wait form a queue in deadline order,
    so each call costs an append and, when it finishes at the head, a pop; one that finishes
    behind a slower one leaves when that one does. The timer is set for the earliest head
    and, when it fires, times out what is due and is set for the next.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, deque[_Call]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, call: _Call) -> None:
        call.deadline = self._loop.time() + call.wait
        queue = self._queues.get(call.wait)
        if queue is None:
            queue = self._queues[call.wait] = deque()
        queue.append(call)
        if self._timer is None or call.deadline < self._timer_at:
            self._arm(call.deadline)

    def finished(self, wait: float) -> None:
        """A call with this *wait* finished: drop the finished calls at its queue's head."""
        queue = self._queues.get(wait)
        while queue and queue[0].done is None:
            queue.popleft()
        if queue is not None and not queue and len(self._queues) > MAX_WAIT_QUEUES:
            del self._queues[wait]  # callers with ever new waits: keep the table small

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        for queue in list(self._queues.values()):
            while queue and (queue[0].done is None or queue[0].deadline <= now):
                call = queue.popleft()
                if call.done is not None:
                    call.timed_out()
        heads = [queue[0].deadline for queue in self._queues.values() if queue]
        if heads:
            self._arm(min(heads))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class M4Port:
    """The M4 link's user-facing side (see the module docstring)."""

    def __init__(self, link: M4Link, *, call_timeout: float, max_message: int = M4_MAX_MESSAGE) -> None:
        self.link = link
        self.max_message = max_message
        self.call_timeout = call_timeout
        self.stats = M4Stats()
        self.pending = PendingCalls()
        self._decoder = StreamDecoder(M4_DECODER_BUFFER, max_message=M4_MAX_SEND)
        self._last_data = 0.0
        self._on_frame: FrameHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: _Deadlines | None = None
        # Set while the messages of one read from the M4 are handed out (see after_this_read).
        self._after_read: list[Callable[[], None]] | None = None
        # The trace tap while a trace client listens (proxy.tap); None costs one check per message.
        self.tap: Tap | None = None

    @property
    def description(self) -> str:
        return self.link.description

    def start(self, on_frame: FrameHandler) -> None:
        """Start reading; *on_frame* gets every call and notification from the M4."""
        self._on_frame = on_frame
        # Kept: asyncio.get_running_loop() costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
        self._deadlines = _Deadlines(self._loop)
        self.link.start(self._on_data, self.discard_partial_message)

    @property
    def deadlines(self) -> _Deadlines:
        assert self._deadlines is not None, "M4Port.start() first"
        return self._deadlines

    async def close(self) -> None:
        if self._deadlines is not None:
            self._deadlines.close()
        await self.link.close()

    # -- Linux → M4 ---------------------------------------------------------------------------

    def call(self, raw: bytes, done: CallDone, *, timeout: float | None = None,
             front: str = CALL_PORT, app: str = "") -> Callable[[], None]:
        """Send the raw request *raw* with a wire msgid; *done* gets the outcome, once.

        *front* and *app* name the caller in the trace.

        Raises :class:`TooLarge` (nothing sent) or :class:`M4CallFailed` (link down or busy)
        at once; later failures and the timeout go to *done*. Returns a function that
        withdraws the call (the caller gave up): a message still waiting for the M4 to read
        is then not sent at all, and a late reply is dropped.
        """
        self.stats.calls += 1
        pending = self.pending
        call = _Call(self, done)
        wire_msgid = pending.open_callback(call.replied)
        wire, caller_msgid = replace_msgid(raw, msgpack.packb(wire_msgid))
        if len(wire) > self.max_message >= len(raw):
            # Our id made it longer than the caller's own message: a one-byte id fits.
            pending.close(wire_msgid)
            wire_msgid = pending.open_callback(call.replied, compact=True)
            wire, _ = replace_msgid(raw, msgpack.packb(wire_msgid))
        call.wire_msgid, call.caller_msgid = wire_msgid, caller_msgid
        if len(wire) > self.max_message:
            pending.close(wire_msgid)
            too_large = TooLarge(len(wire), self.max_message)
            if self.tap is not None:
                self.tap.call_failed(raw, front, app, too_large.reason)
            raise too_large
        try:
            call.written = self.link.send(wire)
        except LinkDown as exc:
            pending.close(wire_msgid)
            if self.tap is not None:
                self.tap.call_failed(raw, front, app, str(exc))
            raise M4CallFailed(str(exc)) from None
        if call.written is not None:
            call.written.add_done_callback(call.on_written)
        call.wait = self.call_timeout if timeout is None else timeout
        self.deadlines.add(call)
        if self.tap is not None:
            self.tap.call_sent(wire, wire_msgid, caller_msgid, front, app)
        return call.cancel

    def notify(self, raw: bytes, *, front: str = CALL_PORT, app: str = "") -> None:
        """Send a raw notification; *front* and *app* name its sender (trace, and the log if lost)."""
        if len(raw) > self.max_message:
            limited_log.warning("m4-too-large", "%s: notification is %d bytes, over the M4 link limit of %d; "
                                "dropped", _sender(front, app), len(raw), self.max_message)
            if self.tap is not None:
                self.tap.notification_sent(raw, front, app, "over the M4 link limit: dropped")
            return
        if self.tap is not None:
            self.tap.notification_sent(raw, front, app)
        try:
            written = self.link.send(raw)
        except LinkDown as exc:
            limited_log.warning("m4-lost", "%s: notification lost: %s", _sender(front, app), exc)
            return
        if written is not None:
            written.add_done_callback(
                lambda done: _log_lost(done, f"{_sender(front, app)}: notification lost"))

    def reply(self, raw: bytes) -> None:
        """Send a reply to one of the M4's calls (its size is the caller's concern)."""
        if self.tap is not None:
            self.tap.reply_to_m4(raw)
        try:
            written = self.link.send(raw)
        except LinkDown as exc:
            limited_log.warning("m4-lost", "reply to the M4 lost: %s", exc)
            return
        if written is not None:
            written.add_done_callback(lambda done: _log_lost(done, "reply to the M4 lost"))

    # -- M4 → Linux ---------------------------------------------------------------------------

    def discard_partial_message(self) -> None:
        """Forget a half-received M4 message (called when the link reopens: its tail is gone)."""
        if self._decoder.pending:
            log.info("M4 link: discarding %d bytes of a partial message", self._decoder.pending)
        self._decoder.reset()

    def _on_data(self, data: bytes) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.stats.m4_bytes += len(data)
        if self._decoder.pending and now - self._last_data > STALE_PARTIAL_AFTER:
            # x8h7_ui never reports an M4 reset: a message cut short by one would otherwise
            # swallow the start of the next one. Chunks of one message come milliseconds apart.
            self.stats.stale_partials += 1
            self.discard_partial_message()
        self._last_data = now
        try:
            frames = self._decoder.feed_frames(data)
        except Exception:  # pragma: no cover - the decoder resynchronises on its own
            log.exception("M4 stream decoder failed; resetting it")
            self._decoder.reset()
            return
        if len(frames) == 1:
            self._handle(frames[0])
            return
        self._after_read = []
        try:
            for frame in frames:
                self._handle(frame)
        finally:
            callbacks, self._after_read = self._after_read, None
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("handling the M4's messages: %r failed", callback)

    def after_this_read(self, callback: Callable[[], None]) -> bool:
        """While several M4 messages from one read are handed out, run *callback* once they all
        are and return True; else return False (the caller acts now).

        A front that answers many calls on one connection (a Bridge with 16 threads) then
        writes all the replies of a read at once: one system call and one wake-up of the
        client instead of one per reply.
        """
        if self._after_read is None:
            return False
        self._after_read.append(callback)
        return True

    def _handle(self, frame: Frame) -> None:
        try:
            self._on_m4_frame(frame)
        except Exception:
            log.exception("M4 message %s could not be handled", frame.raw[:64].hex(" "))

    def _on_m4_frame(self, frame: Frame) -> None:
        message = frame.message
        if isinstance(message, Response):
            if self.tap is not None:
                self.tap.reply_from_m4(frame, message)
            if not self.pending.resolve(message.msgid, frame.raw):
                self.stats.late_replies += 1
                log.info("M4 reply for msgid %d dropped: no caller waits for it (late or unsolicited)",
                         message.msgid)
            return
        # Its calls and notifications are traced by the handler, which knows where they go.
        assert self._on_frame is not None
        self._on_frame(frame)


def _sender(front: str, app: str) -> str:
    return f"{front} ({app})" if app else front


def _log_lost(done: asyncio.Future[None], what: str) -> None:
    if not done.cancelled() and done.exception() is not None:
        limited_log.warning("m4-lost", "%s: %s", what, done.exception())
