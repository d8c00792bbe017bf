"""How peer bytes become values, and the limits every cutter and decoder shares.

:func:`unpack_options` is the one place that says how msgpack is unpacked here: every
``msgpack.Unpacker`` and ``msgpack.unpackb`` of the framing package takes its settings from it
(or from :func:`unpackb`, the same value rules without limits beyond the data's own length).
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "M4_MAX_MESSAGE",
    "M4_MAX_SEND",
    "MAX_ITEMS",
    "MAX_LOGGED_BYTES",
    "MAX_NESTING",
    "unpack_options",
    "unpackb",
]

# One write() to /dev/x8h7_ui becomes one 256-byte SPI frame: 4 bytes of frame header and 4 of
# subpacket header leave 248 bytes; anything longer is silently dropped by the driver.
M4_MAX_MESSAGE: Final = 248

# The other way, M4 -> Linux: one RPMsg payload. OpenAMP cuts a longer send to its first 496
# bytes and sends those (reference section 15), so no complete M4 message is longer.
M4_MAX_SEND: Final = 496

# Bound on what a stream decoder holds while waiting for the end of an object. The M4 link
# carries at most 496 bytes per RPMsg message and TCP peers are not trusted with more.
DEFAULT_MAX_BUFFER: Final = 64 * 1024

# Elements of one array or map a stream decoder accepts: a stray container header must not
# swallow the stream for long (cutters that stay in step take their byte limit instead).
MAX_ITEMS: Final = 4096

# Peer text embedded in log lines and error messages is cut to this many bytes.
MAX_LOGGED_BYTES: Final = 64

# Containers nested deeper than this are not a message, wherever framing decodes peer bytes.
# msgpack-c on the M4 stops at its MSGPACK_EMBED_STACK_SIZE (32) anyway, and Python code that
# walks a decoded value recursively (repr, ==, logging) fails near 1,000 levels. msgpack has no
# depth option: the decoders check it themselves (headers.nesting_exceeds, the resync scanner).
MAX_NESTING: Final = 32

# str stays str and bin stays bytes; invalid UTF-8 in a str is kept (surrogateescape) rather
# than rejected, because a method name or payload from the M4 is not ours to refuse; any
# hashable map key is allowed (msgpack-rpc-python sends int keys).
_VALUES: Final[dict[str, Any]] = {"raw": False, "strict_map_key": False, "unicode_errors": "surrogateescape"}


def unpack_options(limit: int = DEFAULT_MAX_BUFFER, *, items: int = MAX_ITEMS,
                   buffer: int | None = None) -> dict[str, Any]:
    """msgpack settings for untrusted peers.

    Values as :func:`unpackb` builds them; no str, bin or ext longer than *limit* bytes and no
    array or map with more than ``min(limit, items)`` elements (msgpack refuses a container
    header at once, a long str/bin/ext once its bytes are there). *buffer* is a streaming
    ``msgpack.Unpacker``'s ``max_buffer_size``; leave it None for ``msgpack.unpackb``.
    """
    limit = max(16, limit)
    count = min(limit, items)
    options = {**_VALUES, "max_str_len": limit, "max_bin_len": limit, "max_ext_len": limit,
               "max_array_len": count, "max_map_len": count}
    if buffer is not None:
        options["max_buffer_size"] = max(16, buffer)
    return options


def unpackb(data: bytes) -> Any:
    """The one object *data* holds, built as everywhere here; msgpack bounds every length by
    ``len(data)`` itself. Raises what msgpack raises (``ExtraData``, ``ValueError``, ...)."""
    return msgpack.unpackb(data, **_VALUES)
