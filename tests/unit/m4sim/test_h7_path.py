"""M4 -> Linux: the 496-byte RPMsg cut, RPC.print byte by byte, the H7's ring and 128-byte chunks."""

from __future__ import annotations

import asyncio

import msgpack
from m4sim_memory_link import MemoryLink, run_with_m4

from x8manager.m4sim import VirtualM4
from x8manager.m4sim.h7 import H7Ring, rpmsg_cut


def test_output_is_cut_into_128_byte_chunks() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "blob", [300]]))
        (reply,) = await link.messages(1)
        assert reply[3] == bytes(i % 256 for i in range(300))
        assert [len(w) for w in link.writes] == [128, 128, len(b"".join(link.writes)) - 256]

    run_with_m4(scenario)


def test_a_message_over_496_bytes_is_cut_to_496_and_sent() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "blob", [600]]))
        link.send(msgpack.packb([0, 2, "status", []]))
        full = bytes(msgpack.packb([1, 1, None, bytes(i % 256 for i in range(600))], use_bin_type=True))
        status = bytes(msgpack.packb([1, 2, None, 1]))
        assert await link.raw(496 + len(status)) == full[:496] + status
        assert m4.stats.cut_oversize_out == 1

    run_with_m4(scenario)


def test_rpmsg_cut_keeps_what_fits() -> None:
    assert rpmsg_cut(b"x" * 496) == b"x" * 496
    assert rpmsg_cut(b"y" * 600) == b"y" * 496


def test_the_ring_loses_its_oldest_bytes_when_linux_does_not_read() -> None:
    ring = H7Ring(capacity=8)
    ring.put(b"abcdef")
    ring.put(b"ghij")
    assert ring.lost == 2
    assert ring.take(3) == b"cde"
    assert ring.take() == b"fghij"
    assert ring.take() == b""


def test_rpc_print_is_one_message_per_byte_so_other_messages_land_between() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        printing = asyncio.create_task(m4.print_raw("hello"))
        await asyncio.sleep(0)  # the printing thread is between two bytes
        await m4.notify("log", 1)
        await printing
        raw = await link.raw(5 + 8)
        notification = bytes(msgpack.packb([2, "log", [1]]))
        assert notification in raw and raw.replace(notification, b"") == b"hello"
        assert not raw.startswith(b"hello")

    run_with_m4(scenario)


def test_interleaved_raw_text_switch() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        await m4.notify("log", 1)
        raw = await link.raw(len(b"boot ok\r\n") + 8)
        assert raw.startswith(b"boot ok\r\n")
        assert msgpack.unpackb(raw[len(b"boot ok\r\n") :]) == [2, "log", [1]]

    run_with_m4(scenario, interleave_text=b"boot ok\r\n")


def test_oversize_input_is_dropped_like_the_driver() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        big = msgpack.packb([0, 1, "echo", ["y" * 300]])
        link.send(big)
        link.send(msgpack.packb([0, 2, "add", [1, 1]]))
        assert await link.messages(1) == [[1, 2, None, 2]]
        assert m4.stats.dropped_oversize_in == 1

    run_with_m4(scenario)


def test_tty_input_fills_the_serial_buffer_from_str_or_bin() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "tty", ["hello"]]))
        link.send(msgpack.packb([2, "tty", [b"\x00\xff"]], use_bin_type=True))
        assert await link.messages(1) == [[1, 1, None, None]]
        assert await m4.wait_serial_input(lambda data: len(data) == 7) == b"hello\x00\xff"
        assert m4.serial_read() == b"hello\x00\xff"
        assert m4.serial_read() == b""

    run_with_m4(scenario)


def test_procedures_run_one_at_a_time_unless_the_switch_says_otherwise() -> None:
    async def in_order(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "delay", [50]]))
        link.send(msgpack.packb([0, 2, "delay", [0]]))
        assert [m[1] for m in await link.messages(2)] == [1, 2]

    async def out_of_order(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "delay", [300]]))
        link.send(msgpack.packb([0, 2, "delay", [0]]))
        assert [m[1] for m in await link.messages(2)] == [2, 1]

    run_with_m4(in_order)
    run_with_m4(out_of_order, concurrent_dispatch=True)
