"""msgpack-RPC messages as typed records: checking, validating raw bytes, encoding.

- :func:`parse_message` checks the request/response/notification shape of a decoded object;
- :func:`validate_message` does the same for the raw bytes of exactly one object and keeps those
  bytes, because the proxy forwards what a client sent verbatim (never re-encoded);
- :func:`pack_message` and friends encode with modern msgpack.
"""

from __future__ import annotations

import enum
import reprlib
from dataclasses import dataclass
from typing import Any

import msgpack

from x8manager.rpc.framing.headers import nesting_exceeds
from x8manager.rpc.framing.options import MAX_LOGGED_BYTES, MAX_NESTING, unpack_options

__all__ = [
    "DecodedObject",
    "Frame",
    "InvalidMessage",
    "Message",
    "MessageType",
    "Notification",
    "Request",
    "Response",
    "method_name",
    "pack_message",
    "pack_notification",
    "pack_request",
    "pack_response",
    "parse_message",
    "shorten",
    "validate_message",
]

# Messages in log lines and error text: peer values are shortened, never walked to the bottom.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = MAX_LOGGED_BYTES
_REPR.maxother = MAX_LOGGED_BYTES


class MessageType(enum.IntEnum):
    """The first element of every msgpack-RPC message."""

    REQUEST = 0
    RESPONSE = 1
    NOTIFICATION = 2


class InvalidMessage(ValueError):
    """Bytes or an object that are not a well-formed msgpack-RPC message.

    ``msgid`` is set when the message was request-shaped enough to carry one, so the receiver
    can still answer with an error reply.
    """

    def __init__(self, reason: str, *, msgid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.msgid = msgid


@dataclass(frozen=True, slots=True, repr=False)
class Request:
    """``[0, msgid, method, params]``."""

    msgid: int
    method: str
    params: list[Any]

    def __repr__(self) -> str:
        return (f"Request(msgid={self.msgid}, method={_REPR.repr(self.method)}, "
                f"params={_REPR.repr(self.params)})")


@dataclass(frozen=True, slots=True, repr=False)
class Response:
    """``[1, msgid, error, result]``; ``error`` is ``None`` on success."""

    msgid: int
    error: Any
    result: Any

    def __repr__(self) -> str:
        return (f"Response(msgid={self.msgid}, error={_REPR.repr(self.error)}, "
                f"result={_REPR.repr(self.result)})")


@dataclass(frozen=True, slots=True, repr=False)
class Notification:
    """``[2, method, params]``."""

    method: str
    params: list[Any]

    def __repr__(self) -> str:
        return f"Notification(method={_REPR.repr(self.method)}, params={_REPR.repr(self.params)})"


Message = Request | Response | Notification


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed message together with the exact bytes it arrived as."""

    message: Message
    raw: bytes


@dataclass(frozen=True, slots=True)
class DecodedObject:
    """One top-level msgpack object cut out of a stream, with its exact bytes."""

    value: Any
    raw: bytes


def shorten(data: bytes | str) -> str:
    """Peer bytes (as hex) or text for a log line, cut to a readable length."""
    text = data.hex(" ") if isinstance(data, bytes) else data
    return text if len(text) <= 3 * MAX_LOGGED_BYTES else text[: 3 * MAX_LOGGED_BYTES] + "..."


def method_name(value: Any) -> str:
    """A method name as str: msgpack str (fixstr/str8/16/32) or bin are both accepted."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    raise InvalidMessage(f"method name must be a string, got {type(value).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_message(value: Any) -> Message:
    """Check the msgpack-RPC shape of a decoded object and return the typed message.

    Only :class:`InvalidMessage` comes out, whatever the object: a peer's value is checked at
    the top and described shortly, never walked recursively.
    """
    try:
        return _parse_message(value)
    except RecursionError:  # pragma: no cover - nothing above recurses; kept as the boundary
        raise InvalidMessage("message nested too deeply") from None


def _parse_message(value: Any) -> Message:
    # ``type(x) is int`` (not isinstance) also refuses bool; msgpack makes plain ints only.
    # The two usual shapes come first: this runs twice for every call through the proxy.
    if type(value) is list and len(value) == 4 and type(value[1]) is int:
        kind = value[0]
        if kind == 1 and type(kind) is int:
            return Response(value[1], value[2], value[3])
        if kind == 0 and type(kind) is int and type(value[2]) is str and type(value[3]) is list:
            return Request(value[1], value[2], value[3])
    if not isinstance(value, list):
        raise InvalidMessage(f"a message is an array, got {type(value).__name__}")
    if not value:
        raise InvalidMessage("empty array")
    kind = value[0]
    if not _is_int(kind) or kind not in (0, 1, 2):
        raise InvalidMessage(f"unknown message type {_REPR.repr(kind)}")
    if kind == MessageType.NOTIFICATION:
        if len(value) != 3:
            raise InvalidMessage(f"a notification has 3 elements, got {len(value)}")
        if not isinstance(value[2], list):
            raise InvalidMessage(f"params must be an array, got {type(value[2]).__name__}")
        return Notification(method_name(value[1]), value[2])
    if len(value) != 4:
        raise InvalidMessage(f"a {MessageType(kind).name.lower()} has 4 elements, got {len(value)}")
    msgid = value[1]
    if not _is_int(msgid):
        raise InvalidMessage(f"msgid must be an integer, got {type(msgid).__name__}")
    if kind == MessageType.RESPONSE:
        return Response(msgid, value[2], value[3])
    try:
        method = method_name(value[2])
    except InvalidMessage as exc:
        raise InvalidMessage(exc.reason, msgid=msgid) from None
    if not isinstance(value[3], list):
        raise InvalidMessage(f"params must be an array, got {type(value[3]).__name__}", msgid=msgid)
    return Request(msgid, method, value[3])


def validate_message(raw: bytes) -> Frame:
    """Parse *raw*, which must be exactly one msgpack-RPC message, and keep its bytes."""
    if nesting_exceeds(raw):
        raise InvalidMessage(f"nested deeper than {MAX_NESTING} levels")
    unpacker = msgpack.Unpacker(**unpack_options(len(raw), buffer=len(raw)))
    try:
        unpacker.feed(raw)
        value = unpacker.unpack()
    except msgpack.OutOfData:
        raise InvalidMessage(f"truncated msgpack object ({len(raw)} bytes)") from None
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError (unhashable keys), ...
        raise InvalidMessage(f"not msgpack: {exc} (bytes {shorten(raw)})") from None
    consumed = unpacker.tell()
    if consumed != len(raw):
        raise InvalidMessage(f"{len(raw) - consumed} bytes after the message")
    return Frame(parse_message(value), bytes(raw))


def pack_message(message: Message) -> bytes:
    """Encode a message with modern msgpack (str as str, bytes as bin, floats as floats)."""
    if isinstance(message, Request):
        value: list[Any] = [0, message.msgid, message.method, list(message.params)]
    elif isinstance(message, Response):
        value = [1, message.msgid, message.error, message.result]
    else:
        value = [2, message.method, list(message.params)]
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def pack_request(msgid: int, method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
    return pack_message(Request(msgid, method, list(params)))


def pack_response(msgid: int, error: Any, result: Any) -> bytes:
    return pack_message(Response(msgid, error, result))


def pack_notification(method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
    return pack_message(Notification(method, list(params)))
