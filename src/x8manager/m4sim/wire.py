"""What the Arduino RPC library puts on the wire: rpclib messages as msgpack-c 2.1.5 encodes them.

msgpack-c 2.1.5 packs ``std::string`` as fixstr/str8/str16, byte vectors as bin, non-negative
integers in the unsigned forms and ``double`` as ``cb``; ``msgpack.packb(use_bin_type=True)``
(the shared framing's packers) produces the same bytes for the same Python values.
"""

from __future__ import annotations

import msgpack

from x8manager.rpc import framing

__all__ = [
    "NOTIFICATION",
    "REQUEST",
    "RESPONSE",
    "THREAD_ID_BASE",
    "THREAD_ID_STRIDE",
    "arity_error",
    "exception_error",
    "not_found_error",
    "notification",
    "packb",
    "request",
    "response",
]

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

# The M4 uses the calling RTOS thread's id as msgid (osThreadGetId(), an address in the M4's
# SRAM such as 0x10003000), so it is always packed as uint32 ``ce``. One id per caller slot.
THREAD_ID_BASE = 0x10003000
THREAD_ID_STRIDE = 0x100

# x8manager.rpc.framing packs with use_bin_type=True, which gives msgpack-c 2.1.5's bytes.
def packb(value: object) -> bytes:
    """One value as msgpack-c 2.1.5 packs it (str as str, bytes as bin)."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


request = framing.pack_request
response = framing.pack_response
notification = framing.pack_notification


# rpclib's error texts, verbatim (rpc/dispatcher.cc, rpc/dispatcher.inl): sketches and tests
# see exactly these strings; at 32..255 bytes they go out as str8 (``d9``).
def not_found_error(name: str, arg_count: int) -> str:
    return f"rpclib: server could not find function '{name}' with argument count {arg_count}."


def arity_error(name: str, expected: int, got: int) -> str:
    return (
        f"rpclib: Function '{name}' was called with an invalid number of arguments. "
        f"Expected: {expected}, got: {got}"
    )


def exception_error(name: str, arg_count: int, what: str) -> str:
    return (
        f"rpclib: function '{name}' (called with {arg_count} arg(s)) threw an exception. "
        f"The exception contained this information: {what}."
    )
