"""The stream decoder: a byte stream (the M4 link, a TCP connection) cut into msgpack objects."""

from __future__ import annotations

import logging

import msgpack

from x8manager.rpc.framing.headers import SHORT, Fit, count_containers, fits_surely, nesting_exceeds
from x8manager.rpc.framing.messages import DecodedObject, Frame, InvalidMessage, parse_message, shorten
from x8manager.rpc.framing.options import DEFAULT_MAX_BUFFER, MAX_ITEMS, MAX_NESTING, unpack_options
from x8manager.rpc.framing.resync import Resync

__all__ = ["StreamDecoder"]

log = logging.getLogger("x8manager.rpc.framing")


class StreamDecoder:
    """Cut a byte stream into top-level msgpack objects, each with its exact raw bytes.

    Feed arbitrary chunks (a message may be split anywhere); :meth:`feed` returns the objects
    completed by this chunk. Bytes that start no decodable object (``c1``, a container header
    beyond the limits, nesting deeper than :data:`MAX_NESTING`, ...) are dropped one at a time
    until parsing succeeds again, and a partial object that would outgrow ``max_buffer`` is
    given up the same way, so garbage can cost a few messages but never stalls the stream or
    grows memory.

    *max_message* is for a peer whose messages are never longer, but may arrive cut short with
    the next message right behind (the M4: OpenAMP sends the first 496 bytes of a longer send,
    :data:`M4_MAX_SEND`). An array (every RPC message is one) that cannot end within
    *max_message* bytes from a message boundary is such a cut message: exactly those bytes are
    dropped (``cut_messages`` counts them) and decoding resumes right after them, even when the
    bytes that follow would complete it. This is decided as soon as a declared length or element
    count cannot fit, else at byte *max_message*. No object longer than *max_message* is ever
    returned: any other object that long is garbage.

    Clean input goes through msgpack's C unpacker. After an error the decoder switches to a
    resynchronising scanner (:class:`~x8manager.rpc.framing.resync.Resync`) until its buffer is
    empty again: dropping one byte and re-parsing from the next is O(nesting) per byte with a
    fresh Unpacker, which made 64 KiB of ``0x91`` cost seconds; the scanner remembers what it
    learnt about every offset, so resynchronising costs O(bytes).
    """

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER, *, max_message: int | None = None) -> None:
        self._max_buffer = max(16, max_buffer)
        if max_message is not None and not 16 <= max_message <= self._max_buffer:
            raise ValueError(f"max_message must be 16..{self._max_buffer} (max_buffer), got {max_message}")
        self._max_message = max_message
        limit = 2 * self._max_buffer if max_message is None else max_message
        self._options = unpack_options(limit, items=MAX_ITEMS, buffer=2 * self._max_buffer)
        self._whole_options = unpack_options(limit, items=MAX_ITEMS)
        # A chunk up to this long may be one whole object (the fast path).
        self._whole_limit = self._max_buffer if max_message is None else max_message
        self._buffer = bytearray()  # bytes fed to the current unpacker and not yet returned
        self._base = 0  # unpacker.tell() at the start of self._buffer
        # Container lead bytes in self._buffer: a partial object cannot nest deeper than this,
        # and msgpack only complains at 1,024 levels, so past MAX_NESTING the scanner decides.
        self._container_bytes = 0
        self._unpacker = self._new_unpacker()
        self._fit: Fit | None = None  # the cut-message check of the partial object (max_message)
        self._resync: Resync | None = None  # set while resynchronising
        self._skip = 0  # bytes of a cut message still to come, to be dropped
        self._dropped = 0  # bytes dropped by finished resynchronisations
        self._steps = 0
        self._cuts = 0

    @property
    def dropped_bytes(self) -> int:
        """Garbage bytes discarded while resynchronising (cut messages not included)."""
        return self._dropped + (self._resync.dropped if self._resync is not None else 0)

    @property
    def scan_steps(self) -> int:
        """Elements examined while resynchronising: the decoder's work on garbage, for tests."""
        return self._steps + (self._resync.steps if self._resync is not None else 0)

    @property
    def cut_messages(self) -> int:
        """Messages dropped because they were cut at *max_message* bytes."""
        return self._cuts + (self._resync.cut_messages if self._resync is not None else 0)

    def _new_unpacker(self) -> msgpack.Unpacker:
        # The Unpacker's own buffer holds our bytes plus one incoming chunk at most.
        return msgpack.Unpacker(**self._options)

    @property
    def pending(self) -> int:
        """Bytes held for an object that is not complete yet, or of a cut message still to come."""
        if self._resync is not None:
            return self._resync.pending + self._skip
        return len(self._buffer) + self._skip

    def reset(self) -> None:
        """Forget any partial object (the peer restarted: its tail will never come)."""
        self._buffer.clear()
        self._base = 0
        self._container_bytes = 0
        self._unpacker = self._new_unpacker()
        self._fit = None
        self._finish_resync()
        self._skip = 0

    def _finish_resync(self) -> None:
        if self._resync is not None:
            self._dropped += self._resync.dropped
            self._steps += self._resync.steps
            self._cuts += self._resync.cut_messages
            self._skip += self._resync.skip
            self._resync = None

    def feed(self, data: bytes) -> list[DecodedObject]:
        """Add *data*; return every top-level object it completes, in stream order."""
        if not self._buffer and self._resync is None and not self._skip and len(data) <= self._whole_limit:
            whole = self._whole_object(data)
            if whole is not None:
                return [whole]
        out: list[DecodedObject] = []
        view = memoryview(data)
        position = 0
        while position < len(view):
            if self._skip:  # the rest of a cut message
                taken = min(self._skip, len(view) - position)
                self._skip -= taken
                position += taken
                continue
            chunk = bytes(view[position : position + self._max_buffer])
            position += len(chunk)
            if self._resync is not None:
                self._resync_feed(chunk, out)
                continue
            self._buffer += chunk
            self._container_bytes += count_containers(chunk)
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
                if self._max_message is not None and not self._partial_may_fit():
                    self._start_resync(out)  # in step: the scanner drops the cut message
                return
            except Exception as exc:  # FormatError, StackError, ValueError (limits), TypeError
                log.debug("stream decoder: undecodable bytes at %02x (%s), resynchronising",
                          self._buffer[0], exc)
                self._start_resync(out)
                return
            end = self._unpacker.tell() - self._base
            if self._max_message is not None and end > self._max_message:
                # Longer than any message: a cut one that the next message's bytes "completed".
                self._start_resync(out)
                return
            raw = bytes(self._buffer[:end])
            if nesting_exceeds(raw):
                log.debug("stream decoder: object nested deeper than %d, resynchronising", MAX_NESTING)
                self._start_resync(out)
                return
            if end == len(self._buffer):
                self._container_bytes = 0
            else:
                self._container_bytes -= count_containers(raw)
            del self._buffer[:end]
            self._base += end
            self._fit = None
            out.append(DecodedObject(value, raw))

    def _partial_may_fit(self) -> bool:
        """Whether the partial object can still end within max_message bytes (checked as its
        bytes arrive, where the last check stopped)."""
        if self._max_message and fits_surely(self._buffer, self._max_message):
            return True  # the usual small message split across reads: nothing to walk
        if self._fit is None:
            self._fit = Fit(0, self._max_message or 0)
        return self._fit.check(self._buffer) == SHORT

    def _start_resync(self, out: list[DecodedObject]) -> None:
        """Hand the buffered bytes to a scanner; the C unpacker's state is lost after an error."""
        self._resync = Resync(self._buffer, self._max_buffer, self._options, max_message=self._max_message)
        self._buffer = bytearray()
        self._base = 0
        self._container_bytes = 0
        self._unpacker = self._new_unpacker()
        self._fit = None
        self._resync_feed(b"", out)

    def _resync_feed(self, chunk: bytes, out: list[DecodedObject]) -> None:
        resync = self._resync
        assert resync is not None
        resync.feed(chunk, out)
        if resync.pending == 0 and (resync.in_step or self._max_message is None):
            self._finish_resync()  # in step again: back to the C unpacker

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
                          exc.reason, shorten(item.raw))
        return frames
