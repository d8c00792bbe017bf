"""The M4's "rpc" endpoint: what ``RPCClass::rpmsg_recv_callback`` does with one RPMsg message.

- the first message an endpoint receives is the host's one-byte hello: swallowed;
- the message is routed on its **raw second byte** (the type field as a fixarray's first element):
  0 and 2 go to ``request()`` (rpclib's dispatcher), 1 to ``response()``; anything else, including a
  type packed as ``cc 00``, is ignored;
- the unpacker is reset for every message, so a message is parsed on its own: every complete object
  in it is handled (all by the route of the first), an incomplete one at the end is lost, and bytes
  that are not msgpack throw ``parse_error``, which halts the M4;
- a reply is converted to ``tuple<uint32_t, uint32_t, object, object>`` (a msgid that is not a uint32
  halts the M4) and handed to the thread waiting with its msgid.

Synchronous: :meth:`RpcEndpoint.receive` yields what to send back, one reply at a time (the M4 sends
each before it dispatches the next object); :class:`~x8manager.m4sim.dispatcher.SketchHalt` comes out
where the M4 would terminate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack

from x8manager.m4sim.calls import CallSlots
from x8manager.m4sim.cxx import TypeMismatch, ctype
from x8manager.m4sim.dispatcher import Deferred, Dispatcher, SketchHalt

__all__ = ["HELLO", "RpcEndpoint"]

HELLO = b"\x00"  # what the host (the H7) sends each endpoint once the M4 announces it
_UINT32 = ctype("uint32_t")
ROUTE_REQUEST, ROUTE_RESPONSE, ROUTE_NOTIFY = 0, 1, 2


def _objects(data: bytes) -> Iterator[tuple[Any, bytes]]:
    """The complete objects in one message with their bytes; ``parse_error`` halts."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape")
    unpacker.feed(data)
    start = 0
    while True:
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            return
        except (ValueError, msgpack.StackError) as exc:
            raise SketchHalt(f"msgpack parse_error in a message from Linux: {exc}") from None
        end = unpacker.tell()
        yield value, data[start:end]
        start = end


class RpcEndpoint:
    """The "rpc" endpoint's receive path."""

    def __init__(self, dispatcher: Dispatcher, calls: CallSlots) -> None:
        self._dispatcher = dispatcher
        self._calls = calls
        self.greeted = False
        self.ignored = 0  # messages routed nowhere (type byte not 0, 1 or 2; too short)

    def reset(self) -> None:
        """The M4 restarts: the next message is the hello again."""
        self.greeted = False

    def receive(self, data: bytes) -> Iterator[bytes | Deferred]:
        """Handle one RPMsg message, yielding the replies (or coroutines) in order."""
        if not self.greeted:
            self.greeted = True  # the library swallows the first message: the host's hello
            return
        if len(data) < 2:
            self.ignored += 1
            return
        route = data[1]
        if route == ROUTE_RESPONSE:
            for value, raw in _objects(data):
                self._response(value, raw)
            return
        if route not in (ROUTE_REQUEST, ROUTE_NOTIFY):
            self.ignored += 1
            return
        for value, _raw in _objects(data):
            outcome = self._dispatcher.dispatch(value)
            if outcome is not None:
                yield outcome

    def _response(self, value: Any, raw: bytes) -> None:
        if not isinstance(value, list):
            raise SketchHalt(f"a reply that is not an array ({type(value).__name__}): msgpack type_error")
        try:
            if value:
                _UINT32.convert(value[0])
            msgid = _UINT32.convert(value[1]) if len(value) > 1 else 0
        except TypeMismatch as exc:
            raise SketchHalt(f"a reply's type or msgid: {exc}") from None
        error = value[2] if len(value) > 2 else None
        result = value[3] if len(value) > 3 else None
        self._calls.deliver(msgid, error, result, raw)
