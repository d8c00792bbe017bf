"""What the Arduino RPC library puts on the wire: rpclib messages as msgpack-c 2.1.5 encodes them.

msgpack-c packs ``std::string`` as fixstr/str8/str16, byte vectors as bin, non-negative integers
in the unsigned forms, ``double`` as ``cb`` and ``float`` as ``ca``. ``msgpack.packb`` with
``use_bin_type=True`` gives the same bytes for everything but a ``float``, so :func:`packb` packs
:class:`~x8manager.m4sim.cxx.Float32` itself. The texts are rpclib's, verbatim (``dispatcher.cc``,
``client_error.cc``), with the two counts of the arity error swapped as rpclib swaps them.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from x8manager.m4sim.cxx import Float32

__all__ = [
    "NOTIFICATION",
    "REQUEST",
    "RESPONSE",
    "THREAD_ID_BASE",
    "THREAD_ID_STRIDE",
    "arity_error",
    "not_found_error",
    "notification",
    "packb",
    "request",
    "response",
]

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

# RPC.call stamps a call with (int32_t)osThreadGetId(): the address of the calling thread's RTX
# control block in the M4's SRAM (e.g. 0x10000a48), so always a ``ce`` uint32. One id per sketch
# thread; blocks are 0x44 bytes apart.
THREAD_ID_BASE = 0x10000A48
THREAD_ID_STRIDE = 0x44
WRONG_ARITY_CODE = 2  # rpclib client_error::code::wrong_arity, shown as C0002


def _header(count: int, fix: int, lead16: bytes) -> bytes:
    """An array (``fix`` 0x90, ``dc``/``dd``) or map (0x80, ``de``/``df``) header for *count* items."""
    if count < 16:
        return bytes([fix | count])
    if count < 0x10000:
        return lead16 + count.to_bytes(2, "big")
    return bytes([lead16[0] + 1]) + count.to_bytes(4, "big")


def packb(value: Any) -> bytes:
    """*value* as msgpack-c 2.1.5 packs the C++ value it stands for (str as str, bytes as bin,
    :class:`Float32` as float32)."""
    if isinstance(value, Float32):
        return b"\xca" + struct.pack(">f", value)
    if isinstance(value, list | tuple):
        return _header(len(value), 0x90, b"\xdc") + b"".join(packb(item) for item in value)
    if isinstance(value, dict):
        return _header(len(value), 0x80, b"\xde") + b"".join(packb(k) + packb(v) for k, v in value.items())
    # A C++ std::string holds bytes: a name that is not UTF-8 (kept as surrogate escapes) goes out
    # as the bytes it came as.
    packed: bytes = msgpack.packb(value, use_bin_type=True, unicode_errors="surrogateescape")
    return packed


def request(msgid: int, method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
    """``RPC.call``: ``[uint8 0, int32 thread id, name, [args...]]``."""
    return b"\x94\x00" + packb(msgid) + packb(method) + packb(list(params))


def notification(method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
    """``RPC.send``: ``[uint8 2, name, [args...]]``."""
    return b"\x93\x02" + packb(method) + packb(list(params))


def response(msgid: int, error: Any, result: Any) -> bytes:
    """rpclib's reply: ``[1, msgid, error, result]`` (a void procedure's result is nil)."""
    return b"\x94\x01" + packb(msgid) + packb(error) + packb(result)


def not_found_error(name: str, arg_count: int) -> str:
    return f"rpclib: server could not find function '{name}' with argument count {arg_count}."


def arity_error(name: str, sent: int, bound: int) -> str:
    """rpclib calls ``enforce_arg_count(name, bound, sent)`` on a signature ``(func, found, expected)``:
    so "Expected" is what the caller sent and "got" what the function takes."""
    return (
        f"rpclib: client error C{WRONG_ARITY_CODE:04x}: Function '{name}' was called with an invalid "
        f"number of arguments. Expected: {sent}, got: {bound}"
    )
