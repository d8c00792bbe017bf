"""Cutting objects out of a peer's bytes where the peer must stay in step (nothing is skipped).

Each front cuts its peers' bytes with one of three cutters, which the every-split-point tests
run alike:

- :func:`first_object`: the call port (one message per connection, msgpack-rpc-python's way);
- :class:`ObjectCutter`: the router front (a persistent connection; the first bad byte ends it,
  as arduino-router does);
- :class:`~x8manager.rpc.framing.decoder.StreamDecoder`: the M4 link (cut messages dropped,
  garbage skipped), the register port, services and the client library.
"""

from __future__ import annotations

import msgpack

from x8manager.rpc.framing.headers import declared_length
from x8manager.rpc.framing.messages import DecodedObject, InvalidMessage
from x8manager.rpc.framing.options import unpack_options, unpackb

__all__ = ["Incomplete", "ObjectCutter", "first_object"]


class Incomplete(Exception):
    """The bytes so far are the start of an object, not all of it."""


def first_object(data: bytes, limit: int) -> DecodedObject:
    """The first msgpack object of *data* and its exact bytes (bytes after it are ignored).

    For peers that send one message (the call port) or whose stream must stay in step (the
    router front): nothing is skipped. Raises :class:`Incomplete` if *data* ends inside the
    object, :class:`InvalidMessage` if it is not msgpack or would be larger than *limit*.
    """
    if len(data) <= limit:
        try:
            return DecodedObject(unpackb(data), data)
        except msgpack.ExtraData as extra:  # bytes pipelined behind the object
            return DecodedObject(extra.unpacked, data[: len(data) - len(extra.extra)])
        except Exception:  # incomplete, not msgpack, or not buildable: tell them apart below
            pass
    declared = declared_length(data)
    if declared is not None and declared > limit:
        raise InvalidMessage(f"message announces {declared} bytes or elements, over the limit of {limit}")
    bound = max(limit, 16)
    # Length headers are checked against the limit as soon as they are read: a 100 MB bin
    # header is refused at once, not after 100 MB.
    unpacker = msgpack.Unpacker(**unpack_options(bound, items=bound, buffer=bound + 1))
    try:
        unpacker.feed(data[: limit + 1])
        unpacker.skip()
    except msgpack.OutOfData:
        if len(data) > limit:
            raise InvalidMessage(f"message larger than {limit} bytes") from None
        raise Incomplete from None
    except msgpack.BufferFull:
        raise InvalidMessage(f"message larger than {limit} bytes") from None
    except Exception as exc:
        raise InvalidMessage(f"not msgpack: {exc}") from None
    raw = data[: unpacker.tell()]
    try:
        return DecodedObject(unpackb(raw), raw)
    except Exception as exc:  # skippable but not buildable (e.g. unhashable map keys, depth)
        raise InvalidMessage(f"undecodable msgpack: {exc}") from None


class ObjectCutter:
    """Cut a trusted-to-be-in-step stream into objects; the first bad byte ends the stream.

    Unlike :class:`~x8manager.rpc.framing.decoder.StreamDecoder` nothing is skipped: a peer
    speaking msgpack-RPC on a persistent connection (the router front) that sends garbage is
    out of step for good, and the connection is closed (as arduino-router does). One streaming
    unpacker and one buffer compacted once per chunk: a chunk holding thousands of small
    messages costs O(bytes).
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(limit, 16)
        bound = self._limit
        self._unpacker = msgpack.Unpacker(**unpack_options(bound, items=bound, buffer=2 * bound + 65536))
        self._buffer = bytearray()  # bytes fed and not yet returned as objects
        self._base = 0  # unpacker.tell() at the start of _buffer

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[DecodedObject]:
        """Objects completed by *data*; raises :class:`InvalidMessage` on bad bytes."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise InvalidMessage(f"message larger than {self._limit} bytes") from None
        self._buffer += data
        out: list[DecodedObject] = []
        start = 0
        while start < len(self._buffer):
            try:
                value = self._unpacker.unpack()
            except msgpack.OutOfData:
                break
            except Exception as exc:  # FormatError, StackError, ValueError (limits), TypeError
                raise InvalidMessage(f"not msgpack: {exc}") from None
            end = self._unpacker.tell() - self._base
            out.append(DecodedObject(value, bytes(self._buffer[start:end])))
            start = end
        del self._buffer[:start]
        self._base += start
        declared = declared_length(bytes(self._buffer[:5]))
        if declared is not None and declared > self._limit:
            raise InvalidMessage(f"message announces {declared} bytes or elements, over the limit of "
                                 f"{self._limit}")
        if len(self._buffer) > self._limit:
            raise InvalidMessage(f"message larger than {self._limit} bytes")
        return out
