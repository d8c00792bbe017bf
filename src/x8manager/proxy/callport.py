"""The call port (5001): one message per connection, forwarded to the M4, answered, closed.

Each connection is a non-blocking socket driven by event-loop callbacks: no task, no
transport, no stream objects, one timer handle (the M4's reply deadline). Thousands of short
connections a second made asyncio's per-connection machinery the proxy's main cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any, Final

import msgpack

from x8manager.proxy.link import LinkDown
from x8manager.rpc.framing import (
    Frame,
    InvalidMessage,
    Notification,
    Request,
    msgid_span,
    pack_raw_compat,
    parse_message,
    replace_msgid,
)

if TYPE_CHECKING:
    from x8manager.proxy.core import M4Proxy

__all__ = ["CLIENT_SEND_TIMEOUT", "DRAIN_TIMEOUT", "MAX_CLIENT_MESSAGE", "CallConnection", "CallPort"]

log = logging.getLogger("x8manager.proxy.core")

# A call-port client gets this long to send its one message (the original waits forever).
CLIENT_SEND_TIMEOUT: Final = 30.0
# After answering, the proxy half-closes and waits this long for the client to close too.
DRAIN_TIMEOUT: Final = 1.0
# The biggest message the call port reads; larger ones cannot reach the M4 in any case.
MAX_CLIENT_MESSAGE: Final = 64 * 1024

# The call port takes up to this many waiting connections per wake-up.
ACCEPT_BATCH: Final = 64
READ_CHUNK: Final = 64 * 1024
# Send deadlines and close waits are checked this often (so they hold to within this).
SWEEP_INTERVAL: Final = 0.25

# Connection states.
_READING: Final = 0  # waiting for the one message
_CALLING: Final = 1  # message taken, the answer is not known yet
_ANSWERED: Final = 2  # answer (or nothing) sent, half-closed, waiting for the client to close

_UNPACK_OPTIONS: Final[dict[str, Any]] = {
    "raw": False, "strict_map_key": False, "unicode_errors": "surrogateescape"}


class _Incomplete(Exception):
    """The bytes so far are the start of a message, not all of it."""


def _first_object(data: bytes) -> tuple[Any, bytes]:
    """The first msgpack object of *data* and its exact bytes.

    Raises :class:`_Incomplete` if *data* ends inside it, :class:`InvalidMessage` if it is not
    msgpack, or any decoding error of an object msgpack can skip but not build.
    """
    if len(data) <= MAX_CLIENT_MESSAGE:
        try:
            return msgpack.unpackb(data, **_UNPACK_OPTIONS), data
        except msgpack.ExtraData as extra:  # bytes pipelined behind the message: ignored
            return extra.unpacked, data[: len(data) - len(extra.extra)]
        except Exception:  # incomplete, not msgpack, or not buildable: tell them apart below
            pass
    unpacker = msgpack.Unpacker(max_buffer_size=MAX_CLIENT_MESSAGE, strict_map_key=False)
    try:
        unpacker.feed(data)
        unpacker.skip()
    except msgpack.OutOfData:
        raise _Incomplete from None
    except msgpack.BufferFull:
        raise InvalidMessage(f"message larger than {MAX_CLIENT_MESSAGE} bytes") from None
    except Exception as exc:
        raise InvalidMessage(f"not msgpack: {exc}") from None
    raw = data[: unpacker.tell()]
    return msgpack.unpackb(raw, **_UNPACK_OPTIONS), raw


def _msgid_bytes(raw: bytes) -> bytes:
    """The msgid bytes of a request-shaped message (for error replies to invalid ones)."""
    try:
        start, end = msgid_span(raw)
    except InvalidMessage:
        return b"\x00"
    return raw[start:end]


def error_reply(msgid_bytes: bytes, text: str) -> bytes:
    """``[1, msgid, "text", nil]`` with the client's own msgid bytes and old-style raw text."""
    return b"\x94\x01" + msgid_bytes + pack_raw_compat(text) + b"\xc0"


