"""x8manager.rpc.framing: validation, the streaming decoder (fuzzed), msgid rewriting, Go encodings."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x8manager.rpc.framing import (
    M4_MAX_SEND,
    DecodedObject,
    Incomplete,
    InvalidMessage,
    Notification,
    ObjectCutter,
    Request,
    Response,
    StreamDecoder,
    first_object,
    go_pack_int,
    msgid_span,
    pack_notification,
    pack_raw_compat,
    pack_request,
    pack_response,
    parse_message,
    replace_msgid,
    unpackb,
    validate_message,
)

# --- validation ----------------------------------------------------------------------------


def test_validate_keeps_exact_bytes_and_parses() -> None:
    raw = bytes.fromhex("940007a3616464920102")  # E1
    frame = validate_message(raw)
    assert frame.raw == raw and frame.message == Request(7, "add", [1, 2])
    assert validate_message(bytes.fromhex("940107c02a")).message == Response(7, None, 42)
    assert validate_message(bytes.fromhex("9302a374747991a568656c6c6f")).message == Notification(
        "tty", ["hello"]
    )


def test_names_as_str8_bin_and_raw16_are_accepted() -> None:
    assert parse_message([0, 1, b"tty", []]) == Request(1, "tty", [])
    frame = validate_message(b"\x94\x00\x01\xd9\x03add\x90")
    assert frame.message == Request(1, "add", [])
    assert validate_message(b"\x93\x02\xc4\x03tty\x90").message == Notification("tty", [])


def test_values_keep_their_msgpack_types() -> None:
    frame = validate_message(bytes.fromhex("940005a46563686f94cb3ff8000000000000c403010203c0d90141"))
    assert isinstance(frame.message, Request)
    assert frame.message.params == [1.5, b"\x01\x02\x03", None, "A"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"a": 1}, "is an array"),
        ([], "empty array"),
        ([3, 1, "x", []], "unknown message type"),
        ([True, 1, "x", []], "unknown message type"),
        ([0, 1, "x"], "4 elements"),
        ([1, 1, None], "4 elements"),
        ([2, "x"], "3 elements"),
        ([0, "1", "x", []], "msgid must be an integer"),
        ([0, 1.0, "x", []], "msgid must be an integer"),
        ([0, 1, 5, []], "method name"),
        ([0, 1, "x", "params"], "params must be an array"),
        ([2, "x", {"a": 1}], "params must be an array"),
    ],
)
def test_parse_rejects_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse_message(value)


def test_request_shaped_errors_carry_the_msgid() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message([0, 12, "x", "notalist"])
    assert caught.value.msgid == 12


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x94\x00", bytes.fromhex("940107c02a") + b"\x00"])
def test_validate_rejects_bad_bytes(raw: bytes) -> None:
    with pytest.raises(InvalidMessage):
        validate_message(raw)


# --- stream decoder ------------------------------------------------------------------------

MESSAGES = [
    bytes.fromhex("940107c02a"),
    bytes.fromhex("9302a3747479 91c407") + b"hello\r\n",
    pack_request(0x10003000, "multiply", [3, 4]),
    pack_notification("tty", [b"\xa7" * 300]),
]


class Cutter(Protocol):
    def feed(self, data: bytes) -> list[DecodedObject]: ...


class FirstObjects:
    """first_object as the call port applies it, taken again on the bytes behind each object."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = b""

    def feed(self, data: bytes) -> list[DecodedObject]:
        self._held += data
        out: list[DecodedObject] = []
        while self._held:
            try:
                item = first_object(self._held, self._limit)
            except Incomplete:
                break
            out.append(item)
            self._held = self._held[len(item.raw) :]
        return out


# The cutter of every front: the M4 link, clients and services, the router front, the call port.
CUTTERS: dict[str, Callable[[], Cutter]] = {
    "M4 link decoder": lambda: StreamDecoder(8 * 1024, max_message=M4_MAX_SEND),
    "stream decoder": StreamDecoder,
    "router front": lambda: ObjectCutter(1024 * 1024),
    "call port": lambda: FirstObjects(64 * 1024),
}


@pytest.mark.parametrize("make", CUTTERS.values(), ids=CUTTERS.keys())
def test_every_cutter_reassembles_across_every_split_point(make: Callable[[], Cutter]) -> None:
    stream = b"".join(MESSAGES)
    for cut in range(1, len(stream)):
        cutter = make()
        objects = cutter.feed(stream[:cut]) + cutter.feed(stream[cut:])
        assert [item.raw for item in objects] == MESSAGES


@pytest.mark.parametrize("make", CUTTERS.values(), ids=CUTTERS.keys())
def test_every_cutter_byte_by_byte(make: Callable[[], Cutter]) -> None:
    stream = b"".join(MESSAGES)
    cutter = make()
    objects = [item for byte in stream for item in cutter.feed(bytes([byte]))]
    assert [item.raw for item in objects] == MESSAGES
    assert [item.value for item in objects] == [unpackb(raw) for raw in MESSAGES]


def test_decoder_byte_by_byte_skips_text_and_resyncs_on_garbage() -> None:
    stream = (
        b"Serial text\r\n"
        + MESSAGES[0]
        + b"\xc1\xc1"
        + MESSAGES[1]
        + b"\x05\xc0"
        + msgpack.packb({"k": 1})
        + b"\x92\x05\x06"
        + MESSAGES[2]
    )
    decoder = StreamDecoder()
    frames = [frame for byte in stream for frame in decoder.feed_frames(bytes([byte]))]
    assert [f.raw for f in frames] == MESSAGES[:3]
    assert decoder.dropped_bytes == 2


