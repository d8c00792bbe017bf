"""MessagePack-RPC framing, independent of any connection.

Everything here works on bytes and parsed objects only, so the proxy, the client library, the
virtual M4 and the tests share one definition of what a valid message is:

- :func:`parse_message` checks the request/response/notification shape of a decoded object;
- :func:`validate_message` does the same for the raw bytes of exactly one object and keeps those
  bytes, because the proxy forwards what a client sent verbatim (never re-encoded);
- :class:`StreamDecoder` cuts a byte stream (the M4 link, a TCP connection) into top-level
  objects with their exact raw bytes, skips non-array objects (raw ``RPC.print`` text) and
  resynchronises on garbage;
- :func:`msgid_span` / :func:`replace_msgid` rewrite the msgid of a raw request or response
  without touching any other byte (proxy-assigned ids on the M4 wire);
- :func:`go_pack_int` / :func:`pack_raw_compat` reproduce the original Go proxy's encodings where
  clients can observe them (the ``register`` reply ``94 01 <msgid> c0 a0``).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Final

import msgpack

__all__ = [
    "M4_MAX_MESSAGE",
    "MAX_MSGID",
    "DecodedObject",
    "Frame",
    "Incomplete",
    "InvalidMessage",
    "Message",
    "MessageType",
    "Notification",
    "ObjectCutter",
    "Request",
    "Response",
    "StreamDecoder",
    "first_object",
    "go_pack_int",
    "method_name",
    "msgid_bytes_of",
    "msgid_span",
    "pack_message",
    "pack_notification",
    "pack_raw_compat",
    "pack_request",
    "pack_response",
    "parse_message",
    "raw_error_reply",
    "replace_msgid",
    "unpack_options",
    "validate_message",
]

log = logging.getLogger(__name__)

# One write() to /dev/x8h7_ui becomes one 256-byte SPI frame: 4 bytes of frame header and 4 of
# subpacket header leave 248 bytes; anything longer is silently dropped by the driver.
M4_MAX_MESSAGE: Final = 248

# rpclib on the M4 reads msgids as uint32 (call_t/response_type), so that is the id space.
MAX_MSGID: Final = 2**32 - 1

# Bound on what a stream decoder holds while waiting for the end of an object. The M4 link
# carries at most ~496 bytes per RPMsg message and TCP peers are not trusted with more.
DEFAULT_MAX_BUFFER: Final = 64 * 1024

# Peer text embedded in log lines and error messages is cut to this many bytes.
MAX_LOGGED_BYTES: Final = 64


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


@dataclass(frozen=True, slots=True)
class Request:
    """``[0, msgid, method, params]``."""

    msgid: int
    method: str
    params: list[Any]


@dataclass(frozen=True, slots=True)
class Response:
    """``[1, msgid, error, result]``; ``error`` is ``None`` on success."""

    msgid: int
    error: Any
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    """``[2, method, params]``."""

    method: str
    params: list[Any]


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


def unpack_options(max_buffer: int = DEFAULT_MAX_BUFFER) -> dict[str, Any]:
    """Unpacker settings for untrusted peers.

    str stays str and bin stays bytes; invalid UTF-8 in a str is kept (surrogateescape) rather
    than rejected, because a method name or payload from the M4 is not ours to refuse.
    Container lengths are bounded by the buffer so a stray array header cannot swallow the
    stream for long.
    """
    limit = max(16, max_buffer)
    return {
        "raw": False,
        "strict_map_key": False,
        "unicode_errors": "surrogateescape",
        "max_buffer_size": limit,
        "max_array_len": min(limit, 4096),
        "max_map_len": min(limit, 4096),
    }


def _shorten(data: bytes | str) -> str:
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
    """Check the msgpack-RPC shape of a decoded object and return the typed message."""
    if not isinstance(value, list):
        raise InvalidMessage(f"a message is an array, got {type(value).__name__}")
    if not value:
        raise InvalidMessage("empty array")
    kind = value[0]
    if not _is_int(kind) or kind not in (0, 1, 2):
        raise InvalidMessage(f"unknown message type {_shorten(repr(kind))}")
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
    unpacker = msgpack.Unpacker(**unpack_options(max(len(raw), 16)))
    try:
        unpacker.feed(raw)
        value = unpacker.unpack()
    except msgpack.OutOfData:
        raise InvalidMessage(f"truncated msgpack object ({len(raw)} bytes)") from None
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError (unhashable keys), ...
        raise InvalidMessage(f"not msgpack: {exc} (bytes {_shorten(raw)})") from None
    consumed = unpacker.tell()
    if consumed != len(raw):
        raise InvalidMessage(f"{len(raw) - consumed} bytes after the message")
    return Frame(parse_message(value), bytes(raw))


class StreamDecoder:
    """Cut a byte stream into top-level msgpack objects, each with its exact raw bytes.

    Feed arbitrary chunks (a message may be split anywhere); :meth:`feed` returns the objects
    completed by this chunk. Bytes msgpack rejects (``c1``, a container header beyond the
    limits, ...) are dropped one at a time until parsing succeeds again, and a partial object
    that would outgrow ``max_buffer`` is given up the same way, so garbage can cost a few
    messages but never stalls the stream or grows memory.
    """

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._max_buffer = max(16, max_buffer)
        self._buffer = bytearray()  # bytes fed to the current unpacker and not yet returned
        self._base = 0  # unpacker.tell() at the start of self._buffer
        self._unpacker = self._new_unpacker()
        self.dropped_bytes = 0  # garbage bytes discarded while resynchronising

    def _new_unpacker(self) -> msgpack.Unpacker:
        # The Unpacker's own buffer holds our bytes plus one incoming chunk at most.
        return msgpack.Unpacker(**unpack_options(2 * self._max_buffer))

    @property
    def pending(self) -> int:
        """Bytes held for an object that is not complete yet."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial object (the peer restarted: its tail will never come)."""
        self._buffer.clear()
        self._base = 0
        self._unpacker = self._new_unpacker()

    def _drop_head(self, count: int) -> None:
        """Discard *count* leading bytes and re-parse the rest with a fresh Unpacker.

        msgpack's documentation: after any error other than OutOfData the Unpacker cannot be
        reused, so resynchronising means a new one.
        """
        del self._buffer[:count]
        self.dropped_bytes += count
        self._base = 0
        self._unpacker = self._new_unpacker()
        self._unpacker.feed(bytes(self._buffer))

    def feed(self, data: bytes) -> list[DecodedObject]:
        """Add *data*; return every top-level object it completes, in stream order."""
        out: list[DecodedObject] = []
        view = memoryview(data)
        step = self._max_buffer
        for start in range(0, len(view), step):
            chunk = bytes(view[start : start + step])
            self._buffer += chunk
            self._unpacker.feed(chunk)
            self._drain(out)
            overflow = len(self._buffer) - self._max_buffer
            if overflow > 0:
                # A partial object longer than we allow: it is garbage (or a peer we refuse).
                log.debug("stream decoder: %d bytes without a complete object, resynchronising",
                          len(self._buffer))
                self._drop_head(1)
                self._drain(out)
                while len(self._buffer) > self._max_buffer:
                    self._drop_head(len(self._buffer) - self._max_buffer)
                    self._drain(out)
        return out

    def _drain(self, out: list[DecodedObject]) -> None:
        while self._buffer:
            try:
                value = self._unpacker.unpack()
            except msgpack.OutOfData:
                return
            except Exception as exc:  # FormatError, StackError, ValueError (limits), TypeError
                log.debug("stream decoder: dropping byte %02x (%s)", self._buffer[0], exc)
                self._drop_head(1)
                continue
            end = self._unpacker.tell() - self._base
            raw = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._base += end
            out.append(DecodedObject(value, raw))

    def feed_arrays(self, data: bytes) -> list[DecodedObject]:
        """Like :meth:`feed`, keeping arrays only: anything else is stray text, not RPC."""
        return [item for item in self.feed(data) if isinstance(item.value, list)]

    def feed_frames(self, data: bytes) -> list[Frame]:
        """Like :meth:`feed`, keeping well-formed msgpack-RPC messages only."""
        frames: list[Frame] = []
        for item in self.feed_arrays(data):
            try:
                frames.append(Frame(parse_message(item.value), item.raw))
            except InvalidMessage as exc:
                log.debug("stream decoder: skipping array that is not RPC (%s): %s",
                          exc.reason, _shorten(item.raw))
        return frames


