"""msgids of raw messages: where they are, and swapping them without touching any other byte.

The proxy gives calls into the M4 its own msgids on the wire and puts the caller's bytes back
in the reply (every msgpack-rpc-python client sends msgid 0), so these run on every call.
"""

from __future__ import annotations

from typing import Final

import msgpack

from x8manager.rpc.framing.messages import InvalidMessage
from x8manager.rpc.framing.options import unpack_options

__all__ = ["MAX_MSGID", "msgid_bytes_of", "msgid_span", "replace_msgid"]

# rpclib on the M4 reads msgids as uint32 (call_t/response_type), so that is the id space.
MAX_MSGID: Final = 2**32 - 1

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
    unpacker = msgpack.Unpacker(**unpack_options(len(raw), buffer=len(raw)))
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


def msgid_bytes_of(raw: bytes) -> bytes:
    """The msgid bytes of a request-shaped message (for error replies to invalid ones)."""
    try:
        start, end = msgid_span(raw)
    except InvalidMessage:
        return b"\x00"
    return raw[start:end]
