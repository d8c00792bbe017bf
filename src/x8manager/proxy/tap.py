"""The trace tap: every message on the M4 link, both ways, for ``x8-trace`` on a local socket.

The M4 port holds ``tap = None`` while nobody listens, and its hot paths do nothing but check
that attribute. The first client on the tap socket puts a :class:`Tap` there; the last one
leaving takes it away again. Each event goes to the clients as one JSON line (fields in
docs/architecture.md, "Trace tap"). A client that does not read fast enough never slows the
proxy: past :data:`MAX_UNSENT` bytes waiting for it, its events are dropped and counted, and the
next event it gets is preceded by ``{"type": "dropped", "count": N}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

import msgpack

from x8manager.common.net import unix_socket_listening
from x8manager.proxy.m4port import CALL_PORT, MONITOR, REGISTER_PORT, ROUTER_FRONT
from x8manager.rpc.framing import Frame, InvalidMessage, Notification, Request, Response, validate_message

__all__ = [
    "CALL_PORT",
    "LINUX_TO_M4",
    "M4_TO_LINUX",
    "MAX_UNSENT",
    "MONITOR",
    "REGISTER_PORT",
    "ROUTER_FRONT",
    "Tap",
    "TapServer",
]

log = logging.getLogger(__name__)

LINUX_TO_M4: Final = "Linux->M4"
M4_TO_LINUX: Final = "M4->Linux"
# The fronts, as events name them: CALL_PORT, REGISTER_PORT, ROUTER_FRONT, MONITOR (from m4port).

# Bytes of events a client has not read yet before its events are dropped (and counted).
MAX_UNSENT: Final = 256 * 1024
# Trace clients at once; more are refused (each costs an encode-and-write per event).
MAX_CLIENTS: Final = 8
# Calls in flight the tap remembers for the latency of their reply; the oldest go first.
MAX_REMEMBERED: Final = 4096
# Longest method name or error text an event carries.
MAX_TEXT: Final = 200

def _text(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


class _Remembered:
    """A call waiting for its reply: when it went out, what it was, who sent it."""

    __slots__ = ("app", "front", "method", "sent")

    def __init__(self, method: str, front: str, app: str, sent: float | None = None) -> None:
        self.method = method
        self.front = front
        self.app = app
        self.sent = time.monotonic() if sent is None else sent

    def latency_ms(self) -> float:
        return round((time.monotonic() - self.sent) * 1000.0, 3)


class _Calls:
    """Calls in flight by msgid, bounded (a call whose end the tap never sees is forgotten)."""

    def __init__(self) -> None:
        self._calls: dict[int, _Remembered] = {}

    def add(self, msgid: int, call: _Remembered) -> None:
        self._calls.pop(msgid, None)
        if len(self._calls) >= MAX_REMEMBERED:
            del self._calls[next(iter(self._calls))]
        self._calls[msgid] = call

    def pop(self, msgid: int) -> _Remembered | None:
        return self._calls.pop(msgid, None)


def _who(call: _Remembered | None) -> tuple[str, str]:
    return (call.front, call.app) if call is not None else ("", "")


def _parse(raw: bytes) -> Frame | None:
    try:
        return validate_message(raw)
    except InvalidMessage:
        return None


class Tap:
    """Turns what the M4 port sees into events for the clients; only exists while one listens."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit
        self._to_m4 = _Calls()  # Linux→M4 calls by wire msgid
        self._from_m4 = _Calls()  # the M4's calls by its own msgid

    def _event(self, direction: str, kind: str, who: tuple[str, str], method: str, size: int, /, *,
               msgid: int | None = None, **extra: Any) -> None:
        front, app = who
        event: dict[str, Any] = {"time": round(time.time(), 6), "dir": direction, "front": front,
                                 "app": app, "type": kind, "msgid": msgid, "method": method,
                                 "size": size}
        event.update(extra)
        try:
            self._emit(event)
        except Exception:  # a trace must never break the proxy
            log.exception("trace: event lost")

    # -- Linux → M4 ----------------------------------------------------------------------------

    def call_sent(self, wire: bytes, wire_msgid: int, caller_msgid: bytes, front: str, app: str) -> None:
        frame = _parse(wire)
        method = _text(frame.message.method) if frame and isinstance(frame.message, Request) else "?"
        self._to_m4.add(wire_msgid, _Remembered(method, front, app))
        try:
            caller: int | None = msgpack.unpackb(caller_msgid)
        except Exception:
            caller = None
        self._event(LINUX_TO_M4, "request", (front, app), method, len(wire), msgid=wire_msgid,
                    caller_msgid=caller)

    def call_failed(self, raw: bytes, front: str, app: str, reason: str) -> None:
        """A call refused before anything reached the M4 (too large, link down)."""
        frame = _parse(raw)
        method = _text(frame.message.method) if frame and isinstance(frame.message, Request) else "?"
        self._event(LINUX_TO_M4, "error", (front, app), method, len(raw), error=_text(reason))

    def call_ended(self, wire_msgid: int, reason: str) -> None:
        """A call that ended without the M4's reply (timed out, not written, withdrawn)."""
        call = self._to_m4.pop(wire_msgid)
        if call is not None:
            self._event(M4_TO_LINUX, "error", (call.front, call.app), call.method, 0, msgid=wire_msgid,
                        latency_ms=call.latency_ms(), error=_text(reason))

    def notification_sent(self, raw: bytes, front: str, app: str, error: str | None = None) -> None:
        """A notification to the M4 from *front* (*app*)."""
        frame = _parse(raw)
        method = _text(frame.message.method) if frame and isinstance(frame.message, Notification) else "?"
        extra: dict[str, Any] = {"error": error} if error else {}
        self._event(LINUX_TO_M4, "notification", (front, app), method, len(raw), **extra)

    def reply_to_m4(self, raw: bytes) -> None:
        frame = _parse(raw)
        if frame is None or not isinstance(frame.message, Response):
            return
        response = frame.message
        call = self._from_m4.pop(response.msgid)
        extra: dict[str, Any] = {}
        if call is not None:
            extra["latency_ms"] = call.latency_ms()
        if response.error is not None:
            extra["error"] = _text(response.error)
        self._event(LINUX_TO_M4, "response", _who(call),
                    call.method if call else "?", len(raw), msgid=response.msgid, **extra)

    # -- M4 → Linux ----------------------------------------------------------------------------

    def reply_from_m4(self, frame: Frame, message: Response) -> None:
        """The M4's reply to a Linux caller (or to nobody: late, unsolicited)."""
        call = self._to_m4.pop(message.msgid)
        extra: dict[str, Any] = {}
        if call is None:
            extra["error"] = "no caller waits for this reply (late or unsolicited)"
        else:
            extra["latency_ms"] = call.latency_ms()
            if message.error is not None:
                extra["error"] = _text(message.error)
        self._event(M4_TO_LINUX, "response", _who(call),
                    call.method if call else "?", len(frame.raw), msgid=message.msgid, **extra)

    def m4_request(self, frame: Frame, request: Request, front: str, app: str, *, held: bool = False) -> None:
        """The M4's call, handed to its provider (*held*: after waiting for one to come)."""
        method = _text(request.method)
        before = self._from_m4.pop(request.msgid) if held else None
        call = _Remembered(method, front, app, before.sent if before is not None else None)
        self._from_m4.add(request.msgid, call)
        extra: dict[str, Any] = {"held_ms": call.latency_ms()} if held else {}
        self._event(M4_TO_LINUX, "request", (front, app), method, len(frame.raw), msgid=request.msgid,
                    **extra)

    def m4_held(self, frame: Frame, request: Request, hold: float) -> None:
        """The M4's call for a method nobody provides yet, held for up to *hold* seconds."""
        method = _text(request.method)
        self._from_m4.add(request.msgid, _Remembered(method, "", ""))
        self._event(M4_TO_LINUX, "held", ("", ""), method, len(frame.raw), msgid=request.msgid,
                    error=f"no Linux program provides it yet: held up to {hold:g} s for one")

    def m4_call_ended(self, msgid: int, kind: str, reason: str) -> None:
        """The M4's call ends without a reply to the M4 (*kind* ``error`` or ``abandoned``)."""
        call = self._from_m4.pop(msgid)
        self._event(LINUX_TO_M4, kind, _who(call), call.method if call else "?", 0, msgid=msgid,
                    **({"latency_ms": call.latency_ms()} if call else {}), error=_text(reason))

    def m4_notification(self, frame: Frame, notification: Notification, front: str, app: str,
                        error: str | None = None) -> None:
        extra: dict[str, Any] = {"error": error} if error else {}
        self._event(M4_TO_LINUX, "notification", (front, app), _text(notification.method), len(frame.raw),
                    **extra)