# --- msgid rewriting -----------------------------------------------------------------------

def _skip_header(raw: bytes) -> int:
    """Offset of the first element of the array that *raw* starts with."""
    lead = raw[0]
    if 0x90 <= lead <= 0x9F:
        return 1
    if lead == 0xDC:
        return 3
    if lead == 0xDD:
        return 5
    raise InvalidMessage(f"not an array (first byte {lead:02x})")


def _object_end(raw: bytes, offset: int) -> int:
    unpacker = msgpack.Unpacker(**unpack_options(max(len(raw), 16)))
    unpacker.feed(raw[offset:])
    try:
        unpacker.skip()
    except Exception as exc:
        raise InvalidMessage(f"malformed message at byte {offset}: {exc}") from None
    consumed: int = unpacker.tell()
    return offset + consumed


# Total size of an integer by its first byte, beyond fixints: uint8..64, int8..64.
_INT_SIZE: Final = {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}


def _element_end(raw: bytes, offset: int) -> int:
    """End of the element at *offset*: integers directly (the hot path), others by msgpack."""
    if offset >= len(raw):
        raise InvalidMessage(f"message ends at byte {offset}, before its msgid")
    lead = raw[offset]
    size = 1 if lead <= 0x7F or lead >= 0xE0 else _INT_SIZE.get(lead)
    if size is None:
        return _object_end(raw, offset)
    if offset + size > len(raw):
        raise InvalidMessage(f"message ends inside the integer at byte {offset}")
    return offset + size


