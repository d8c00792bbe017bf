"""The router front: arduino-router's protocol, so ``arduino-router-bridge`` apps run unchanged.

Persistent connections on a UNIX socket (the Bridge's default ``/var/run/arduino-router.sock``)
and optionally TCP. Each connection may have many requests in flight; its request ids are its
own (the proxy gives every forwarded request an id of the receiving connection's, or the M4
link's), notifications go both ways. The router methods and errors are arduino-router's
(``internal/msgpackrouter``) and what ``arduino-router-bridge`` 0.5.1 expects of a router:

========================  ===============================================================
``$/register [name]``     ``true``; ``[1, "invalid params: ..."]``, ``[5, "route already exists: NAME"]``
``$/unregister [name]``   ``true``; ``[4, "route not registered by this client: NAME"]``
``$/reset []``            ``true`` (every route of the connection dropped)
``$/version []``          the proxy's version string
``$/setMaxMsgSize [n]``   ``true``: nothing over *n* bytes is sent to this connection any more
                          (n > 127; else ``[1, "invalid params: ..."]``); also as a notification
``$/cancelRequest [id]``  notification: the caller gave up on its request *id*
========================  ===============================================================

A type in an ``invalid params`` text is named as arduino-router names it: Go's ``%T`` of what
its msgpack decoder (vmihailenco/msgpack v5) makes of the wire type, e.g. ``int8`` for a
fixint, ``uint16``, ``float32``, ``[]uint8`` for bin, ``[]interface {}``, ``<nil>``.

After ``$/setMaxMsgSize n`` (the sketch-side RouterBridge sends its buffer size), what the
connection would be sent over *n* bytes is not: a request for a method it provides gets
``[6, "message size exceeds the limit of n bytes"]`` at once, a notification is dropped, and
a reply to its own call becomes that error.

A call of a method nobody on Linux provides goes to the M4. What the M4 link cannot carry
(over 248 bytes once the msgid is ours) is refused before anything is sent:
``[6, "message size exceeds the limit of 248 bytes"]``. The M4's rpclib answers errors as
strings, which a Bridge cannot read; they reach the caller as ``[code, text]``:

- "server could not find function": ``[2, "method NAME not available"]``, exactly what
  arduino-router answers when nobody provides a method: "nobody has it" on both boards;
- a wrong argument count: ``[253, rpclib's text]`` (the Bridge's MALFORMED_CALL_ERR);
- anything else (the handler threw): ``[255, rpclib's text]`` (GENERIC_ERR): "it failed".

A connection's routes drop when it ends; calls the M4 or others made to it get
``[3, "failed to send request: ..."]``.

Limits (a hostile or buggy client costs bounded memory, descriptors and log): 64 connections per
listener (the UNIX socket and TCP each have their own), 1 MiB per message, nesting deeper than
32 levels is malformed (the connection is closed, nothing forwarded), 256 requests in flight and
256 names (held or being registered) per connection, names of at most 256 bytes; every log line
a message can cause is rate-limited and shows names cut short.

The UNIX socket comes either from systemd (``m4-proxy.socket``, socket activation: the
descriptor named ``router``, or one bound to the ``--router-socket`` path), which then owns the
path, its owner, group and mode, and keeps it, the same inode, across restarts of the proxy
(a container that bind-mounted it reaches the next proxy); or, without the socket unit, the
proxy binds it itself (mode 0660, ``--router-socket-group``) and removes it when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import itertools
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, cast

import msgpack

from x8manager import __version__
from x8manager.common.net import unix_socket_listening
from x8manager.common.systemd import ListenFd, ListenFdsError, adopt_socket
from x8manager.proxy.link import StartupError
from x8manager.proxy.m4port import ROUTER_FRONT, M4CallFailed, M4Port, TooLarge
from x8manager.proxy.ratelimit import RateLimitedLog, shown
from x8manager.proxy.routing import (
    ERR_FAILED_TO_SEND,
    ERR_GENERIC,
    ERR_INVALID_PARAMS,
    ERR_METHOD_NOT_AVAILABLE,
    ERR_OVER_SIZE_LIMIT,
    ERR_ROUTE_EXISTS,
    ProviderDone,
    ProviderFailed,
    RouteExists,
    RoutingTable,
)
from x8manager.rpc.framing import (
    MAX_MSGID,
    MAX_NESTING,
    Frame,
    InvalidMessage,
    Notification,
    ObjectCutter,
    Request,
    Response,
    msgid_span,
    nesting_exceeds,
    pack_notification,
    pack_response,
    parse_message,
    replace_msgid,
    unpack_options,
    validate_message,
)

__all__ = ["MAX_ROUTER_MESSAGE", "SYSTEMD_SOCKET_NAME", "Listener", "RouterConnection", "RouterContext",
           "RouterFront", "go_type_of_param", "m4_error_for_bridge", "router_socket_from_systemd"]

log = logging.getLogger(__name__)

# Largest message a router client may send (the Bridge's own default cap on what it reads).
MAX_ROUTER_MESSAGE: Final = 1024 * 1024
# Router-front connections at once, per listener (the UNIX socket and TCP each); more are
# closed at once (logged, rate-limited). TCP clients cannot lock the socket's apps out.
MAX_ROUTER_CONNECTIONS: Final = 64
# Requests one connection may have in flight.
MAX_IN_FLIGHT: Final = 256
# Names one connection may hold or be registering at once, and the longest name (UTF-8 bytes).
MAX_ROUTES_PER_CONNECTION: Final = 256
MAX_NAME_BYTES: Final = 256
# $/setMaxMsgSize: the smallest size accepted is this plus one (as arduino-router).
MIN_MAX_MSG_SIZE: Final = 127
# Replies a client has not read yet, in bytes: past this the client is not read from; past
# the hard limit (a client that never reads) it is disconnected.
PAUSE_READING_AT: Final = 256 * 1024
DISCONNECT_AT: Final = 4 * 1024 * 1024
# A router-front call waits this long for the M4 or another client (the Bridge's default).
ROUTER_CALL_TIMEOUT: Final = 10.0
# FileDescriptorName= of m4-proxy.socket: the descriptor systemd passes for the router socket.
SYSTEMD_SOCKET_NAME: Final = "router"
# Bridge 0.5.1's error codes for a peer's handler (protocol.py).
PEER_MALFORMED_CALL: Final = 0xFD
PEER_GENERIC: Final = 0xFF


def _go_type_of_lead(lead: int, ext_type: int | None) -> str:
    """Go's ``%T`` of what vmihailenco/msgpack v5's DecodeInterface makes of a value starting *lead*."""
    if lead <= 0x7F or lead >= 0xE0:
        return "int8"  # positive and negative fixints
    if lead <= 0x8F or lead in (0xDE, 0xDF):
        return "map[string]interface {}"
    if lead <= 0x9F or lead in (0xDC, 0xDD):
        return "[]interface {}"
    if lead <= 0xBF or lead in (0xD9, 0xDA, 0xDB):
        return "string"
    named = {0xC0: "<nil>", 0xC2: "bool", 0xC3: "bool", 0xC4: "[]uint8", 0xC5: "[]uint8", 0xC6: "[]uint8",
             0xCA: "float32", 0xCB: "float64", 0xCC: "uint8", 0xCD: "uint16", 0xCE: "uint32",
             0xCF: "uint64", 0xD0: "int8", 0xD1: "int16", 0xD2: "int32", 0xD3: "int64"}
    if lead in named:
        return named[lead]
    # ext: only the timestamp (-1) is known to the Go decoder
    return "time.Time" if ext_type == -1 else f"ext {ext_type}"


def go_type_of_param(raw: bytes, index: int = 0) -> str:
    """The Go type name arduino-router reports for params[*index*] of the raw request or notification."""
    unpacker = msgpack.Unpacker(**unpack_options(max(len(raw), 16)))
    unpacker.feed(raw)
    try:
        length = unpacker.read_array_header()
        for _ in range(length - 1):  # type, (msgid,) method
            unpacker.skip()
        params = unpacker.read_array_header()
        if index >= params:
            return "<nil>"
        for _ in range(index):
            unpacker.skip()
        at = unpacker.tell()
    except Exception:  # pragma: no cover - the message was parsed already
        return "interface {}"
    lead = raw[at]
    ext_type = None
    ext_at = {0xD4: 1, 0xD5: 1, 0xD6: 1, 0xD7: 1, 0xD8: 1, 0xC7: 2, 0xC8: 3, 0xC9: 5}.get(lead)
    if ext_at is not None and at + ext_at < len(raw):
        ext_type = int.from_bytes(raw[at + ext_at:at + ext_at + 1], "big", signed=True)
    return _go_type_of_lead(lead, ext_type)


def m4_error_for_bridge(method: str, error: Any) -> list[Any]:
    """The M4's error object as ``[code, text]`` (see the module docstring)."""
    if isinstance(error, list) and len(error) >= 2 and isinstance(error[0], int):
        return error
    text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
    if "server could not find function" in text:
        return [ERR_METHOD_NOT_AVAILABLE, f"method {method} not available"]
    if "called with an invalid number of arguments" in text:
        return [PEER_MALFORMED_CALL, text]
    return [PEER_GENERIC, text]


