"""The M4 link's decoder drops a message OpenAMP cut at 496 bytes, and nothing else (issue 19 item 2).

OpenAMP sends the first 496 bytes of a longer M4 send (reference section 15); the rest never
comes, and the next RPMsg message follows at once, merged with RPC.print bytes and chunked
arbitrarily into reads. Streams are fed whole, split at every point, and byte by byte.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x8manager.rpc.framing import (
    M4_MAX_SEND,
    MAX_NESTING,
    StreamDecoder,
    pack_notification,
    pack_request,
    pack_response,
    unpackb,
)

M4_BUFFER = 8 * 1024  # what the proxy's M4 port gives its decoder

PING = pack_request(0x10000A48, "ping", [1, "two"])
PONG = pack_response(0x10000A48, None, "pong")
LINE = pack_notification("tty", [b"after the cut\r\n"])
PRINTED = b"plain RPC.print text\r\n"  # the raw endpoint: one fixint object per byte


def m4_decoder() -> StreamDecoder:
    return StreamDecoder(M4_BUFFER, max_message=M4_MAX_SEND)


def cut(message: bytes) -> bytes:
    """What reaches Linux of an M4 send: OpenAMP's first 496 bytes."""
    return message[:M4_MAX_SEND]


REPLY_600 = pack_response(0x10000A48, None, "r" * 600)
SERIAL_600 = pack_notification("tty", [b"s" * 600])  # Serial.print of 600 bytes: [2,"tty",[bin 600]]
# No length or count over 496: it cannot fit by its elements (each takes at least a byte).
MANY_INTS = pack_response(0x10000A48, None, list(range(1000, 1300)))

AFTER = [PONG, LINE, PING]


def decode(decoder: StreamDecoder, pieces: list[bytes]) -> list[bytes]:
    return [item.raw for piece in pieces for item in decoder.feed_arrays(piece)]


def every_feeding(stream: bytes) -> list[list[bytes]]:
    """The stream at once, split at every point, and byte by byte."""
    feedings = [[stream], [bytes([byte]) for byte in stream]]
    feedings += [[stream[:at], stream[at:]] for at in range(1, len(stream))]
    return feedings


@pytest.mark.parametrize("long_message", [REPLY_600, SERIAL_600, MANY_INTS],
                         ids=["600-byte reply", "600-byte Serial.print", "reply of 300 ints"])
def test_a_cut_message_between_other_traffic_costs_only_itself(long_message: bytes) -> None:
    assert len(long_message) > M4_MAX_SEND
    stream = PING + PRINTED + cut(long_message) + b"".join(AFTER)
    for pieces in every_feeding(stream):
        decoder = m4_decoder()
        assert decode(decoder, pieces) == [PING, *AFTER]
        assert decoder.cut_messages == 1 and decoder.dropped_bytes == 0 and decoder.pending == 0


@pytest.mark.parametrize("long_message", [REPLY_600, SERIAL_600, MANY_INTS],
                         ids=["600-byte reply", "600-byte Serial.print", "reply of 300 ints"])
def test_the_tail_that_would_complete_a_cut_message_is_the_next_messages(long_message: bytes) -> None:
    # Enough messages behind the cut one to make up its declared length: msgpack alone would
    # return it "complete", a success reply carrying the other messages' bytes.
    following = LINE * 20 + PRINTED * 10 + PONG
    stream = cut(long_message) + following
    unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
    unpacker.feed(stream)
    next(unpacker)
    assert unpacker.tell() > M4_MAX_SEND  # what msgpack alone makes of it
    for pieces in every_feeding(stream):
        decoder = m4_decoder()
        objects = decode(decoder, pieces)
        assert objects == [LINE] * 20 + [PONG]
        assert all(len(raw) <= M4_MAX_SEND for raw in objects)


def test_a_declared_length_that_cannot_fit_is_decided_at_its_header() -> None:
    decoder = m4_decoder()
    header = SERIAL_600[:10]  # 93 02 a3 tty 91 c5 02 58
    assert decoder.feed(header) == [] and decoder.cut_messages == 1
    assert decoder.pending == M4_MAX_SEND - len(header)  # the rest of the cut message, still to come
    rest = cut(SERIAL_600)[len(header):]
    assert decoder.feed(rest + PONG) != [] and decoder.pending == 0


def test_a_cut_found_only_at_byte_496() -> None:
    # Everything fits up to byte 495; the 496th opens an array that needs two more.
    long_message = pack_response(0x10000A48, None, ["a" * 483, [1, 2]])
    assert long_message[M4_MAX_SEND - 1] == 0x92 and len(long_message) == M4_MAX_SEND + 2
    decoder = m4_decoder()
    assert decoder.feed(cut(long_message)[:-1]) == [] and decoder.cut_messages == 0
    assert decoder.feed(cut(long_message)[-1:]) == [] and decoder.cut_messages == 1
    assert decoder.pending == 0
    assert [item.raw for item in decoder.feed(PONG)] == [PONG]


