"""Finding the next decodable object in a stream after garbage, in O(bytes).

:class:`Resync` is the stream decoder's slow path: msgpack's C unpacker cannot say where an
object could start after an error, so the decoder hands its bytes to this scanner until it
is in step again. On the M4 link it also applies the cut-message rule (see
:class:`~x8manager.rpc.framing.headers.Fit`) wherever it is in step.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from x8manager.rpc.framing.headers import (
    ARRAY_LEADS,
    CONTAINER_LEADS,
    CUT,
    FAIL,
    MAP_LEADS,
    OK,
    SHORT,
    Fit,
    header,
)
from x8manager.rpc.framing.messages import DecodedObject
from x8manager.rpc.framing.options import MAX_NESTING, unpackb

__all__ = ["Resync"]

log = logging.getLogger("x8manager.rpc.framing")


class Resync:
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

    With *max_message* (the M4 link) no object longer than that is emitted, and where the
    scanner is in step (where it started, after an array, after a cut message) an array that
    cannot end within *max_message* bytes is a cut message: those bytes go at once
    (``cut_messages``), and ``skip`` says how many of them are still to come. Any other object
    that long (a byte of ``RPC.print`` text such as ``c5``, which announces a long bin) and,
    out of step, any object that long is garbage like any other.
    """

    def __init__(self, buffered: bytearray, max_buffer: int, options: dict[str, Any], *,
                 max_message: int | None = None) -> None:
        self._buffer = buffered
        self._max_buffer = max_buffer
        self._max_items = min(int(options["max_array_len"]), int(options["max_map_len"]))
        self._max_message = max_message
        # The longest leaf, and the most bytes an object may still be waited for.
        self._max_len = max_buffer if max_message is None else min(max_buffer, max_message)
        self._wait_limit = max_buffer if max_message is None else max_message - 1
        # The head is a message boundary (max_message only): where the decoder handed over,
        # after a message (an array), after a cut message; not after a dropped byte.
        self.in_step = True
        self._fit: Fit | None = None  # the cut-message check of an in-step head
        self.cut_messages = 0
        self.skip = 0  # bytes of the last cut message still to come
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
            if self.in_step and self._max_message is not None and self._buffer[self._head] in ARRAY_LEADS:
                verdict = self._fits()
                if verdict == CUT:
                    self._cut()
                    continue
                if verdict == SHORT:
                    break  # wait for the rest; complete or not msgpack: the scan says which
            outcome = self._scan()
            if outcome == OK:
                if self._emit(out):
                    continue
                outcome = FAIL
            elif outcome == SHORT:
                if self.pending <= self._wait_limit:
                    break  # wait for the rest
                log.debug("stream decoder: %d bytes without a complete object", self.pending)
            self._failed.add(self._head)
            self._next_start()
        if self._head > self._max_buffer:
            self._compact()

    def _fits(self) -> int:
        fit = self._fit
        if fit is None or fit.start != self._head:
            fit = self._fit = Fit(self._head, self._max_message or 0)
        return fit.check(self._buffer)

    def _cut(self) -> None:
        """Drop the cut message at the head: the next message starts right after it."""
        assert self._max_message is not None
        end = self._head + self._max_message
        self._head = min(end, len(self._buffer))
        self.skip = end - self._head
        self.cut_messages += 1
        log.debug("stream decoder: dropping a message cut at %d bytes", self._max_message)
        self._cur = self._head
        self._stack.clear()
        self._aside.clear()
        self._excess = 0
        self._reach = self._aside_reach = MAX_NESTING
        self._fit = None

    def _emit(self, out: list[DecodedObject]) -> bool:
        raw = bytes(self._buffer[self._head : self._cur])
        if self._max_message is not None and len(raw) > self._max_message:
            return False  # longer than any message: not one (a cut message is caught in step)
        try:
            value = unpackb(raw)
        except Exception as exc:  # scanned fine but msgpack cannot build it (unhashable key, ...)
            log.debug("stream decoder: dropping byte %02x (%s)", raw[0], exc)
            return False
        out.append(DecodedObject(value, raw))
        if type(value) is list:
            # A message ends here. Not after other objects: after garbage, a fixint or str
            # found inside some payload is no sign of a message boundary.
            self.in_step = True
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
        self.in_step = False
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
        return FAIL

    def _scan(self) -> int:
        """Carry the current attempt on as far as the bytes go."""
        if self._excess > 0:
            return FAIL  # still too deep from this start
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
                        return FAIL
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
                            return FAIL
                    continue
                else:
                    if cur >= len(buf):
                        return SHORT
                    lead = buf[cur]
                    if at_key and lead in CONTAINER_LEADS:
                        stack[-1][4] = 1
                    outcome, size, children = header(buf, cur, self._max_len, self._max_items)
                    if outcome == SHORT:
                        return SHORT
                    if outcome == FAIL:
                        failed.add(cur)
                        return self._fail_open()
                    if children:
                        stack.append([cur, children, 1, lead in MAP_LEADS, 0])
                        cur += size
                        if len(stack) > MAX_NESTING:
                            self._excess = 1
                            reach = len(stack)
                            return FAIL  # too deep from this start; not for the ones inside
                        continue
                    if cur + size > len(buf):
                        return SHORT
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
                    return OK
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
        self._fit = None
