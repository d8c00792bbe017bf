"""Linux -> M4: the virtual M4 answers like rpclib on the sketch, byte for byte."""

from __future__ import annotations

from typing import Any

import msgpack
from m4sim_memory_link import MemoryLink, run_with_m4

from x8manager.m4sim import VirtualM4


def request(msgid: int, method: str, *params: Any) -> bytes:
    return bytes(msgpack.packb([0, msgid, method, list(params)]))


def test_add_reply_bytes() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(bytes.fromhex("940007a3616464920102"))  # reference E1
        assert await link.raw(5) == bytes.fromhex("940107c003")

    run_with_m4(scenario)


def test_unknown_function_gets_rpclib_text_as_str8() -> None:
    text = b"rpclib: server could not find function 'gas' with argument count 0."

    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(3, "gas"))
        expected = bytes.fromhex("940103d9") + bytes([len(text)]) + text + b"\xc0"
        assert await link.raw(len(expected)) == expected

    run_with_m4(scenario)


def test_wrong_arity_gets_rpclib_text() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(9, "add", 1))
        (reply,) = await link.messages(1)
        assert reply == [
            1,
            9,
            "rpclib: Function 'add' was called with an invalid number of arguments. Expected: 2, got: 1",
            None,
        ]

    run_with_m4(scenario)


def test_bound_procedure_sync_and_async_and_void() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        async def twice(x: int) -> int:
            return 2 * x

        m4.bind("twice", twice)
        m4.bind("nothing", lambda: None)
        link.send(request(1, "twice", 21) + request(2, "nothing") + request(0x10000, "subtract", 5, 7))
        assert await link.messages(3) == [[1, 1, None, 42], [1, 2, None, None], [1, 0x10000, None, -2]]

    run_with_m4(scenario)


def test_binding_twice_is_refused() -> None:
    m4 = VirtualM4(demo=False)
    m4.bind("x", lambda: 1)
    try:
        m4.bind("x", lambda: 2)
    except ValueError as exc:
        assert "already bound" in str(exc)
    else:
        raise AssertionError("second bind accepted")


def test_dispatch_by_length_not_type() -> None:
    """A 4-element "notification" (the Go serial example) is answered as a call; a 3-element is not."""

    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([2, "echo", ["quiet"]]) + msgpack.packb([2, 77, "echo", ["loud"]]))
        assert await link.messages(1) == [[1, 77, None, "loud"]]
        assert [c.notification for c in m4.calls_received] == [True, False]

    run_with_m4(scenario)


def test_split_input_is_reassembled() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        for byte in request(5, "echo", "x" * 40) + request(6, "add", 2, 3):
            link.send(bytes([byte]))
        assert await link.messages(2) == [[1, 5, None, "x" * 40], [1, 6, None, 5]]

    run_with_m4(scenario)


def test_oversize_input_is_dropped_like_the_driver() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        big = request(1, "echo", "y" * 300)
        assert len(big) > 248
        link.send(big + request(2, "add", 1, 1))
        assert await link.messages(1) == [[1, 2, None, 2]]
        assert m4.stats.dropped_oversize_in == 1

    run_with_m4(scenario)


def test_oversize_input_accepted_without_limit() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(1, "echo", "y" * 300))
        (reply,) = await link.messages(1)
        assert reply == [1, 1, None, "y" * 300]

    run_with_m4(scenario, max_inbound=None, max_outbound=None)


def test_garbage_is_skipped_and_stream_recovers() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(b"\xc1\xc1hello" + msgpack.packb([0, 4, 5]) + request(8, "add", 4, 4))
        assert await link.messages(1) == [[1, 8, None, 8]]
        assert m4.stats.stream_resyncs >= 1
        assert m4.stats.dropped_invalid_in >= 1

    run_with_m4(scenario)


def test_negative_msgid_is_not_answered() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(-1, "add", 1, 1) + request(1, "add", 2, 2))
        assert await link.messages(1) == [[1, 1, None, 4]]
        assert m4.stats.dropped_invalid_in == 1

    run_with_m4(scenario)


def test_tty_input_fills_serial_buffer() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(1, "tty", "hello") + msgpack.packb([2, "tty", [b"\x00\xff"]], use_bin_type=True))
        assert await link.messages(1) == [[1, 1, None, None]]
        assert await m4.wait_serial_input(lambda data: len(data) == 7) == b"hello\x00\xff"
        assert m4.serial_read() == b"hello\x00\xff"
        assert m4.serial_read() == b""

    run_with_m4(scenario)


def test_procedure_exception_is_answered_and_m4_keeps_going() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        def broken() -> None:
            raise RuntimeError("sensor unplugged")

        m4.bind("broken", broken)
        link.send(request(1, "broken") + request(2, "whoami"))
        first, second = await link.messages(2)
        assert first[2] == (
            "rpclib: function 'broken' (called with 0 arg(s)) threw an exception. "
            "The exception contained this information: sensor unplugged."
        )
        assert second[3].startswith("virtual M4")

    run_with_m4(scenario)


def test_sequential_dispatch_keeps_order_concurrent_does_not() -> None:
    async def in_order(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(1, "delay", 50) + request(2, "delay", 0))
        assert [m[1] for m in await link.messages(2)] == [1, 2]

    async def out_of_order(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(request(1, "delay", 300) + request(2, "delay", 0))
        assert [m[1] for m in await link.messages(2)] == [2, 1]

    run_with_m4(in_order)
    run_with_m4(out_of_order, concurrent_dispatch=True)
