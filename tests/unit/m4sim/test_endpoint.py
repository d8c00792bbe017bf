"""The "rpc" endpoint and how a stream link stands for the device, tested synchronously."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from m4sim_memory_link import MemoryLink, run_with_m4

from tests.support import wait_until
from x8manager.m4sim import VirtualM4
from x8manager.m4sim.calls import CallSlots
from x8manager.m4sim.dispatcher import Dispatcher, SketchHalt
from x8manager.m4sim.endpoint import HELLO, RpcEndpoint
from x8manager.m4sim.runner import InboundSplitter, LinkCounters


class _Host:
    def send_rpc(self, message: bytes) -> None:
        raise AssertionError("nothing is sent in these tests")

    def check_running(self) -> None:
        pass

    def halt(self, reason: str) -> None:
        raise AssertionError(reason)


def endpoint(*, greeted: bool = True) -> RpcEndpoint:
    found = Dispatcher()
    found.bind("add", lambda a, b: a + b, params=["int", "int"])
    rpc = RpcEndpoint(found, CallSlots(_Host()))
    if greeted:
        assert got(rpc, HELLO) == []
    return rpc


def got(rpc: RpcEndpoint, data: bytes) -> list[Any]:
    return list(rpc.receive(data))


def request(msgid: int, method: str, *params: Any) -> bytes:
    return bytes(msgpack.packb([0, msgid, method, list(params)]))


def test_the_first_message_is_the_hello_and_is_swallowed() -> None:
    rpc = endpoint(greeted=False)
    assert got(rpc, request(1, "add", 1, 2)) == []  # taken for the hello: never answered
    assert got(rpc, request(2, "add", 1, 2)) == [bytes.fromhex("940102c003")]


def test_a_type_packed_as_uint8_is_ignored() -> None:
    rpc = endpoint()
    assert got(rpc, b"\x94\xcc\x00" + request(1, "add", 1, 2)[2:]) == []
    assert rpc.ignored == 1


def test_the_raw_second_byte_routes_a_message() -> None:
    rpc = endpoint()
    # An array16 header (dc 00 04) puts its own 00 at byte 1: routed as a request, by luck.
    assert got(rpc, b"\xdc\x00\x04\x00\x01\xa3add\x92\x01\x02") == [bytes.fromhex("940101c003")]
    # A reply-typed message goes to reply matching, never to the dispatcher.
    assert got(rpc, msgpack.packb([1, 5, None, 3])) == []


def test_bytes_that_are_not_msgpack_behind_a_request_type_halt() -> None:
    with pytest.raises(SketchHalt, match="parse_error"):
        got(endpoint(), b"\x94\x00\xc1\xc1")
    assert got(endpoint(), b"hello") == []  # routed on "e": ignored


def test_a_reply_with_a_negative_msgid_halts() -> None:
    with pytest.raises(SketchHalt):
        got(endpoint(), msgpack.packb([1, -5, None, 3]))


def test_each_message_is_parsed_on_its_own_so_a_split_message_is_lost() -> None:
    rpc = endpoint()
    whole = request(0x10000, "add", 20, 22)
    assert got(rpc, whole[:6]) == []  # the unpacker waits for more: reset before the next message
    assert got(rpc, whole[6:]) == []  # "add\x92..." routed on 'a' (0x61): ignored
    assert got(rpc, whole) == [msgpack.packb([1, 0x10000, None, 42])]


def splitter() -> tuple[InboundSplitter, LinkCounters]:
    counters = LinkCounters()
    return InboundSplitter(counters), counters


def test_writes_merged_in_one_read_are_separate_messages() -> None:
    split, _ = splitter()
    first, second = request(1, "add", 1, 2), request(2, "add", 3, 4)
    assert split.feed(first + second) == [first, second]


def test_on_a_stream_a_message_fed_byte_by_byte_is_reassembled() -> None:
    """A pty splits writes by itself: the runner cannot tell, so it joins the pieces."""
    split, counters = splitter()
    whole = request(5, "add", 1, 2)
    found = [message for byte in whole for message in split.feed(bytes([byte]))]
    assert found == [whole]
    assert counters.split_lost == 0


def test_on_a_link_with_write_boundaries_each_read_is_one_message() -> None:
    split, _ = splitter()
    first, second = request(1, "add", 1, 2), request(2, "add", 3, 4)
    assert split.feed(first + second, boundaries=True) == [first + second]
    assert split.feed(first[:3], boundaries=True) == [first[:3]]


def test_garbage_makes_the_rest_of_the_read_one_message() -> None:
    split, _ = splitter()
    garbage = b"\x94\x00\xc1" + request(1, "add", 1, 2)
    assert split.feed(garbage) == [garbage]


def test_a_message_split_across_two_writes_is_lost_and_the_next_one_answered() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        whole = request(1, "add", 20, 22)
        link.send(whole[:5])
        link.send(whole[5:])
        link.send(request(2, "add", 1, 1))
        assert await link.messages(1) == [[1, 2, None, 2]]
        assert not m4.halted

    run_with_m4(scenario)


def test_a_reply_written_together_with_a_call_is_dispatched_as_a_call_and_halts() -> None:
    """One write is one message, routed on its first byte 1: the reply after the call is taken for a
    call too, and converting its nil method throws."""
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(1, "add", 1, 2) + msgpack.packb([1, 9, None, 5]))
        await wait_until(lambda: m4.halted, "the M4 to halt")
        assert await link.messages(1) == [[1, 1, None, 3]]  # the call before it was answered

    run_with_m4(scenario)


def test_a_message_written_one_byte_per_write_never_reaches_the_sketch() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        for byte in request(1, "add", 1, 2):
            link.send(bytes([byte]))  # each write is an RPMsg message of its own
        link.send(request(2, "add", 2, 2))
        assert await link.messages(1) == [[1, 2, None, 4]]
        assert not m4.halted and [c.params for c in m4.calls_received] == [[2, 2]]

    run_with_m4(scenario)


def test_the_h7_hello_is_swallowed_at_start_and_after_each_reset() -> None:
    m4 = VirtualM4(demo=False)
    assert m4.stats.hellos_swallowed == 1
    m4.reset()
    assert m4.stats.hellos_swallowed == 2 and m4.stats.resets == 1
