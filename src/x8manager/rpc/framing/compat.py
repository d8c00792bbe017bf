"""The original Go m4-proxy's encodings, where clients can observe them.

The ``register`` reply ``94 01 <msgid> c0 a0`` and the proxy's own error replies keep the Go
proxy's integer and string forms, so old clients read them exactly as before.
"""

from __future__ import annotations

__all__ = ["go_pack_int", "pack_raw_compat", "raw_error_reply"]


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


def raw_error_reply(msgid_bytes: bytes, text: str) -> bytes:
    """``[1, msgid, "text", nil]`` with the peer's own msgid bytes and old-style raw text,
    as the original Go proxy answers."""
    return b"\x94\x01" + msgid_bytes + pack_raw_compat(text) + b"\xc0"