class _TapClient(asyncio.Protocol):
    def __init__(self, server: TapServer) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server.joined(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.left(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        """Clients have nothing to say; what they send is ignored."""

    def send(self, line: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_UNSENT:
            self.dropped += 1
            return
        if self.dropped:
            transport.write(_encode({"time": round(time.time(), 6), "type": "dropped",
                                     "count": self.dropped}))
            self.dropped = 0
        transport.write(line)


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class Attachable(Protocol):
    """What the tap server attaches to: the M4 port's ``tap`` attribute."""

    tap: Tap | None


class TapServer:
    """The tap socket (root only, mode 0600): attaches a :class:`Tap` while clients listen."""

    def __init__(self, m4: Attachable) -> None:
        self._m4 = m4
        self._clients: set[_TapClient] = set()
        self._server: asyncio.AbstractServer | None = None
        self.path: str | None = None
        self.events = 0  # events sent (to at least one client); tests read it

    async def listen(self, path: str) -> None:
        """Listen on *path*; raises OSError (the caller decides how bad that is)."""
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(existing.st_mode):
                raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
            if unix_socket_listening(path):
                raise FileExistsError(errno.EADDRINUSE, "another m4-proxy serves a trace there", path)
            os.unlink(path)  # left behind by a proxy that is gone
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # never reachable by others, not even for an instant
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            sock.listen(MAX_CLIENTS)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _TapClient(self), sock=sock)
        self.path = path

    @property
    def clients(self) -> int:
        return len(self._clients)

    def joined(self, client: _TapClient) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            log.warning("trace: client refused, %d attached already", MAX_CLIENTS)
            assert client.transport is not None
            client.transport.abort()
            return
        self._clients.add(client)
        if self._m4.tap is None:
            self._m4.tap = Tap(self._send)
        log.info("trace: client attached (%d now)", len(self._clients))

    def left(self, client: _TapClient) -> None:
        if client not in self._clients:
            return
        self._clients.discard(client)
        if not self._clients:
            self._m4.tap = None  # the hot paths are back to one attribute check
        log.info("trace: client detached (%d left)", len(self._clients))

    def _send(self, event: dict[str, Any]) -> None:
        line = _encode(event)
        self.events += 1
        for client in list(self._clients):
            client.send(line)

    async def close(self) -> None:
        self._m4.tap = None
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            if client.transport is not None:
                client.transport.abort()
        self._clients.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None
