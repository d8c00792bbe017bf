"""x8manager.rpc.framing against hostile bytes (issue 11 items 5 and 8).

Deep nesting never escapes as RecursionError, and resynchronising on garbage costs work in
proportion to the bytes (counted with the decoder's own ``scan_steps``, never with a clock).
The decoder's resynchronisation is checked against the plain rule it implements quickly:
"at each offset, try a whole object; if none can start there, drop one byte".
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x8manager.rpc.framing import (
    MAX_NESTING,
    InvalidMessage,
    StreamDecoder,
    nesting_exceeds,
    pack_request,
    pack_response,
    parse_message,
    validate_message,
)

UNPACK = {"raw": False, "strict_map_key": False, "unicode_errors": "surrogateescape"}
PING = pack_request(7, "ping", [1, "two"])
PONG = pack_response(7, None, "pong")


def nested(depth: int, leaf: bytes = b"\x00") -> bytes:
    return b"\x91" * depth + leaf


# --- item 5: nesting in one message --------------------------------------------------------

def test_deeply_nested_message_type_is_an_invalid_message_not_a_recursion_error() -> None:
    value = msgpack.unpackb(b"\x94" + nested(1000) + b"\x01\xa1m\x90")
    with pytest.raises(InvalidMessage, match="unknown message type") as caught:
        parse_message(value)
    assert caught.value.msgid is None
    assert len(str(caught.value)) < 200


def test_deep_params_print_shortened() -> None:
    message = parse_message(msgpack.unpackb(b"\x94\x00\x01\xa1m\x91" + nested(1000)))
    assert len(repr(message)) < 200


@pytest.mark.parametrize("depth", [MAX_NESTING - 1, MAX_NESTING])
def test_validate_accepts_nesting_up_to_the_limit(depth: int) -> None:
    # The message array is one level; its params another.
    raw = b"\x94\x00\x01\xa1m" + nested(depth - 1, b"\x90")
    assert validate_message(raw).raw == raw


def test_validate_refuses_nesting_beyond_the_limit() -> None:
    raw = b"\x94\x00\x01\xa1m" + nested(MAX_NESTING, b"\x90")
    with pytest.raises(InvalidMessage, match="nested deeper"):
        validate_message(raw)


def test_nesting_counts_maps_arrays_and_ignores_payload_bytes() -> None:
    assert not nesting_exceeds(msgpack.packb([b"\x91" * 500, "\x91" * 40]))
    assert nesting_exceeds(b"\x81\xa1k" * (MAX_NESTING + 1) + b"\x00")
    assert nesting_exceeds(b"\xdc\x00\x01" * (MAX_NESTING + 1) + b"\x00")
    assert not nesting_exceeds(b"\xdc\x00\x01" * MAX_NESTING + b"\x00")


# --- item 8: resynchronisation costs O(bytes) ----------------------------------------------

def test_64k_of_0x91_is_dropped_in_linear_work_and_the_next_message_gets_through() -> None:
    flood = b"\x91" * 65536
    decoder = StreamDecoder()
    # The 0x91 still open around the message would swallow it; a bad byte ends them.
    assert decoder.feed_frames(flood + b"\xc1" + PING)[-1].raw == PING
    assert decoder.scan_steps <= 2 * len(flood)
    assert decoder.dropped_bytes >= len(flood) - MAX_NESTING


def test_64k_of_0x91_byte_by_byte_stays_linear_and_bounded() -> None:
    decoder = StreamDecoder()
    for byte in b"\x91" * 65536:
        assert decoder.feed_frames(bytes([byte])) == []
        assert decoder.pending <= 1025  # msgpack's own stack limit, before resynchronising
    assert decoder.pending <= MAX_NESTING
    assert decoder.scan_steps <= 3 * 65536
    assert [f.raw for f in decoder.feed_frames(b"\xc1" + PONG)] == [PONG]


def test_too_deep_complete_object_loses_one_level_at_a_time() -> None:
    # PING nests 2 deep, so 32 levels around it are 34: two bytes go, the rest is an object.
    decoder = StreamDecoder()
    assert [item.raw for item in decoder.feed(b"\x91" * MAX_NESTING + PING)] == [
        b"\x91" * (MAX_NESTING - 2) + PING]
    assert decoder.dropped_bytes == 2


# A slow, obviously right model of the decoder: try a whole object at every offset.
def model_decode(stream: bytes) -> list[bytes]:
    objects: list[bytes] = []
    start = 0
    while start < len(stream):
        unpacker = msgpack.Unpacker(**UNPACK, max_buffer_size=2 * 64 * 1024,
                                    max_array_len=4096, max_map_len=4096)
        unpacker.feed(stream[start:])
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            if nesting_exceeds(stream[start:]):  # already too deep: it can never be one
                start += 1
                continue
            break  # the start of an object: the rest never came
        except Exception:
            start += 1
            continue
        end = start + unpacker.tell()
        raw = stream[start:end]
        if nesting_exceeds(raw):
            start += 1
            continue
        objects.append(raw)
        start = end
    return objects


# Garbage made of what makes resynchronisation expensive: container headers of every width,
# bad bytes, length headers, and pieces of real messages.
hostile_pieces = st.sampled_from([
    b"\x91", b"\x92", b"\x9f", b"\x81", b"\x8f", b"\xdc\x00\x01", b"\xdc\x00\x02", b"\xdd\x00\x00\x00\x01",
    b"\xde\x00\x01", b"\xc1", b"\x00", b"\xa3", b"\xd9\x04", b"\xc4\x02", b"\xd4\x01", b"\xc0",
    PING[:3], PING, PONG, b"\x94\x00",
])
hostile_streams = st.lists(
    st.tuples(hostile_pieces, st.integers(1, 60)), max_size=12,
).map(lambda runs: b"".join(piece * count for piece, count in runs))


@settings(max_examples=300, deadline=None)
@given(stream=hostile_streams, cuts=st.lists(st.integers(1, 97), max_size=20))
def test_decoder_matches_the_drop_one_byte_model_whatever_the_chunking(
    stream: bytes, cuts: list[int]
) -> None:
    decoder = StreamDecoder()
    objects: list[bytes] = []
    position = 0
    for size in [*cuts, len(stream)]:
        objects += [item.raw for item in decoder.feed(stream[position : position + size])]
        position += size
    assert objects == model_decode(stream)


@settings(max_examples=300, deadline=None)
@given(stream=hostile_streams, chunk=st.sampled_from([1, 3, 64, 4096, 1 << 20]))
def test_decoder_work_is_linear_in_the_bytes(stream: bytes, chunk: int) -> None:
    decoder = StreamDecoder(max_buffer=1024)
    for start in range(0, len(stream), chunk):
        for item in decoder.feed(stream[start : start + chunk]):
            assert msgpack.unpackb(item.raw, **UNPACK) == item.value
        assert decoder.pending <= 1024
    assert decoder.scan_steps <= 4 * len(stream) + 8


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(max_size=2000), chunk=st.integers(1, 300))
def test_decoder_work_is_linear_on_random_bytes(garbage: bytes, chunk: int) -> None:
    decoder = StreamDecoder(max_buffer=512)
    for start in range(0, len(garbage), chunk):
        decoder.feed(garbage[start : start + chunk])
    assert decoder.scan_steps <= 4 * len(garbage) + 8
    assert decoder.feed_frames(b"\xc1" * 600 + PING)[-1].raw == PING


def test_decoder_byte_by_byte_matches_the_model_on_a_mixed_stream() -> None:
    stream = (b"text\r\n" + PING + b"\x91" * 40 + PONG + b"\xdc\x00\x01" * 40 + PING
              + b"\x81\xa1k" * 40 + b"\x00" + PONG)
    decoder = StreamDecoder()
    objects = [item.raw for byte in stream for item in decoder.feed(bytes([byte]))]
    assert objects == model_decode(stream)
    assert PING in objects and PONG in objects