def bridge_error(error: Any) -> list[Any]:
    """Any provider's error object as ``[code, text]`` (a legacy service answers strings)."""
    if isinstance(error, list) and len(error) >= 2 and isinstance(error[0], int):
        return error
    text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
    return [PEER_GENERIC, text]


def _too_large(limit: int) -> list[Any]:
    return [ERR_OVER_SIZE_LIMIT, f"message size exceeds the limit of {limit} bytes"]


@dataclass(frozen=True)
class RouterContext:
    """What a router connection depends on: the routing table, the M4, the timeout, the log."""

    table: RoutingTable
    m4: M4Port
    call_timeout: float = ROUTER_CALL_TIMEOUT
    limited_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))


@dataclass(eq=False)
class Listener:
    """One listener's connections (the UNIX socket's, or TCP's) and its own limit."""

    name: str
    limit: int = MAX_ROUTER_CONNECTIONS
    connections: set[RouterConnection] = field(default_factory=set)

    def admit(self, connection: RouterConnection) -> bool:
        if len(self.connections) >= self.limit:
            return False
        self.connections.add(connection)
        return True


@dataclass
class _Forwarded:
    """A request forwarded to this connection: the sender's msgid bytes, its callback, deadline."""

    caller_msgid: bytes
    done: ProviderDone
    timer: asyncio.TimerHandle