def test_a_message_of_exactly_496_bytes_is_whole_and_one_byte_more_is_cut() -> None:
    exact = pack_notification("tty", [b"e" * (M4_MAX_SEND - 10)])
    assert len(exact) == M4_MAX_SEND
    for pieces in every_feeding(exact + PONG):
        assert decode(m4_decoder(), pieces) == [exact, PONG]
    over = pack_notification("tty", [b"e" * (M4_MAX_SEND - 9)])
    for pieces in every_feeding(cut(over) + PONG):
        assert decode(m4_decoder(), pieces) == [PONG]


def test_cut_messages_back_to_back_and_after_garbage() -> None:
    # Right after garbage nothing tells where a message starts: a cut message there goes as
    # garbage (none of its pieces is taken for a message), and the next whole message is found.
    stream = (cut(SERIAL_600) + cut(REPLY_600) + LINE + b"\xc1\xc1" + PING + cut(MANY_INTS) + PONG
              + b"\xc1" + cut(SERIAL_600) + LINE)
    for pieces in every_feeding(stream):
        decoder = m4_decoder()
        assert decode(decoder, pieces) == [LINE, PING, PONG, LINE]
        assert decoder.cut_messages == 3 and decoder.dropped_bytes > 3


def test_print_text_whose_byte_announces_a_long_bin_is_no_cut_message() -> None:
    # "ł" is c5 82: as msgpack, a bin16 of 33,293 bytes. RPC.print sends it byte by byte, so
    # it starts at a message boundary, yet it is text, not a message: it costs only itself.
    stream = PING + "ł\r\n".encode() + PONG + LINE
    for pieces in every_feeding(stream):
        decoder = m4_decoder()
        assert decode(decoder, pieces) == [PING, PONG, LINE]
        assert decoder.cut_messages == 0


def test_a_clients_decoder_keeps_its_larger_limit() -> None:
    for pieces in every_feeding(PING + REPLY_600 + PONG):
        assert decode(StreamDecoder(), pieces) == [PING, REPLY_600, PONG]


def test_max_message_must_fit_the_buffer() -> None:
    with pytest.raises(ValueError, match="max_message"):
        StreamDecoder(256, max_message=M4_MAX_SEND)


# --- today's guarantees on the M4 link: nesting cap, garbage in O(bytes) ---------------------

def test_too_deep_is_still_garbage_on_the_m4_link() -> None:
    decoder = m4_decoder()
    assert [item.raw for item in decoder.feed(b"\x91" * MAX_NESTING + PING)] == [
        b"\x91" * (MAX_NESTING - 2) + PING]
    assert decoder.dropped_bytes == 2 and decoder.cut_messages == 0


def test_a_0x91_flood_on_the_m4_link_is_dropped_in_linear_work() -> None:
    flood = b"\x91" * 65536
    decoder = m4_decoder()
    for start in range(0, len(flood), 128):  # the H7's chunks
        decoder.feed(flood[start : start + 128])
        assert decoder.pending <= M4_MAX_SEND
    assert decoder.feed_frames(b"\xc1" + PONG)[-1].raw == PONG
    assert decoder.scan_steps <= 3 * len(flood)


rpc_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=300) | st.binary(max_size=700),
    lambda children: (st.lists(children, max_size=40)
                      | st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=60,
)
m4_sends = st.one_of(
    st.builds(pack_request, st.integers(0, 2**32 - 1), st.text(min_size=1, max_size=20),
              st.lists(rpc_values, max_size=4)),
    st.builds(pack_response, st.integers(0, 2**32 - 1), st.none(), rpc_values),
    st.builds(pack_notification, st.just("tty"), st.lists(st.binary(max_size=700), min_size=1, max_size=1)),
)


@settings(max_examples=300, deadline=None)
@given(sends=st.lists(m4_sends, min_size=1, max_size=6), cuts=st.lists(st.integers(1, 600), max_size=20))
def test_fuzz_every_whole_message_arrives_and_no_cut_one_whatever_the_reads(
    sends: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(cut(send) for send in sends)
    decoder = m4_decoder()
    objects: list[bytes] = []
    position = 0
    for size in [*cuts, len(stream)]:
        objects += [item.raw for item in decoder.feed(stream[position : position + size])]
        position += size
    assert objects == [send for send in sends if len(send) <= M4_MAX_SEND]
    assert decoder.cut_messages == sum(len(send) > M4_MAX_SEND for send in sends)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=2000), chunk=st.integers(1, 300), tail=m4_sends)
def test_fuzz_garbage_on_the_m4_link_stays_bounded_linear_and_short(
    garbage: bytes, chunk: int, tail: bytes
) -> None:
    decoder = m4_decoder()
    for start in range(0, len(garbage), chunk):
        for item in decoder.feed(garbage[start : start + chunk]):
            assert len(item.raw) <= M4_MAX_SEND
            assert unpackb(item.raw) == item.value
        assert decoder.pending <= M4_MAX_SEND
    assert decoder.scan_steps <= 4 * len(garbage) + 8
    # Once the garbage is over (a bad byte ends anything it left open), a whole message puts
    # the decoder in step, and cut messages cost only themselves again.
    decoder.feed(b"\xc1" * M4_MAX_SEND)
    expected = [tail] if len(tail) <= M4_MAX_SEND else []
    assert [item.raw for item in decoder.feed(PING + cut(tail) + PONG)] == [PING, *expected, PONG]
