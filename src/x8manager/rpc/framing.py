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
import reprlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import msgpack

__all__ = [
    "M4_MAX_MESSAGE",
    "MAX_MSGID",
    "MAX_NESTING",
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
    "nesting_exceeds",
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

# Containers nested deeper than this are not a message, wherever framing decodes peer bytes.
# msgpack-c on the M4 stops at its MSGPACK_EMBED_STACK_SIZE (32) anyway, and Python code that
# walks a decoded value recursively (repr, ==, logging) fails near 1,000 levels.
MAX_NESTING: Final = 32

_CONTAINER_LEADS: Final = frozenset([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_MAP_LEADS: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_NOT_CONTAINER_BYTES: Final = bytes(lead for lead in range(256) if lead not in _CONTAINER_LEADS)

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
    completed by this chunk. Bytes that start no decodable object (``c1``, a container header
    beyond the limits, nesting deeper than :data:`MAX_NESTING`, ...) are dropped one at a time
    until parsing succeeds again, and a partial object that would outgrow ``max_buffer`` is
    given up the same way, so garbage can cost a few messages but never stalls the stream or
    grows memory.

    Clean input goes through msgpack's C unpacker. After an error the decoder switches to a
    resynchronising scanner (:class:`_Resync`) until its buffer is empty again: dropping one
    byte and re-parsing from the next is O(nesting) per byte with a fresh Unpacker, which made
    64 KiB of ``0x91`` cost seconds; the scanner remembers what it learnt about every offset,
    so resynchronising costs O(bytes).
    """

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._max_buffer = max(16, max_buffer)
        self._options = unpack_options(2 * self._max_buffer)
        self._whole_options = {key: value for key, value in self._options.items() if key != "max_buffer_size"}
        self._buffer = bytearray()  # bytes fed to the current unpacker and not yet returned
        self._base = 0  # unpacker.tell() at the start of self._buffer
        # Container lead bytes in self._buffer: a partial object cannot nest deeper than this,
        # and msgpack only complains at 1,024 levels, so past MAX_NESTING the scanner decides.
        self._container_bytes = 0
        self._unpacker = self._new_unpacker()
        self._resync: _Resync | None = None  # set while resynchronising
        self._dropped = 0  # bytes dropped by finished resynchronisations
        self._steps = 0

    @property
    def dropped_bytes(self) -> int:
        """Garbage bytes discarded while resynchronising."""
        return self._dropped + (self._resync.dropped if self._resync is not None else 0)

    @property
    def scan_steps(self) -> int:
        """Elements examined while resynchronising: the decoder's work on garbage, for tests."""
        return self._steps + (self._resync.steps if self._resync is not None else 0)

    def _new_unpacker(self) -> msgpack.Unpacker:
        # The Unpacker's own buffer holds our bytes plus one incoming chunk at most.
        return msgpack.Unpacker(**self._options)

    @property
    def pending(self) -> int:
        """Bytes held for an object that is not complete yet."""
        if self._resync is not None:
            return self._resync.pending
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial object (the peer restarted: its tail will never come)."""
        self._buffer.clear()
        self._base = 0
        self._container_bytes = 0
        self._unpacker = self._new_unpacker()
        self._finish_resync()

    def _finish_resync(self) -> None:
        if self._resync is not None:
            self._dropped += self._resync.dropped
            self._steps += self._resync.steps
            self._resync = None

    def feed(self, data: bytes) -> list[DecodedObject]:
        """Add *data*; return every top-level object it completes, in stream order."""
        if not self._buffer and self._resync is None and len(data) <= self._max_buffer:
            whole = self._whole_object(data)
            if whole is not None:
                return [whole]
        out: list[DecodedObject] = []
        view = memoryview(data)
        step = self._max_buffer
        for start in range(0, len(view), step):
            chunk = bytes(view[start : start + step])
            if self._resync is not None:
                self._resync_feed(chunk, out)
                continue
            self._buffer += chunk
            self._container_bytes += _count_containers(chunk)
            self._unpacker.feed(chunk)
            self._drain(out)
            if self._resync is None and self._container_bytes > MAX_NESTING:
                self._start_resync(out)  # the partial object may already nest too deep
            if self._resync is None and len(self._buffer) > self._max_buffer:
                # A partial object longer than we allow: it is garbage (or a peer we refuse).
                log.debug("stream decoder: %d bytes without a complete object, resynchronising",
                          len(self._buffer))
                self._start_resync(out)
        return out

    def _whole_object(self, data: bytes) -> DecodedObject | None:
        """*data* as one object if it is exactly one (how a link usually delivers a reply):
        decoded at once, without the streaming unpacker's bookkeeping. Anything else (part of
        an object, several, garbage) is None and takes the streaming path."""
        try:
            value = msgpack.unpackb(data, **self._whole_options)
        except Exception:  # the streaming path tells what it is
            return None
        if nesting_exceeds(data):
            return None
        return DecodedObject(value, data)

    def _drain(self, out: list[DecodedObject]) -> None:
        while self._buffer:
            try:
                value = self._unpacker.unpack()
            except msgpack.OutOfData:
                return
            except Exception as exc:  # FormatError, StackError, ValueError (limits), TypeError
                log.debug("stream decoder: undecodable bytes at %02x (%s), resynchronising",
                          self._buffer[0], exc)
                self._start_resync(out)
                return
            end = self._unpacker.tell() - self._base
            raw = bytes(self._buffer[:end])
            if nesting_exceeds(raw):
                log.debug("stream decoder: object nested deeper than %d, resynchronising", MAX_NESTING)
                self._start_resync(out)
                return
            if end == len(self._buffer):
                self._container_bytes = 0
            else:
                self._container_bytes -= _count_containers(raw)
            del self._buffer[:end]
            self._base += end
            out.append(DecodedObject(value, raw))

    def _start_resync(self, out: list[DecodedObject]) -> None:
        """Hand the buffered bytes to a scanner; the C unpacker's state is lost after an error."""
        self._resync = _Resync(self._buffer, self._max_buffer, self._options)
        self._buffer = bytearray()
        self._base = 0
        self._container_bytes = 0
        self._unpacker = self._new_unpacker()
        self._resync_feed(b"", out)

    def _resync_feed(self, chunk: bytes, out: list[DecodedObject]) -> None:
        resync = self._resync
        assert resync is not None
        resync.feed(chunk, out)
        if resync.pending == 0:  # in step again: back to the C unpacker
            self._finish_resync()

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


# --- resynchronisation ---------------------------------------------------------------------

# Outcomes of scanning from one start offset.
_OK: Final = 0  # a complete object
_FAIL: Final = 1  # no object can start here
_SHORT: Final = 2  # the start of an object: more bytes needed

# Header kinds by lead byte (see _header).
_LEAF, _LEAF_LEN, _ARRAY, _ARRAY_LEN, _BAD = range(5)


def _lead_table() -> list[tuple[int, int, int]]:
    """Per lead byte: (kind, a, b).

    ``_LEAF``: a = total size; ``_LEAF_LEN``: a = length field bytes, b = bytes between the
    length and the payload (ext's type); ``_ARRAY``: a = children (a map's are 2 per pair);
    ``_ARRAY_LEN``: a = count field bytes, b = children per count; ``_BAD``: c1.
    """
    table = [(_BAD, 0, 0)] * 256
    for lead in [*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3]:
        table[lead] = (_LEAF, 1, 0)
    for lead in range(0xA0, 0xC0):
        table[lead] = (_LEAF, 1 + (lead & 0x1F), 0)
    for lead in range(0x80, 0x90):
        table[lead] = (_ARRAY, 2 * (lead & 0x0F), 0)
    for lead in range(0x90, 0xA0):
        table[lead] = (_ARRAY, lead & 0x0F, 0)
    fixed = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5,
             0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
    for lead, size in fixed.items():
        table[lead] = (_LEAF, size, 0)
    lengths = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
               0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
    for lead, (field, extra) in lengths.items():
        table[lead] = (_LEAF_LEN, field, extra)
    for lead, (field, per) in {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}.items():
        table[lead] = (_ARRAY_LEN, field, per)
    return table


_LEAD: Final = _lead_table()


def _header(buf: bytes | bytearray, pos: int, max_len: int, max_items: int) -> tuple[int, int, int]:
    """``(outcome, size, children)`` of the object header at *pos*.

    ``_OK``: *size* is a leaf's total size (children 0) or a container's header size;
    ``_SHORT``: the header itself is cut off; ``_FAIL``: not a valid start (c1, or a length
    or count beyond the limits).
    """
    kind, a, b = _LEAD[buf[pos]]
    if kind == _LEAF:
        return _OK, a, 0
    if kind == _ARRAY:
        return _OK, 1, a
    if kind == _BAD:
        return _FAIL, 0, 0
    if pos + 1 + a > len(buf):
        return _SHORT, 0, 0
    count = int.from_bytes(buf[pos + 1 : pos + 1 + a], "big")
    if kind == _LEAF_LEN:
        size = 1 + a + b + count
        return (_FAIL, 0, 0) if size > max_len else (_OK, size, 0)
    if count > max_items:
        return _FAIL, 0, 0
    return _OK, 1 + a, b * count


def _count_containers(data: bytes) -> int:
    """Bytes of *data* that could be container headers (an upper bound on its nesting)."""
    return len(data.translate(None, _NOT_CONTAINER_BYTES))


def nesting_exceeds(raw: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the first msgpack object in *raw* nests containers deeper than *limit*.

    Cheap for what RPC carries: a message with no more container-like bytes than *limit*
    cannot nest deeper, so only the others are walked (iteratively, never recursively).
    """
    if len(raw) <= limit or _count_containers(raw) <= limit:
        return False
    remaining: list[int] = []
    pos = 0
    while pos < len(raw):
        outcome, size, children = _header(raw, pos, len(raw), len(raw))
        if outcome != _OK:
            return False  # not msgpack: the decoder says so itself
        pos += size
        if children:
            remaining.append(children)
            if len(remaining) > limit:
                return True
            continue
        while remaining:
            remaining[-1] -= 1
            if remaining[-1]:
                break
            remaining.pop()
        else:
            return False
    return False


class _Resync:
    """A resumable msgpack scanner that finds the next decodable object in O(bytes).

    The stream decoder's rule stays "drop one byte, try again from the next"; what makes it
    linear is that an object's extent and validity depend only on the bytes from its first
    byte on, so what one attempt learns holds for every later attempt:

    - ``_ends``: where each container seen complete ends, so a later attempt that meets it as
      an element jumps over it;
    - ``_failed``: offsets where no object can start (a bad byte inside, too long, too deep,
      not buildable by msgpack); a container meeting one fails at once, and so does every
      container open around it;
    - the open containers of an attempt that ran out of bytes or nested too deep: the attempt
      one byte later usually starts at the first of them (``91 91 91 ...``) and just carries
      on with one level less; otherwise they are kept aside and taken up again when a later
      attempt reaches the first of them.

    Offsets are indexes into ``_buffer``; consumed bytes are cut off from time to time.
    """

    def __init__(self, buffered: bytearray, max_buffer: int, options: dict[str, Any]) -> None:
        self._buffer = buffered
        self._max_buffer = max_buffer
        self._max_items = min(int(options["max_array_len"]), int(options["max_map_len"]))
        self._head = 0  # where the current attempt starts
        self._cur = 0  # the next element of the current attempt
        # Open containers as [offset, children left, height so far, is a map, the pair being
        # read has an array or map as its key]; the height of a container is 1 + the greatest
        # height among its completed children (leaves count 0).
        self._stack: deque[list[int]] = deque()
        self._aside: deque[list[int]] = deque()  # open containers of an earlier attempt
        self._aside_cur = 0
        self._excess = 0  # levels the current attempt nests beyond MAX_NESTING
        # Upper bounds on how deep the open containers reach, counted from the first of them
        # (index + height, maximised), so that taking the aside ones up costs O(1) unless the
        # bound says the limit might be passed.
        self._reach = MAX_NESTING
        self._aside_reach = MAX_NESTING
        self._ends: dict[int, tuple[int, int]] = {}  # container offset -> (end, height)
        self._failed: set[int] = set()
        self.dropped = 0
        self.steps = 0

    @property
    def pending(self) -> int:
        return len(self._buffer) - self._head

    def feed(self, chunk: bytes, out: list[DecodedObject]) -> None:
        self._buffer += chunk
        while self._head < len(self._buffer):
            outcome = self._scan()
            if outcome == _OK:
                if self._emit(out):
                    continue
                outcome = _FAIL
            elif outcome == _SHORT:
                if self.pending <= self._max_buffer:
                    return  # wait for the rest
                log.debug("stream decoder: %d bytes without a complete object", self.pending)
            self._failed.add(self._head)
            self._next_start()
        if self._head > self._max_buffer:
            self._compact()

    def _emit(self, out: list[DecodedObject]) -> bool:
        raw = bytes(self._buffer[self._head : self._cur])
        try:
            value = msgpack.unpackb(raw, raw=False, strict_map_key=False,
                                    unicode_errors="surrogateescape")
        except Exception as exc:  # scanned fine but msgpack cannot build it (unhashable key, ...)
            log.debug("stream decoder: dropping byte %02x (%s)", raw[0], exc)
            return False
        out.append(DecodedObject(value, raw))
        self._head = self._cur
        if self._head > self._max_buffer:
            self._compact()
        return True

    def _next_start(self) -> None:
        """Drop the byte at the head: the next attempt starts one byte later."""
        stack = self._stack
        if stack and stack[0][0] == self._head:
            stack.popleft()
        self._head += 1
        self.dropped += 1
        if stack and stack[0][0] == self._head:
            self._excess -= 1
            return  # the first open element: same scan, one level less
        self._excess = 0
        if stack:
            self._aside, self._aside_cur = stack, self._cur
            self._aside_reach = self._reach - 1  # one level less without the dropped start
            self._stack = deque()
        self._cur = self._head
        aside = self._aside
        while aside and aside[0][0] < self._head:
            aside.popleft()

    def _fail_open(self) -> int:
        """An element failed: every container open around it fails too."""
        self._failed.update(entry[0] for entry in self._stack)
        self._stack.clear()
        return _FAIL

    def _scan(self) -> int:
        """Carry the current attempt on as far as the bytes go."""
        if self._excess > 0:
            return _FAIL  # still too deep from this start
        buf = self._buffer
        stack = self._stack
        ends = self._ends
        failed = self._failed
        aside = self._aside
        cur = self._cur
        steps = 0
        reach = MAX_NESTING  # bound on the open containers' reach when this returns
        try:
            while True:
                steps += 1
                height = 0  # of the element that ends at cur
                # A map whose key is an array or a map: msgpack fails as that pair completes.
                at_key = bool(stack) and stack[-1][3] and not stack[-1][1] % 2
                known = ends.get(cur)
                if known is not None:
                    if at_key:
                        stack[-1][4] = 1
                    height = known[1]
                    if len(stack) + height > MAX_NESTING:
                        self._excess = len(stack) + height - MAX_NESTING
                        reach = MAX_NESTING  # the element not taken does not count
                        return _FAIL
                    cur = known[0]
                elif cur in failed:
                    return self._fail_open()
                elif aside and aside[0][0] == cur:
                    if at_key:
                        stack[-1][4] = 1
                    base = len(stack)
                    stack.extend(aside)
                    cur = self._aside_cur
                    aside.clear()
                    if base + self._aside_reach > MAX_NESTING:  # maybe too deep: look exactly
                        reach = max(index + entry[2] for index, entry in enumerate(stack) if index >= base)
                        if reach > MAX_NESTING:
                            self._excess = reach - MAX_NESTING
                            return _FAIL
                    continue
                else:
                    if cur >= len(buf):
                        return _SHORT
                    lead = buf[cur]
                    if at_key and lead in _CONTAINER_LEADS:
                        stack[-1][4] = 1
                    outcome, size, children = _header(buf, cur, self._max_buffer, self._max_items)
                    if outcome == _SHORT:
                        return _SHORT
                    if outcome == _FAIL:
                        failed.add(cur)
                        return self._fail_open()
                    if children:
                        stack.append([cur, children, 1, lead in _MAP_LEADS, 0])
                        cur += size
                        if len(stack) > MAX_NESTING:
                            self._excess = 1
                            reach = len(stack)
                            return _FAIL  # too deep from this start; not for the ones inside
                        continue
                    if cur + size > len(buf):
                        return _SHORT
                    cur += size
                # An element ends at cur: close every container it completes.
                while stack:
                    top = stack[-1]
                    if height >= top[2]:
                        top[2] = height + 1
                    top[1] -= 1
                    if top[4] and not top[1] % 2:
                        return self._fail_open()  # unhashable key
                    if top[1]:
                        break
                    stack.pop()
                    height = top[2]
                    ends[top[0]] = (cur, height)
                else:
                    return _OK
        finally:
            self._cur = cur
            self._reach = max(reach, MAX_NESTING)
            self.steps += steps

    def _compact(self) -> None:
        """Cut off consumed bytes and forget what was learnt about them."""
        shift = self._head
        del self._buffer[:shift]
        self._head = 0
        self._cur -= shift
        self._aside_cur -= shift
        for entry in (*self._stack, *self._aside):
            entry[0] -= shift
        self._ends = {start - shift: (end - shift, height)
                      for start, (end, height) in self._ends.items() if start >= shift}
        self._failed = {start - shift for start in self._failed if start >= shift}


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
    if len(raw) > 3 and raw[0] == 0x94 and raw[1] <= 0x7F:  # [fixint type, msgid, ...]: the usual
        lead = raw[2]
        size = 1 if lead <= 0x7F else _INT_SIZE.get(lead)
        if size is not None and 2 + size <= len(raw):
            return 2, 2 + size
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
    the connection is closed (as arduino-router does). One streaming unpacker and one buffer
    compacted once per chunk: a chunk holding thousands of small messages costs O(bytes).
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(limit, 16)
        bound = self._limit
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, unicode_errors="surrogateescape",
            max_buffer_size=2 * bound + 65536, max_bin_len=bound, max_str_len=bound,
            max_ext_len=bound, max_array_len=bound, max_map_len=bound)
        self._buffer = bytearray()  # bytes fed and not yet returned as objects
        self._base = 0  # unpacker.tell() at the start of _buffer

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[DecodedObject]:
        """Objects completed by *data*; raises :class:`InvalidMessage` on bad bytes."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise InvalidMessage(f"message larger than {self._limit} bytes") from None
        self._buffer += data
        out: list[DecodedObject] = []
        start = 0
        while start < len(self._buffer):
            try:
                value = self._unpacker.unpack()
            except msgpack.OutOfData:
                break
            except Exception as exc:  # FormatError, StackError, ValueError (limits), TypeError
                raise InvalidMessage(f"not msgpack: {exc}") from None
            end = self._unpacker.tell() - self._base
            out.append(DecodedObject(value, bytes(self._buffer[start:end])))
            start = end
        del self._buffer[:start]
        self._base += start
        declared = _declared_length(bytes(self._buffer[:5]))
        if declared is not None and declared > self._limit:
            raise InvalidMessage(f"message announces {declared} bytes or elements, over the limit of "
                                 f"{self._limit}")
        if len(self._buffer) > self._limit:
            raise InvalidMessage(f"message larger than {self._limit} bytes")
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