class RouterConnection(asyncio.Protocol):
    """One router-front client: its requests, the requests it serves, its routes."""

    def __init__(self, context: RouterContext, listener: Listener, number: int) -> None:
        self._context = context
        self._listener = listener
        self.label = f"router client {number}"
        self._transport: asyncio.Transport | None = None
        self._cutter = ObjectCutter(MAX_ROUTER_MESSAGE)
        self._calls: dict[int, Callable[[], None]] = {}  # its requests in flight: withdraw each
        self._served: dict[int, _Forwarded] = {}  # requests it serves, by the id we gave them
        self._next_id = 1
        self._reading_paused = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._registering = 0  # $/register dial-backs under way
        self.max_message: int | None = None  # $/setMaxMsgSize: nothing larger is sent to it
        # What goes to the client while the M4's messages from one read are handed out: sent
        # as one write when they all are (see M4Port.after_this_read).
        self._outbox: list[bytes] | None = None

    @property
    def connected(self) -> bool:
        return self in self._listener.connections

    # -- connection events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        stream = self._transport = cast(asyncio.Transport, transport)
        stream.set_write_buffer_limits(high=PAUSE_READING_AT)
        sock = stream.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError, AttributeError, struct.error):
                pid, uid, _ = struct.unpack("3i", sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
                self.label += f" (pid {pid}, uid {uid})"
        else:
            self.label += f" ({stream.get_extra_info('peername')})"
        if not self._listener.admit(self):
            self._context.limited_log.warning(
                "router-full", "router: %s refused: %d connections on the %s already", self.label,
                self._listener.limit, self._listener.name)
            stream.abort()
            return
        log.debug("router: %s connected", self.label)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected:
            return
        self._listener.connections.discard(self)
        context = self._context
        log.debug("router: %s disconnected%s", self.label, f" ({exc})" if exc else "")
        context.table.drop_provider(self)
        for withdraw in list(self._calls.values()):
            withdraw()
        self._calls.clear()
        served, self._served = self._served, {}
        for forwarded in served.values():
            forwarded.timer.cancel()
            forwarded.done(ProviderFailed(
                ERR_FAILED_TO_SEND, f"failed to send request: {self.label} disconnected"))
        for task in self._tasks:
            task.cancel()

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its requests until it does.
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            items = self._cutter.feed(data)
        except InvalidMessage as exc:
            self._malformed(exc.reason)
            return
        for item in items:
            if self._transport is None or self._transport.is_closing():
                return
            if nesting_exceeds(item.raw):
                self._malformed(f"nested deeper than {MAX_NESTING} levels")
                return
            try:
                message = parse_message(item.value)
            except InvalidMessage as exc:
                self._context.limited_log.warning(
                    "router-invalid", "router: %s sent an invalid message: %s", self.label, exc.reason)
                if exc.msgid is not None:
                    self._reply(exc.msgid, [ERR_GENERIC, f"invalid message: {exc.reason}"], None)
                continue
            frame = Frame(message, item.raw)
            if isinstance(message, Request):
                self._on_request(message, frame)
            elif isinstance(message, Notification):
                self._on_notification(message, frame)
            else:
                self._on_response(message, frame)

    def _malformed(self, reason: str) -> None:
        """Bytes that are not msgpack-RPC: the stream is out of step for good (as arduino-router)."""
        self._context.limited_log.warning(
            "router-garbage", "router: %s sent bytes that are not msgpack-RPC (%s): disconnected",
            self.label, reason)
        self.close()

    def _send(self, data: bytes) -> None:
        if self._outbox is not None:
            self._outbox.append(data)
        elif self._context.m4.after_this_read(self._send_outbox):
            self._outbox = [data]
        else:
            self._write(data)

    def _send_outbox(self) -> None:
        outbox, self._outbox = self._outbox, None
        if outbox:
            self._write(outbox[0] if len(outbox) == 1 else b"".join(outbox))

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > DISCONNECT_AT:
            self._context.limited_log.warning(
                "router-unread", "router: %s does not read its replies (%d bytes unread): disconnected",
                self.label, transport.get_write_buffer_size())
            transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def unsent(self) -> int:
        """Reply bytes the client has not read yet."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _fits(self, raw: bytes) -> bool:
        """Whether *raw* may be sent to this client ($/setMaxMsgSize)."""
        return self.max_message is None or len(raw) <= self.max_message

    # -- the client's requests ----------------------------------------------------------------

    def _reply(self, msgid: int, error: Any, result: Any) -> None:
        self._send(pack_response(msgid, error, result))

    def _reply_raw(self, msgid: int, raw: bytes) -> None:
        """A reply that came from a provider or the M4: sent if it fits, else the size error."""
        if self._fits(raw):
            self._send(raw)
        else:
            assert self.max_message is not None
            self._reply(msgid, _too_large(self.max_message), None)

    def _on_request(self, request: Request, frame: Frame) -> None:
        method, params, msgid = request.method, request.params, request.msgid
        if method.startswith("$/") and self._router_method(method, params, msgid, frame.raw):
            return
        if len(self._calls) >= MAX_IN_FLIGHT:
            self._reply(msgid, [ERR_GENERIC, f"too many requests in flight ({MAX_IN_FLIGHT})"], None)
            return
        previous = self._calls.pop(msgid, None)
        if previous is not None:  # the same id twice: the older one is given up (as the Go router)
            previous()
        if not 0 <= msgid <= MAX_MSGID:
            self._reply(msgid, [ERR_INVALID_PARAMS, f"invalid msgid {msgid}"], None)
            return
        self._forward(request, frame)

    def _start_call(self, request: Request, frame: Frame) -> None:
        method, msgid = request.method, request.msgid
        provider = self._context.table.provider_of(method)
        # In flight before the call starts: a provider may answer (or fail) at once.
        self._calls[msgid] = _not_started
        try:
            if provider is not None:
                withdraw = provider.call(frame, lambda result: self._provider_done(msgid, result),
                                         wait=self._context.call_timeout)
            else:
                withdraw = self._context.m4.call(
                    frame.raw, lambda result: self._m4_done(method, msgid, result),
                    timeout=self._context.call_timeout, front=ROUTER_FRONT, app=self.label)
        except M4CallFailed:
            self._calls.pop(msgid, None)
            raise
        if msgid in self._calls:
            self._calls[msgid] = withdraw

    def _forward(self, request: Request, frame: Frame) -> None:
        """Forward a request; the M4 link's refusals are answered at once."""
        msgid = request.msgid
        try:
            self._start_call(request, frame)
        except TooLarge as exc:
            self._reply(msgid, _too_large(exc.limit), None)
        except M4CallFailed as exc:
            self._reply(msgid, [ERR_FAILED_TO_SEND, f"failed to send request: {exc.reason}"], None)

    def _provider_done(self, msgid: int, result: Frame | ProviderFailed) -> None:
        if self._calls.pop(msgid, None) is None:
            return  # cancelled, or this client is gone
        if isinstance(result, ProviderFailed):
            self._reply(msgid, [result.code, result.text], None)
            return
        response = result.message
        assert isinstance(response, Response)
        if response.error is None:
            self._reply_raw(msgid, result.raw)
        else:
            self._reply(msgid, bridge_error(response.error), None)

    def _m4_done(self, method: str, msgid: int, result: bytes | M4CallFailed) -> None:
        if self._calls.pop(msgid, None) is None:
            return
        if isinstance(result, M4CallFailed):
            code = ERR_GENERIC if result.timed_out else ERR_FAILED_TO_SEND
            text = result.reason if result.timed_out else f"failed to send request: {result.reason}"
            self._reply(msgid, [code, text], None)
            return
        try:
            _, error_at = msgid_span(result)
        except InvalidMessage:  # pragma: no cover - the M4 port passes responses only
            error_at = -1
        if 0 <= error_at < len(result) and result[error_at] == 0xC0:
            self._reply_raw(msgid, result)  # no error: the M4's bytes as they came, with the caller's msgid
            return
        try:
            reply = validate_message(result).message
        except InvalidMessage:  # pragma: no cover - the M4 port passes responses only
            self._reply(msgid, [ERR_GENERIC, "unusable reply from the M4"], None)
            return
        assert isinstance(reply, Response)
        self._reply(msgid, m4_error_for_bridge(method, reply.error), None)

    # -- router methods -----------------------------------------------------------------------

    def _router_method(self, method: str, params: list[Any], msgid: int | None, raw: bytes) -> bool:
        """Handle ``$/...``; False if *method* is not one (it is routed like any other)."""
        if method in ("$/register", "$/unregister"):
            name = self._one_string(params, msgid, raw)
            if name is None:
                pass
            elif method == "$/register":
                self._register(name, msgid)
            elif self._context.table.remove_route(name, self):
                self._answer(msgid, None, True)
            else:
                self._answer(msgid, [ERR_GENERIC, f"route not registered by this client: {name}"], None)
        elif method == "$/reset":
            if params:
                self._answer(msgid, [ERR_INVALID_PARAMS, "invalid params: no params are expected"], None)
            else:
                self._context.table.drop_provider(self)
                self._answer(msgid, None, True)
        elif method == "$/version":
            self._answer(msgid, None, f"x8manager m4-proxy {__version__}")
        elif method == "$/setMaxMsgSize":
            self._set_max_message(params, msgid, raw)
        elif method == "$/cancelRequest":
            self._cancel(params)
            self._answer(msgid, None, True)
        else:
            return False
        return True

    def _answer(self, msgid: int | None, error: Any, result: Any) -> None:
        if msgid is not None:  # router methods may come as notifications: no answer then
            self._reply(msgid, error, result)

    def _one_param(self, params: list[Any], msgid: int | None) -> bool:
        if len(params) == 1:
            return True
        self._answer(msgid, [ERR_INVALID_PARAMS,
                             f"invalid params: only one param is expected, got {len(params)}"], None)
        return False

    def _one_string(self, params: list[Any], msgid: int | None, raw: bytes) -> str | None:
        if not self._one_param(params, msgid):
            return None
        if not isinstance(params[0], str):
            self._answer(msgid, [ERR_INVALID_PARAMS,
                                 f"invalid params: expected string, got {go_type_of_param(raw)}"], None)
            return None
        return params[0]

    def _set_max_message(self, params: list[Any], msgid: int | None, raw: bytes) -> None:
        if not self._one_param(params, msgid):
            return
        size = params[0]
        if not isinstance(size, int) or isinstance(size, bool):
            self._answer(msgid, [ERR_INVALID_PARAMS,
                                 f"invalid params: expected integer, got {go_type_of_param(raw)}"], None)
            return
        if size <= MIN_MAX_MSG_SIZE:
            self._answer(msgid, [ERR_INVALID_PARAMS,
                                 f"invalid params: max message size must be greater than {MIN_MAX_MSG_SIZE}, "
                                 f"got {size}"], None)
            return
        self.max_message = size
        log.debug("router: %s takes messages of at most %d bytes", self.label, size)
        self._answer(msgid, None, True)

    def _register(self, name: str, msgid: int | None) -> None:
        table = self._context.table
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > MAX_NAME_BYTES:
            self._refuse_registration(msgid, name, [
                ERR_INVALID_PARAMS, f"invalid params: a method name is at most {MAX_NAME_BYTES} bytes, "
                                    f"got {size}"])
            return
        if table.routes_of(self) + self._registering >= MAX_ROUTES_PER_CONNECTION:
            self._refuse_registration(msgid, name, [
                ERR_GENERIC, f"too many routes: a client provides at most {MAX_ROUTES_PER_CONNECTION} "
                             "methods"])
            return
        try:
            if table.add_route_now(name, self):  # no dial-back to wait for: answered in order, at once
                self._answer(msgid, None, True)
                return
        except RouteExists as exc:
            self._refuse_registration(msgid, name, [ERR_ROUTE_EXISTS, str(exc)], exc.holder)
            return
        self._registering += 1
        task = asyncio.get_running_loop().create_task(self._register_after_dial_back(name, msgid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _register_after_dial_back(self, name: str, msgid: int | None) -> None:
        try:
            await self._context.table.add_route(name, self)
        except RouteExists as exc:
            self._refuse_registration(msgid, name, [ERR_ROUTE_EXISTS, str(exc)], exc.holder)
            return
        except Exception as exc:  # every registration is answered, whatever happened
            log.exception("router: registering %s for %s failed", shown(name), self.label)
            self._answer(msgid, [ERR_GENERIC, f"cannot register: {exc}"], None)
            return
        finally:
            self._registering -= 1
        if not self.connected:  # gone while the table dialled back
            self._context.table.drop_provider(self)
            return
        self._answer(msgid, None, True)

    def _refuse_registration(self, msgid: int | None, name: str, error: list[Any], holder: str = "") -> None:
        self._context.limited_log.warning(
            "router-register-refused", "router: %s cannot provide %s: %s", self.label, shown(name),
            f"{holder} holds it" if holder else error[1])
        self._answer(msgid, error, None)

    def _cancel(self, params: list[Any]) -> None:
        if len(params) != 1 or not isinstance(params[0], int) or isinstance(params[0], bool):
            self._context.limited_log.warning(
                "router-cancel", "router: %s sent an invalid $/cancelRequest %s", self.label,
                shown(params[:1]))
            return
        withdraw = self._calls.pop(params[0], None)
        if withdraw is not None:
            withdraw()

    # -- notifications and responses from the client -----------------------------------------

    def _on_notification(self, notification: Notification, frame: Frame) -> None:
        method = notification.method
        if method.startswith("$/") and self._router_method(method, notification.params, None, frame.raw):
            return
        provider = self._context.table.provider_of(method)
        if provider is not None:
            provider.notify(frame)
        else:
            self._context.m4.notify(frame.raw, front=ROUTER_FRONT, app=self.label)

    def _on_response(self, response: Response, frame: Frame) -> None:
        forwarded = self._served.pop(response.msgid, None)
        if forwarded is None:
            self._context.limited_log.info(
                "router-unsolicited", "router: %s answered id %d, which nobody waits for", self.label,
                response.msgid)
            return
        forwarded.timer.cancel()
        try:
            restored, _ = replace_msgid(frame.raw, forwarded.caller_msgid)
        except InvalidMessage:  # pragma: no cover - parse_message passed it
            return
        forwarded.done(Frame(response, restored))

    # -- as a provider: requests and notifications for the names it holds ---------------------

    def call(self, frame: Frame, done: ProviderDone, *, wait: float) -> Callable[[], None]:
        if not self._fits(frame.raw):
            assert self.max_message is not None
            code, text = _too_large(self.max_message)
            done(ProviderFailed(code, text))
            return _not_started
        msgid = self._new_id()
        raw, caller_msgid = replace_msgid(frame.raw, _packb(msgid))
        loop = asyncio.get_running_loop()

        def timed_out() -> None:
            if self._served.pop(msgid, None) is not None:
                self._send(pack_notification("$/cancelRequest", [msgid]))
                done(ProviderFailed(ERR_GENERIC, f"no reply from {self.label} within {wait:g} s"))

        self._served[msgid] = _Forwarded(caller_msgid, done, loop.call_later(wait, timed_out))
        self._send(raw)

        def withdraw() -> None:
            forwarded = self._served.pop(msgid, None)
            if forwarded is not None:
                forwarded.timer.cancel()
                self._send(pack_notification("$/cancelRequest", [msgid]))

        return withdraw

    def notify(self, frame: Frame) -> None:
        if self._fits(frame.raw):
            self._send(frame.raw)
        else:
            self._context.limited_log.info(
                "router-too-large", "router: a notification of %d bytes for %s dropped: it takes at most %d",
                len(frame.raw), self.label, self.max_message)

    def _new_id(self) -> int:
        while self._next_id in self._served:
            self._next_id = (self._next_id + 1) & MAX_MSGID
        msgid = self._next_id
        self._next_id = (self._next_id + 1) & MAX_MSGID
        return msgid


def _not_started() -> None:
    """Withdrawing a call that is still being started (or was refused): nothing to undo."""


def _packb(value: int) -> bytes:
    packed: bytes = msgpack.packb(value)
    return packed


# --- listening -------------------------------------------------------------------------------

def unix_listener(path: str, *, mode: int, group: str | None) -> socket.socket:
    """The router socket at *path*: a stale socket there is replaced, anything else is an error."""
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(f"--router-socket {path}: {exc.strerror or exc}") from exc
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            raise StartupError(f"--router-socket {path}: exists and is not a socket")
        if unix_socket_listening(path):
            raise StartupError(f"--router-socket {path}: another router (arduino-router or m4-proxy) "
                               "is listening there")
        os.unlink(path)  # left behind by a router that is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if group:
            _chgrp(path, group)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
            # m4-proxy.service runs as the user m4-proxy, who may not create files in /run.
            hint = (" (m4-proxy runs unprivileged: the socket comes from m4-proxy.socket, `systemctl "
                    "enable --now m4-proxy.socket`; --router-socket '' turns the router front off)")
        raise StartupError(f"cannot listen on the router socket {path}: {exc.strerror or exc}{hint}") from exc
    return sock


def router_socket_from_systemd(passed: list[ListenFd],
                               path: str) -> tuple[socket.socket | None, list[ListenFd]]:
    """The router socket among the descriptors systemd passed, and the descriptors left over.

    The one named ``router`` (``FileDescriptorName=router``) is it, wherever it is bound;
    otherwise one bound to *path* (``/var/run`` and ``/run`` are the same place). The chosen
    one must be a listening AF_UNIX stream socket, else :class:`StartupError`.
    """
    named = [each for each in passed if each.name == SYSTEMD_SOCKET_NAME]
    if len(named) > 1:
        raise StartupError(f"systemd passed {len(named)} descriptors named {SYSTEMD_SOCKET_NAME!r} "
                           f"({', '.join(str(each.fd) for each in named)}); one router socket is expected")
    chosen = named[0] if named else next((each for each in passed if path and _bound_to(each, path)), None)
    if chosen is None:
        return None, passed
    try:
        sock = adopt_socket(chosen, family=socket.AF_UNIX, kind=socket.SOCK_STREAM)
    except ListenFdsError as exc:
        raise StartupError(f"the router socket: {exc} (check m4-proxy.socket: ListenStream=, "
                           f"FileDescriptorName={SYSTEMD_SOCKET_NAME})") from exc
    sock.setblocking(False)
    return sock, [each for each in passed if each is not chosen]


def _bound_to(passed: ListenFd, path: str) -> bool:
    """Whether *passed* is an AF_UNIX socket bound to *path* (looked at through a duplicate)."""
    try:
        probe = socket.socket(fileno=os.dup(passed.fd))
    except OSError:
        return False
    with probe:
        if probe.family != socket.AF_UNIX:
            return False
        name = probe.getsockname()
    return isinstance(name, str) and bool(name) and not name.startswith("\0") and _same_path(name, path)


def _same_path(first: str, second: str) -> bool:
    return os.path.realpath(first) == os.path.realpath(second)


def _chgrp(path: str, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning("router socket %s: no group %r on this system; only root can connect", path, group)
        return
    os.chown(path, -1, gid)


class RouterFront:
    """The router front's listeners and connections."""

    def __init__(self, table: RoutingTable, m4: M4Port) -> None:
        self.context = RouterContext(table, m4)
        self._servers: list[asyncio.Server] = []
        self._listeners: list[Listener] = []
        self._numbers: Iterator[int] = itertools.count(1)
        self.unix_path: str | None = None
        self.unix_from_systemd = False  # the socket is systemd's: never unlinked, chmod-ed or chown-ed
        self.tcp_address: tuple[str, int] | None = None

    @property
    def connections(self) -> set[RouterConnection]:
        """Every connected client, on every listener."""
        return {connection for listener in self._listeners for connection in listener.connections}

    def _factory(self, name: str) -> Callable[[], RouterConnection]:
        listener = Listener(name)
        self._listeners.append(listener)
        return lambda: RouterConnection(self.context, listener, next(self._numbers))

    async def listen_unix(self, path: str, *, mode: int = 0o660, group: str | None = None) -> None:
        """Bind the router socket at *path* (it is removed again by :meth:`close`)."""
        sock = unix_listener(path, mode=mode, group=group)
        await self._serve_unix(sock)
        self.unix_path = path
        log.info("router socket %s: bound by m4-proxy (mode %04o, group %s)", path, mode,
                 group or "root's")

    async def adopt_unix(self, sock: socket.socket, *, requested: str) -> None:
        """Serve the listening socket systemd passed; *requested* is ``--router-socket``."""
        path = sock.getsockname()
        await self._serve_unix(sock)
        self.unix_path = path if isinstance(path, str) and path else requested
        self.unix_from_systemd = True
        log.info("router socket %s: inherited from systemd (socket activation, descriptor %d); "
                 "its owner, group and mode are the socket unit's", self.unix_path, sock.fileno())
        if requested and not _same_path(self.unix_path, requested):
            log.warning("--router-socket %s: systemd passed the router socket %s, which is served "
                        "(m4-proxy.socket's ListenStream= decides the path)", requested, self.unix_path)

    async def _serve_unix(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {}
        if sys.version_info >= (3, 13) and isinstance(loop, asyncio.BaseEventLoop):
            # Python 3.13's asyncio removes the socket's path when the server closes; close()
            # decides that here (uvloop never removes it, nor takes the argument).
            options["cleanup_socket"] = False
        self._servers.append(await loop.create_unix_server(self._factory("socket"), sock=sock, **options))

    async def listen_tcp(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._factory("TCP listener"), host, port)
        except OSError as exc:
            raise StartupError(f"cannot listen for the router front on {host}:{port}: "
                               f"{exc.strerror or exc}") from exc
        self._servers.append(server)
        self.tcp_address = server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        # systemd's socket stays where it is: the next proxy gets the same one (same inode).
        if self.unix_path is not None and not self.unix_from_systemd:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