def msgid_span(raw: bytes) -> tuple[int, int]:
    """``(start, end)`` of the msgid's bytes in a raw request or response."""
    if not raw:
        raise InvalidMessage("empty message")
    msgid_start = _element_end(raw, _skip_header(raw))
    return msgid_start, _element_end(raw, msgid_start)


def replace_msgid(raw: bytes, encoded_msgid: bytes) -> tuple[bytes, bytes]:
    """Swap the msgid of a raw request/response; return ``(new_raw, old_msgid_bytes)``.

    Only the msgid bytes change, so everything else reaches the peer exactly as it was sent,
    and putting the old bytes back restores the original encoding (e.g. a client's ``cd``).
    """
    start, end = msgid_span(raw)
    return raw[:start] + encoded_msgid + raw[end:], raw[start:end]


# --- encoders ------------------------------------------------------------------------------

def go_pack_int(value: int) -> bytes:
    """An integer the way the Go proxy's ``PackInt`` writes it: the smallest *signed* form."""
    if -32 <= value <= 127:
        return value.to_bytes(1, "big", signed=True)
    if -(2**7) <= value < 2**7:
        return b"\xd0" + value.to_bytes(1, "big", signed=True)
    if -(2**15) <= value < 2**15:
        return b"\xd1" + value.to_bytes(2, "big", signed=True)
    if -(2**31) <= value < 2**31:
        return b"\xd2" + value.to_bytes(4, "big", signed=True)
    if -(2**63) <= value < 2**63:
        return b"\xd3" + value.to_bytes(8, "big", signed=True)
    return b"\xcf" + value.to_bytes(8, "big", signed=False)


def pack_raw_compat(text: str | bytes) -> bytes:
    """A string in the pre-2013 "raw" family (fixraw/``da``/``db``) the Go proxy emits.

    Old clients (msgpack-python 0.5.6 with ``encoding=None``) read these as bytes, exactly as
    they did from the original proxy.
    """
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    size = len(data)
    if size < 32:
        return bytes([0xA0 | size]) + data
    if size < 2**16:
        return b"\xda" + size.to_bytes(2, "big") + data
    return b"\xdb" + size.to_bytes(4, "big") + data


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


# --- cutting objects out of a peer's bytes (no resynchronisation) --------------------------

class Incomplete(Exception):
    """The bytes so far are the start of an object, not all of it."""


_CUT_UNPACK_OPTIONS: Final[dict[str, Any]] = {
    "raw": False, "strict_map_key": False, "unicode_errors": "surrogateescape"}