def test_decoder_huge_container_header_does_not_swallow_the_stream() -> None:
    decoder = StreamDecoder(max_buffer=1024)
    frames = decoder.feed_frames(b"\xdd\xff\xff\xff\xff" + b"\xdc\xff\xff" + MESSAGES[0])
    assert [f.raw for f in frames] == [MESSAGES[0]]


def test_decoder_buffer_is_bounded() -> None:
    decoder = StreamDecoder(max_buffer=256)
    # A bin32 header announcing 1 MiB, then data that never completes it.
    decoder.feed(b"\xc6\x00\x10\x00\x00")
    for _ in range(100):
        decoder.feed(b"\x01" * 100)
        assert decoder.pending <= 256
    assert decoder.feed_frames(MESSAGES[0])[-1].raw == MESSAGES[0]


def test_decoder_reset_forgets_a_partial_message() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(MESSAGES[2][:5]) == []
    assert decoder.pending == 5
    decoder.reset()
    assert [f.raw for f in decoder.feed_frames(MESSAGES[0])] == [MESSAGES[0]]


rpc_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
rpc_messages = st.one_of(
    st.builds(
        pack_request,
        st.integers(0, 2**32 - 1),
        st.text(min_size=1, max_size=20),
        st.lists(rpc_values, max_size=4),
    ),
    st.builds(pack_response, st.integers(0, 2**32 - 1), rpc_values, rpc_values),
    st.builds(pack_notification, st.text(min_size=1, max_size=20), st.lists(rpc_values, max_size=4)),
)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(rpc_messages, min_size=1, max_size=5), cuts=st.lists(st.integers(1, 64), max_size=30)
)
def test_fuzz_decoder_recovers_every_message_whatever_the_chunking(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(messages)
    decoder = StreamDecoder()
    frames = []
    position = 0
    for size in [*cuts, len(stream)]:
        frames += decoder.feed_frames(stream[position : position + size])
        position += size
    assert [f.raw for f in frames] == messages


@settings(max_examples=300, deadline=None)
@given(noise=st.binary(max_size=400), tail=rpc_messages)
def test_fuzz_decoder_random_bytes_never_raise_and_stay_bounded(noise: bytes, tail: bytes) -> None:
    decoder = StreamDecoder(max_buffer=1024)
    for byte in noise:  # byte by byte
        for frame in decoder.feed_frames(bytes([byte])):
            assert (
                parse_message(
                    msgpack.unpackb(
                        frame.raw, raw=False, strict_map_key=False, unicode_errors="surrogateescape"
                    )
                )
                == frame.message
            )
        assert decoder.pending <= 1024
    decoder.feed(tail)  # whatever came before, the decoder keeps consuming input


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_validate_raises_only_invalid_message(data: bytes) -> None:
    with contextlib.suppress(InvalidMessage):
        validate_message(data)


# --- msgid rewriting and encoders ----------------------------------------------------------


@pytest.mark.parametrize(
    "msgid_bytes",
    [
        b"\x00",
        b"\x7f",
        b"\xcc\xc8",
        b"\xcd\x01\x00",
        b"\xce\x10\x00\x30\x00",
        b"\xd0\xff",
        b"\xd3" + bytes(8),
    ],
)
def test_replace_msgid_touches_only_the_msgid(msgid_bytes: bytes) -> None:
    raw = b"\x94\x00" + msgid_bytes + b"\xa3add\x92\xcb\x3f\xf8" + bytes(6) + b"\xc0"
    wire, old = replace_msgid(raw, b"\xce\x00\x00\x00\x09")
    assert old == msgid_bytes
    assert wire == b"\x94\x00\xce\x00\x00\x00\x09" + raw[2 + len(msgid_bytes) :]
    assert replace_msgid(wire, old)[0] == raw


def test_msgid_span_in_array16_and_response() -> None:
    raw = b"\xdc\x00\x04\x01\xcd\x12\x34\xc0\x2a"
    assert msgid_span(raw) == (4, 7)
    with pytest.raises(InvalidMessage):
        msgid_span(b"\x05")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "d10080"),
        (200, "d100c8"),
        (32767, "d17fff"),
        (32768, "d200008000"),
        (70000, "d200011170"),
        (2**31, "d30000000080000000"),
        (-1, "ff"),
        (-33, "d0df"),
        (2**64 - 1, "cfffffffffffffffff"),
    ],
)
def test_go_pack_int_smallest_signed_form(value: int, encoded: str) -> None:
    assert go_pack_int(value).hex() == encoded


def test_pack_raw_compat_uses_the_old_raw_family() -> None:
    assert pack_raw_compat("") == b"\xa0"
    assert pack_raw_compat("a" * 31)[:1] == b"\xbf"
    text = "The number of the given arguments (1) doesn't match the arity (2)"
    assert pack_raw_compat(text)[:3] == b"\xda\x00\x41"  # E14b
    assert pack_raw_compat(b"x" * 70000)[:5] == b"\xdb\x00\x01\x11\x70"


@settings(max_examples=200, deadline=None)
@given(
    msgid=st.integers(-(2**63), 2**64 - 1) | st.text(max_size=3) | st.none(),
    kind=st.integers(0, 1) | st.just(300),
    rest=st.lists(rpc_values, min_size=2, max_size=2),
)
def test_fuzz_msgid_span_finds_the_second_element(msgid: Any, kind: int, rest: list[Any]) -> None:
    raw = msgpack.packb([kind, msgid, *rest], use_bin_type=True)
    start, end = msgid_span(raw)
    assert msgpack.unpackb(raw[start:end], raw=False) == msgid
    with pytest.raises(InvalidMessage):
        msgid_span(raw[:start])
