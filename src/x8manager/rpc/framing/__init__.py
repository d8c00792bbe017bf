"""MessagePack-RPC framing, independent of any connection.

Everything here works on bytes and parsed objects only, so the proxy, the client library, the
virtual M4 and the tests share one definition of what a valid message is:

- :mod:`.options`: how peer bytes become values and the limits (:func:`unpack_options`, the one
  place that sets up msgpack; :data:`MAX_NESTING`, :data:`M4_MAX_MESSAGE`, :data:`M4_MAX_SEND`);
- :mod:`.messages`: typed records, :func:`parse_message`, :func:`validate_message` (which keeps
  the raw bytes, because the proxy forwards what a client sent verbatim), the encoders;
- :mod:`.decoder`: :class:`StreamDecoder` cuts a byte stream into objects with their exact raw
  bytes, skips non-array objects (raw ``RPC.print`` text), resynchronises on garbage
  (:mod:`.resync`) and, on the M4 link, drops messages OpenAMP cut at 496 bytes;
- :mod:`.cutters`: :func:`first_object` and :class:`ObjectCutter` for peers that must stay in
  step (the call port, the router front);
- :mod:`.msgid`: :func:`msgid_span` / :func:`replace_msgid` rewrite the msgid of a raw request
  or response without touching any other byte (proxy-assigned ids on the M4 wire);
- :mod:`.compat`: :func:`go_pack_int` / :func:`pack_raw_compat` reproduce the original Go
  proxy's encodings where clients can observe them (the ``register`` reply ``94 01 <msgid> c0 a0``);
- :mod:`.headers`: walks over msgpack headers shared by the above.
"""

from __future__ import annotations

from x8manager.rpc.framing.compat import go_pack_int, pack_raw_compat, raw_error_reply
from x8manager.rpc.framing.cutters import Incomplete, ObjectCutter, first_object
from x8manager.rpc.framing.decoder import StreamDecoder
from x8manager.rpc.framing.headers import nesting_exceeds
from x8manager.rpc.framing.messages import (
    DecodedObject,
    Frame,
    InvalidMessage,
    Message,
    MessageType,
    Notification,
    Request,
    Response,
    method_name,
    pack_message,
    pack_notification,
    pack_request,
    pack_response,
    parse_message,
    validate_message,
)
from x8manager.rpc.framing.msgid import MAX_MSGID, msgid_bytes_of, msgid_span, replace_msgid
from x8manager.rpc.framing.options import (
    DEFAULT_MAX_BUFFER,
    M4_MAX_MESSAGE,
    M4_MAX_SEND,
    MAX_ITEMS,
    MAX_LOGGED_BYTES,
    MAX_NESTING,
    unpack_options,
    unpackb,
)

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "M4_MAX_MESSAGE",
    "M4_MAX_SEND",
    "MAX_ITEMS",
    "MAX_LOGGED_BYTES",
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
    "unpackb",
    "validate_message",
]
