"""The call port (5001): one message per connection, forwarded to the M4, answered, closed.

Each connection is a non-blocking socket driven by event-loop callbacks: no task, no
transport, no stream objects, one timer handle (the M4's reply deadline). Thousands of short
connections a second made asyncio's per-connection machinery the proxy's main cost.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from x8manager.proxy.m4port import M4CallFailed, M4Port, TooLarge
from x8manager.proxy.ratelimit import RateLimitedLog
from x8manager.rpc.framing import (
    Incomplete,
    InvalidMessage,
    Notification,
    Request,
    first_object,
    msgid_bytes_of,
    parse_message,
    raw_error_reply,
)

__all__ = ["CLIENT_SEND_TIMEOUT", "MAX_CLIENT_MESSAGE", "CallConnection", "CallPort", "CallPortStats"]

log = logging.getLogger("x8manager.proxy.core")
limited_log = RateLimitedLog(log)

# A call-port client gets this long to send its one message (the original waits forever).
CLIENT_SEND_TIMEOUT: Final = 30.0
# The biggest message the call port reads; larger ones cannot reach the M4 in any case.
MAX_CLIENT_MESSAGE: Final = 64 * 1024

# The call port takes up to this many waiting connections per wake-up.
ACCEPT_BATCH: Final = 64
READ_CHUNK: Final = 64 * 1024
# Send deadlines and close waits are checked this often (so they hold to within this).
SWEEP_INTERVAL: Final = 0.25
# Open call-port connections at most (each waits at most CLIENT_SEND_TIMEOUT for its message).
MAX_CONNECTIONS: Final = 1024
# accept() errors that mean "no descriptors or memory now": retried after a pause, not at once.
OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE: Final = 0.5

# Connection states.
_READING: Final = 0  # waiting for the one message
_CALLING: Final = 1  # message taken, the answer is not known yet
_ANSWERED: Final = 2  # answer (or nothing) sent: closing


@dataclass
class CallPortStats:
    refused: int = 0  # connections closed at once: MAX_CONNECTIONS were open


@dataclass
class CallContext:
    """What a call connection needs: the loop, the M4, one policy switch, the counters."""

    loop: asyncio.AbstractEventLoop
    m4: M4Port
    timeout_error_reply: bool
    stats: CallPortStats


class CallPort:
    """The call port's listening sockets, accepting on the event loop.

    Connections are plain non-blocking sockets watched with ``add_reader``: asyncio's
    transports cost a task, several futures and callbacks per connection, which at thousands
    of one-message connections a second was most of the proxy's CPU time. The client's send
    deadline and the close wait after the answer are checked by one sweep timer that runs only
    while connections are open, so a call costs one timer handle (the M4's reply deadline).
    """

    def __init__(self, context: CallContext, listeners: list[socket.socket]) -> None:
        self._context = context
        self._loop = context.loop
        self._listeners = listeners
        self._families = {listener: int(listener.family) for listener in listeners}
        self.connections: set[CallConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        for listener in listeners:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        # socket.accept() builds a socket.socket, whose family and type properties convert to
        # enums: a tenth of the call port's Python time. The C-level accept and the C socket
        # type give the same socket for the few calls made on it (recv, send, close).
        family = self._families[listener]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = listener._accept()  # type: ignore[attr-defined]  # C method, untyped
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._back_off(exc)
                else:  # ECONNABORTED and the like: that one connection is gone
                    limited_log.warning("call-accept", "call port: accept failed: %s", exc.strerror or exc)
                return
            sock = _socket.socket(family, _socket.SOCK_STREAM, 0, fd)
            if len(self.connections) >= MAX_CONNECTIONS:
                limited_log.warning("call-full", "call port: connection from %s refused: %d open already",
                                    address, MAX_CONNECTIONS)
                self._context.stats.refused += 1
                sock.close()
                continue
            # No TCP_NODELAY: the proxy writes one reply and then the end of stream, and neither
            # the first segment on a connection nor a FIN waits for Nagle. The socket stays in
            # blocking mode: every recv/send passes MSG_DONTWAIT (one syscall less per call).
            connection = CallConnection(self._context, sock, address, self._closed, self._waiting)
            self.connections.add(connection)
            # The client sends its message right after connecting, so it is usually here
            # already: taken now, the connection never needs an event-loop watcher.
            connection.readable()

    def _closed(self, connection: CallConnection) -> None:
        self.connections.discard(connection)

    def _waiting(self) -> None:
        """A connection waits for the rest of its message: deadlines need checking."""
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _back_off(self, exc: OSError) -> None:
        """Out of descriptors (or memory): stop accepting for a moment instead of spinning,
        since the listener stays readable while the connection waits in the backlog."""
        limited_log.warning("call-resources", "call port: accept failed (%s); not accepting for %g s",
                            exc.strerror or exc, ACCEPT_PAUSE)
        for listener in self._listeners:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(listener.fileno())
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        for listener in self._listeners:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _sweep(self) -> None:
        now = self._loop.time()
        for connection in list(self.connections):
            connection.check_deadline(now)
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep) if self.connections else None

    def close(self) -> None:
        """Stop accepting and drop every open connection (shutting down)."""
        for listener in self._listeners:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(listener.fileno())
            listener.close()
        for connection in list(self.connections):
            connection.close()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class CallConnection:
    """One call-port connection: read one message, forward it, answer, close.

    The reply and the end of stream go out in the same step, like the original's
    write-then-close. Bytes pipelined behind the message (read with it) are dropped, so they
    cause no RST. Bytes arriving later are a new call on a finished connection (e.g.
    msgpack-rpc-python's second call() on the same Client): left unread, they make the kernel
    answer the close (or a later write) with a reset, as with the original's close, so that call
    fails at once instead of waiting for the client's own timeout.

    A connection whose message came with the accept (the usual case) is never watched by the
    event loop at all; only one that sends its message slowly gets a reader and a deadline.
    """

    def __init__(self, context: CallContext, sock: _socket.socket, peer: Any,
                 on_closed: Callable[[CallConnection], None], on_waiting: Callable[[], None]) -> None:
        self._context = context
        self._on_closed = on_closed
        self._on_waiting = on_waiting
        self._loop = context.loop
        self._sock: _socket.socket | None = sock
        self._fd = sock.fileno()
        self._peer = peer
        self._state = _READING
        self._received = b""
        self._deadline = self._loop.time() + CLIENT_SEND_TIMEOUT
        self._client_done = False  # the client half-closed
        self._reading = False  # an event-loop reader is registered
        self._unsent = b""  # the part of the answer the socket did not take at once
        self._withdraw: Callable[[], None] | None = None  # the M4 call in flight
        self._request = b""  # the client's request as it came (its msgid for error replies)
        self._method = ""

    # -- socket events ----------------------------------------------------------------------

    def readable(self) -> None:
        """Take what the client sent so far (called at accept, then by the reader if needed)."""
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self._wait_for_more()
            return
        except OSError as exc:
            self._broken(exc)
            return
        if not data:
            self._client_done = True
            log.debug("call port: %s closed before sending a message", self._peer)
            self._answer(None)
            return
        self._take(data)
        if self._state == _READING:
            self._wait_for_more()
        else:
            self._stop_reading()

    def _wait_for_more(self) -> None:
        if not self._reading and self._sock is not None:
            self._reading = True
            self._loop.add_reader(self._fd, self.readable)
            self._on_waiting()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def check_deadline(self, now: float) -> None:
        """Called by the sweep: enforce the send deadline."""
        if now >= self._deadline and self._state == _READING:
            limited_log.warning("call-slow", "call port: %s sent no complete message within %g s",
                                self._peer, CLIENT_SEND_TIMEOUT)
            self._answer(None)

    # -- reading the one message ------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        received = self._received + data if self._received else data
        try:
            item = first_object(received, MAX_CLIENT_MESSAGE)
        except Incomplete:
            self._received = received
            return
        except InvalidMessage as exc:
            limited_log.warning("call-refused", "call port: refused message from %s: %s", self._peer,
                                exc.reason)
            self._answer(None)
            return
        except Exception as exc:
            limited_log.warning("call-refused", "call port: undecodable message from %s: %s", self._peer, exc)
            self._answer(None)
            return
        self._received = b""
        self._state = _CALLING
        raw = item.raw
        try:
            message = parse_message(item.value)
        except InvalidMessage as exc:
            limited_log.warning("call-invalid", "call port: invalid message from %s: %s", self._peer,
                                exc.reason)
            if exc.msgid is None:
                self._answer(None)
            else:
                self._answer(raw_error_reply(msgid_bytes_of(raw), f"invalid message: {exc.reason}"))
            return
        if isinstance(message, Request):
            self._call_m4(message, raw)
        elif isinstance(message, Notification):
            self._context.m4.notify(raw)
            self._answer(None)
        else:
            limited_log.warning("call-response", "call port: %s sent a response; only requests and "
                                "notifications are forwarded", self._peer)
            self._answer(None)

    # -- to the M4 ---------------------------------------------------------------------------

    @property
    def _client_msgid(self) -> bytes:
        """The request's msgid bytes: needed for error replies only, so found only then."""
        return msgid_bytes_of(self._request)

    def _call_m4(self, request: Request, raw: bytes) -> None:
        self._method = request.method
        self._request = raw
        try:
            self._withdraw = self._context.m4.call(raw, self._m4_done)
        except TooLarge as exc:
            log.warning("call port: %s from %s is %d bytes, over the M4 link limit of %d",
                        request.method, self._peer, exc.size, exc.limit)
            self._answer(raw_error_reply(self._client_msgid, exc.reason))
        except M4CallFailed as exc:
            self._not_sent(exc)

    def _not_sent(self, exc: M4CallFailed) -> None:
        log.warning("call port: %s from %s not sent: %s", self._method, self._peer, exc.reason)
        self._answer(raw_error_reply(self._client_msgid, exc.reason))

    def _m4_done(self, result: bytes | M4CallFailed) -> None:
        """The M4's reply with the client's msgid back in place, or why there is none."""
        self._withdraw = None
        if self._state != _CALLING:  # pragma: no cover - answered calls are withdrawn
            return
        if isinstance(result, bytes):
            self._answer(result)
        elif result.timed_out:
            log.info("call port: no reply from the M4 to %s: %s", self._method, result.reason)
            self._answer(raw_error_reply(self._client_msgid, result.reason)
                         if self._context.timeout_error_reply else None)
        else:
            self._not_sent(result)

    # -- answering and closing -------------------------------------------------------------

    def _answer(self, reply: bytes | None) -> None:
        """Send *reply* (if any) and the end of stream together."""
        if self._state == _ANSWERED:
            return
        self._state = _ANSWERED
        self._received = b""
        sock = self._sock
        if sock is None:
            return  # the client went away meanwhile
        self._stop_reading()
        if reply:
            # MSG_MORE holds the reply back for the close that follows at once, so the reply
            # and the end of stream leave as one segment: one delivery on the client's side
            # instead of two, about a tenth of the proxy's CPU per call. The price: a client
            # that sends more bytes in the microseconds between our read and this close gets
            # the reset without the reply (the original sent the reply, then the reset); such
            # pipelining on the one-call port is a client bug either way.
            try:
                sent = sock.send(reply, socket.MSG_DONTWAIT | socket.MSG_MORE)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                log.debug("call connection from %s broke: %s", self._peer, exc)
                self.close()
                return
            if sent < len(reply):  # a full socket buffer: rare for one small reply
                self._unsent = reply[sent:]
                self._loop.add_writer(self._fd, self._writable)
                return
        self._finish()

    def _writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._unsent, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._broken(exc)
            return
        self._unsent = self._unsent[sent:]
        if not self._unsent:
            self._loop.remove_writer(self._fd)
            self._finish()

    def _finish(self) -> None:
        """The answer is out: close. Bytes the client sent after its message are still unread,
        so the kernel answers the close with a reset (what the original's close did)."""
        self.close()

    def _broken(self, exc: OSError) -> None:
        log.debug("call connection from %s broke: %s", self._peer, exc)
        self.close()

    def close(self) -> None:
        """Drop the connection (done, broken, or shutting down)."""
        sock = self._sock
        if sock is None:
            return
        self._stop_reading()
        self._sock = None
        if self._unsent:
            self._loop.remove_writer(self._fd)
            self._unsent = b""
        if self._state == _CALLING:  # the client went away before the answer
            self._state = _ANSWERED
            if self._withdraw is not None:
                self._withdraw()
                self._withdraw = None
        sock.close()
        self._on_closed(self)