class CallPort:
    """The call port's listening sockets, accepting on the event loop.

    Connections are plain non-blocking sockets watched with ``add_reader``: asyncio's
    transports cost a task, several futures and callbacks per connection, which at thousands
    of one-message connections a second was most of the proxy's CPU time. The client's send
    deadline and the close wait after the answer are checked by one sweep timer that runs only
    while connections are open, so a call costs one timer handle (the M4's reply deadline).
    """

    def __init__(self, proxy: M4Proxy, listeners: list[socket.socket]) -> None:
        self._proxy = proxy
        self._loop = proxy.loop
        self._listeners = listeners
        self.connections: set[CallConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        for listener in listeners:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ECONNABORTED, ...: the listener stays
                log.warning("call port: accept failed: %s", exc.strerror or exc)
                return
            try:
                # No TCP_NODELAY: the proxy writes one reply and then the end of stream, and
                # neither the first segment on a connection nor a FIN waits for Nagle.
                sock.setblocking(False)
                connection = CallConnection(self._proxy, self, sock, address)
            except OSError as exc:
                log.debug("call port: connection from %s lost at once: %s", address, exc)
                sock.close()
                continue
            self.connections.add(connection)
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
            # The client sends its message right after connecting, so it is usually here
            # already: taking it now saves a trip through the event loop.
            connection.readable()

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class CallConnection:
    """One call-port connection: read one message, forward it, answer, close.

    Bytes pipelined behind the message (read with it) are dropped, so they cause no RST. Bytes
    arriving later are a new call on a finished connection (e.g. msgpack-rpc-python's second
    call() on the same Client): they are answered with a reset, as the original proxy's close
    did, so that call fails at once instead of waiting for the client's own timeout. The reply
    and the end of stream go out in the same step, like the original's write-then-close.
    """

    def __init__(self, proxy: M4Proxy, port: CallPort, sock: socket.socket, peer: Any) -> None:
        self._proxy = proxy
        self._port = port
        self._loop = proxy.loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._peer = peer
        self._state = _READING
        self._received = b""
        self._deadline = self._loop.time() + CLIENT_SEND_TIMEOUT
        self._timer: asyncio.TimerHandle | None = None
        self._late_bytes = False  # bytes arrived after the message, before the answer
        self._client_done = False  # the client half-closed
        self._reading = True
        self._unsent = b""  # the part of the answer the socket did not take at once
        self._wire_msgid = -1
        self._client_msgid = b""
        self._method = ""
        self._loop.add_reader(self._fd, self.readable)

    # -- socket events ----------------------------------------------------------------------

    def readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._broken(exc)
            return
        if not data:
            self._eof()
        elif self._state == _READING:
            self._take(data)
        elif self._state == _CALLING:
            self._late_bytes = True
        else:
            self._reset()

    def _eof(self) -> None:
        self._client_done = True
        if self._state == _READING:
            log.debug("call port: %s closed before sending a message", self._peer)
            self._answer(None)
        elif self._state == _CALLING:
            # Half-closed after its message: the answer still goes out, then the close.
            self._stop_reading()
        else:
            self.close()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def check_deadline(self, now: float) -> None:
        """Called by the sweep: enforce the send deadline and the close wait."""
        if now < self._deadline:
            return
        if self._state == _READING:
            log.warning("call port: %s sent no complete message within %g s", self._peer,
                        CLIENT_SEND_TIMEOUT)
            self._answer(None)
        elif self._state == _ANSWERED:
            self.close()

    # -- reading the one message ------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        received = self._received + data if self._received else data
        try:
            value, raw = _first_object(received)
        except _Incomplete:
            self._received = received
            return
        except InvalidMessage as exc:
            log.warning("call port: refused message from %s: %s", self._peer, exc.reason)
            self._answer(None)
            return
        except Exception as exc:
            log.warning("call port: undecodable message from %s: %s", self._peer, exc)
            self._answer(None)
            return
        self._received = b""
        self._state = _CALLING
        try:
            message = parse_message(value)
        except InvalidMessage as exc:
            log.warning("call port: invalid message from %s: %s", self._peer, exc.reason)
            if exc.msgid is None:
                self._answer(None)
            else:
                self._answer(error_reply(_msgid_bytes(raw), f"invalid message: {exc.reason}"))
            return
        if isinstance(message, Request):
            self._call_m4(message, raw)
        elif isinstance(message, Notification):
            self._notify_m4(Frame(message, raw))
        else:
            log.warning("call port: %s sent a response; only requests and notifications are forwarded",
                        self._peer)
            self._answer(None)

    # -- to the M4 ---------------------------------------------------------------------------

    def _notify_m4(self, frame: Frame) -> None:
        proxy = self._proxy
        peer = self._peer
        if len(frame.raw) > proxy.config.max_message:
            log.warning("call port: notification %r from %s is %d bytes, over the M4 link limit "
                        "of %d; dropped", frame.message, peer, len(frame.raw), proxy.config.max_message)
        else:
            try:
                pending = proxy.link.send(frame.raw)
            except LinkDown as exc:
                log.warning("call port: notification from %s lost: %s", peer, exc)
            else:
                if pending is not None:
                    pending.add_done_callback(
                        lambda done: _log_lost(done, f"call port: notification from {peer} lost"))
        self._answer(None)

    def _call_m4(self, request: Request, raw: bytes) -> None:
        proxy = self._proxy
        config = proxy.config
        proxy.stats.calls += 1
        self._method = request.method
        pending = proxy.pending
        wire_msgid = pending.open_callback(self._m4_replied)
        wire, client_msgid = replace_msgid(raw, msgpack.packb(wire_msgid))
        if len(wire) > config.max_message >= len(raw):
            # Our id made it longer than the client's own message: a one-byte id fits.
            pending.close(wire_msgid)
            wire_msgid = pending.open_callback(self._m4_replied, compact=True)
            wire, _ = replace_msgid(raw, msgpack.packb(wire_msgid))
        self._wire_msgid, self._client_msgid = wire_msgid, client_msgid
        if len(wire) > config.max_message:
            pending.close(wire_msgid)
            log.warning("call port: %s from %s is %d bytes, over the M4 link limit of %d",
                        request.method, self._peer, len(wire), config.max_message)
            self._answer(error_reply(client_msgid, f"message too large for the M4 link: {len(wire)} "
                                                   f"bytes (limit {config.max_message})"))
            return
        try:
            written = proxy.link.send(wire)
        except LinkDown as exc:
            self._not_sent(exc)
            return
        if written is not None:
            written.add_done_callback(self._written)
        self._timer = self._loop.call_later(config.call_timeout, self._m4_timed_out)

    def _written(self, written: asyncio.Future[None]) -> None:
        if written.cancelled() or self._state != _CALLING:
            return
        exc = written.exception()
        if isinstance(exc, LinkDown):
            self._not_sent(exc)
        elif exc is not None:
            log.error("call port: %s from %s: writing to the M4 failed: %r", self._method, self._peer, exc)
            self._not_sent(LinkDown(str(exc)))

    def _not_sent(self, exc: LinkDown) -> None:
        log.warning("call port: %s from %s not sent: %s", self._method, self._peer, exc)
        self._proxy.pending.close(self._wire_msgid)
        self._answer(error_reply(self._client_msgid, str(exc)))

    def _m4_replied(self, reply: bytes) -> None:
        """The M4's reply (called from the link's data handler; the pending entry is gone)."""
        if self._state != _CALLING:  # pragma: no cover - answered calls leave the pending table
            return
        try:
            restored, _ = replace_msgid(reply, self._client_msgid)
        except InvalidMessage as exc:  # pragma: no cover - the decoder only passes valid replies
            log.error("call port: M4 reply to %s unusable: %s", self._method, exc)
            self._answer(None)
            return
        self._answer(restored)

    def _m4_timed_out(self) -> None:
        self._timer = None
        proxy = self._proxy
        proxy.pending.close(self._wire_msgid)  # a late reply finds nobody waiting and is dropped
        proxy.stats.call_timeouts += 1
        timeout = proxy.config.call_timeout
        log.info("call port: no reply from the M4 to %s within %g s", self._method, timeout)
        if proxy.config.timeout_error_reply:
            self._answer(error_reply(self._client_msgid, f"no reply from the M4 within {timeout:g} s"))
        else:
            self._answer(None)

    # -- answering and closing -------------------------------------------------------------

    def _answer(self, reply: bytes | None) -> None:
        """Send *reply* (if any) and the end of stream together, then wait for the client's close."""
        if self._state == _ANSWERED:
            return
        self._state = _ANSWERED
        self._received = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock = self._sock
        if sock is None:
            return  # the client went away meanwhile
        if reply:
            try:
                sent = sock.send(reply)
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
            sent = sock.send(self._unsent)
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
        """The answer is out: end of stream, then the client's close (or a reset)."""
        sock = self._sock
        assert sock is not None
        if self._client_done:
            self.close()
            return
        if self._late_bytes:
            self._reset()
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._broken(exc)
            return
        self._deadline = self._loop.time() + DRAIN_TIMEOUT

    def _broken(self, exc: OSError) -> None:
        log.debug("call connection from %s broke: %s", self._peer, exc)
        self.close()

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0) instead of FIN."""
        if self._sock is None:
            return
        self._proxy.stats.reset_after_answer += 1
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        """Drop the connection (done, broken, or shutting down)."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._stop_reading()
        if self._unsent:
            self._loop.remove_writer(self._fd)
            self._unsent = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state == _CALLING:  # the client went away before the answer
            self._state = _ANSWERED
            self._proxy.pending.close(self._wire_msgid)
        sock.close()
        self._port.connections.discard(self)


def _log_lost(done: asyncio.Future[None], what: str) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("%s: %s", what, done.exception())
