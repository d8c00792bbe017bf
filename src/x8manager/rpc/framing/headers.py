"""Walks over msgpack headers (never payloads), shared by the decoder, the scanner and the cutters.

Every function here reads lead bytes and length fields only, iteratively (never recursively):
how deep an object nests, what length a header announces, and whether an object that starts at
a message boundary can still end within a size limit (:class:`Fit`, the M4 link's cut rule).
"""

from __future__ import annotations

import sys
from typing import Final

from x8manager.rpc.framing.options import MAX_NESTING

__all__ = [
    "ARRAY_LEADS",
    "CONTAINER_LEADS",
    "CUT",
    "FAIL",
    "MAP_LEADS",
    "OK",
    "SHORT",
    "Fit",
    "count_containers",
    "declared_length",
    "fits_surely",
    "header",
    "nesting_exceeds",
]

CONTAINER_LEADS: Final = frozenset([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
ARRAY_LEADS: Final = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
MAP_LEADS: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_NOT_CONTAINER_BYTES: Final = bytes(lead for lead in range(256) if lead not in CONTAINER_LEADS)
# Headers with a length or count field: bin, ext, str8/16/32, array and map 16/32.
_NOT_LENGTH_BYTES: Final = bytes(lead for lead in range(256)
                                 if not (0xC4 <= lead <= 0xC9 or 0xD9 <= lead <= 0xDF))

# Outcomes of scanning from one start offset.
OK: Final = 0  # a complete object
FAIL: Final = 1  # no object can start here
SHORT: Final = 2  # the start of an object: more bytes needed
CUT: Final = 3  # the start of an object longer than allowed: a message cut short (Fit)

# Header kinds by lead byte (see header).
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


def header(buf: bytes | bytearray, pos: int, max_len: int, max_items: int) -> tuple[int, int, int]:
    """``(outcome, size, children)`` of the object header at *pos*.

    ``OK``: *size* is a leaf's total size (children 0) or a container's header size;
    ``SHORT``: the header itself is cut off; ``FAIL``: not a valid start (c1, or a length
    or count beyond the limits).
    """
    kind, a, b = _LEAD[buf[pos]]
    if kind == _LEAF:
        return OK, a, 0
    if kind == _ARRAY:
        return OK, 1, a
    if kind == _BAD:
        return FAIL, 0, 0
    if pos + 1 + a > len(buf):
        return SHORT, 0, 0
    count = int.from_bytes(buf[pos + 1 : pos + 1 + a], "big")
    if kind == _LEAF_LEN:
        size = 1 + a + b + count
        return (FAIL, 0, 0) if size > max_len else (OK, size, 0)
    if count > max_items:
        return FAIL, 0, 0
    return OK, 1 + a, b * count


def count_containers(data: bytes | bytearray) -> int:
    """Bytes of *data* that could be container headers (an upper bound on its nesting)."""
    return len(data.translate(None, _NOT_CONTAINER_BYTES))


def fits_surely(data: bytes | bytearray, limit: int) -> bool:
    """Whether the object *data* starts (complete or not) surely ends within *limit* bytes, by a
    cheap bound: without length fields, a leaf is at most 32 bytes (fixstr) and an open
    container awaits at most 30 children (fixmap), one byte each at the least."""
    return (len(data) + 32 + 30 * count_containers(data) <= limit
            and not data.translate(None, _NOT_LENGTH_BYTES))


def nesting_exceeds(raw: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the first msgpack object in *raw* nests containers deeper than *limit*.

    Cheap for what RPC carries: a message with no more container-like bytes than *limit*
    cannot nest deeper, so only the others are walked (iteratively, never recursively).
    """
    if len(raw) <= limit or count_containers(raw) <= limit:
        return False
    remaining: list[int] = []
    pos = 0
    while pos < len(raw):
        outcome, size, children = header(raw, pos, len(raw), len(raw))
        if outcome != OK:
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


# First byte -> (offset, size) of the big-endian length of str/bin/ext/array/map 16 and 32.
_LENGTH_FIELDS: Final = {0xC5: (1, 2), 0xC6: (1, 4), 0xC8: (1, 2), 0xC9: (1, 4), 0xDA: (1, 2),
                         0xDB: (1, 4), 0xDC: (1, 2), 0xDD: (1, 4), 0xDE: (1, 2), 0xDF: (1, 4)}


def declared_length(data: bytes) -> int | None:
    """The length an object's header announces (bytes, or elements of a container), if any:
    msgpack itself waits for all of it before checking its limits."""
    if not data or data[0] not in _LENGTH_FIELDS:
        return None
    offset, size = _LENGTH_FIELDS[data[0]]
    if len(data) < offset + size:
        return None
    return int.from_bytes(data[offset:offset + size], "big")


# Lengths and counts are checked by Fit itself, against the room left before its limit.
_UNBOUNDED: Final = sys.maxsize


class Fit:
    """Whether the object that starts at *start*, a message boundary, can end within *limit* bytes.

    The M4's messages are never longer than one RPMsg payload; OpenAMP cuts a longer send and
    sends its first part. :meth:`check` walks the object's headers as its bytes arrive and
    carries on where the last call stopped (O(elements) for the whole object). It answers
    ``CUT`` as soon as a valid start shows the object cannot end in time: a declared length or
    element count that needs more room (every element takes at least one byte), or *limit*
    bytes without the end.
    """

    __slots__ = ("_end", "_needed", "_open", "_pos", "start")

    def __init__(self, start: int, limit: int) -> None:
        self.start = start
        self._pos = start  # the next element's first byte
        self._end = start + limit
        # Per open container: [children not started yet, is a map].
        self._open: list[list[int]] = []
        self._needed = 0  # children not started yet, all open containers together

    def check(self, buf: bytes | bytearray) -> int:
        """``OK`` (complete within the limit), ``FAIL`` (not msgpack, a container as a map key,
        or nested deeper than MAX_NESTING, before the limit), ``CUT``, or ``SHORT`` (cannot
        tell yet: call again with more bytes)."""
        pos, end, stack = self._pos, self._end, self._open
        try:
            while True:
                if pos >= end:
                    return CUT
                if pos >= len(buf):
                    return SHORT
                lead = buf[pos]
                outcome, size, children = header(buf, pos, _UNBOUNDED, _UNBOUNDED)
                if outcome == SHORT:  # the header itself is cut off
                    return CUT if len(buf) >= end else SHORT
                if outcome == FAIL:
                    return FAIL
                parent = stack[-1] if stack else None
                needed = self._needed - 1 if parent is not None else 0
                if parent is not None and parent[1] and not parent[0] % 2 and lead in CONTAINER_LEADS:
                    return FAIL  # an array or map as a map key: msgpack cannot build it
                if pos + size + children + needed > end:
                    return CUT
                if not children and pos + size > len(buf):
                    return SHORT  # a leaf that fits; its bytes are still coming
                if children and len(stack) >= MAX_NESTING:
                    return FAIL
                if parent is not None:
                    parent[0] -= 1
                self._needed = needed
                pos += size
                if children:
                    stack.append([children, lead in MAP_LEADS])
                    self._needed += children
                    continue
                while stack and not stack[-1][0]:
                    stack.pop()  # its last child just ended
                if not stack:
                    return OK
        finally:
            self._pos = pos