def first_object(data: bytes, limit: int) -> DecodedObject:
    """The first msgpack object of *data* and its exact bytes (bytes after it are ignored).

    For peers that send one message (the call port) or whose stream must stay in step (the
    router front): nothing is skipped. Raises :class:`Incomplete` if *data* ends inside the
    object, :class:`InvalidMessage` if it is not msgpack or would be larger than *limit*.
    """
    if len(data) <= limit:
        try:
            return DecodedObject(msgpack.unpackb(data, **_CUT_UNPACK_OPTIONS), data)
        except msgpack.ExtraData as extra:  # bytes pipelined behind the object
            return DecodedObject(extra.unpacked, data[: len(data) - len(extra.extra)])
        except Exception:  # incomplete, not msgpack, or not buildable: tell them apart below
            pass
    declared = _declared_length(data)
    if declared is not None and declared > limit:
        raise InvalidMessage(f"message announces {declared} bytes or elements, over the limit of {limit}")
    bound = max(limit, 16)
    # Length headers are checked against the limit as soon as they are read: a 100 MB bin
    # header is refused at once, not after 100 MB.
    unpacker = msgpack.Unpacker(max_buffer_size=bound + 1, strict_map_key=False, max_bin_len=bound,
                                max_str_len=bound, max_ext_len=bound, max_array_len=bound,
                                max_map_len=bound)
    try:
        unpacker.feed(data[: limit + 1])
        unpacker.skip()
    except msgpack.OutOfData:
        if len(data) > limit:
            raise InvalidMessage(f"message larger than {limit} bytes") from None
        raise Incomplete from None
    except msgpack.BufferFull:
        raise InvalidMessage(f"message larger than {limit} bytes") from None
    except Exception as exc:
        raise InvalidMessage(f"not msgpack: {exc}") from None
    raw = data[: unpacker.tell()]
    try:
        return DecodedObject(msgpack.unpackb(raw, **_CUT_UNPACK_OPTIONS), raw)
    except Exception as exc:  # skippable but not buildable (e.g. unhashable map keys, depth)
        raise InvalidMessage(f"undecodable msgpack: {exc}") from None


# First byte -> (offset, size) of the big-endian length of str/bin/ext/array/map 16 and 32.
_LENGTH_FIELDS: Final = {0xC5: (1, 2), 0xC6: (1, 4), 0xC8: (1, 2), 0xC9: (1, 4), 0xDA: (1, 2),
                         0xDB: (1, 4), 0xDC: (1, 2), 0xDD: (1, 4), 0xDE: (1, 2), 0xDF: (1, 4)}


def _declared_length(data: bytes) -> int | None:
    """The length an object's header announces (bytes, or elements of a container), if any:
    msgpack itself waits for all of it before checking its limits."""
    if not data or data[0] not in _LENGTH_FIELDS:
        return None
    offset, size = _LENGTH_FIELDS[data[0]]
    if len(data) < offset + size:
        return None
    return int.from_bytes(data[offset:offset + size], "big")


class ObjectCutter:
    """Cut a trusted-to-be-in-step stream into objects; the first bad byte ends the stream.

    Unlike :class:`StreamDecoder` nothing is skipped: a peer speaking msgpack-RPC on a
    persistent connection (the router front) that sends garbage is out of step for good, and
    the connection is closed (as arduino-router does).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = b""

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[DecodedObject]:
        """Objects completed by *data*; raises :class:`InvalidMessage` on bad bytes."""
        buffer = self._buffer + data if self._buffer else data
        out: list[DecodedObject] = []
        while buffer:
            try:
                item = first_object(buffer, self._limit)
            except Incomplete:
                break
            out.append(item)
            buffer = buffer[len(item.raw):]
        self._buffer = buffer
        return out


# --- error replies ---------------------------------------------------------------------------

def raw_error_reply(msgid_bytes: bytes, text: str) -> bytes:
    """``[1, msgid, "text", nil]`` with the peer's own msgid bytes and old-style raw text,
    as the original Go proxy answers."""
    return b"\x94\x01" + msgid_bytes + pack_raw_compat(text) + b"\xc0"


def msgid_bytes_of(raw: bytes) -> bytes:
    """The msgid bytes of a request-shaped message (for error replies to invalid ones)."""
    try:
        start, end = msgid_span(raw)
    except InvalidMessage:
        return b"\x00"
    return raw[start:end]
