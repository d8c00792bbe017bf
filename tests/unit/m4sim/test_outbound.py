"""M4 -> Linux: calls with thread-id msgids, notifications, chunking of the byte stream."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from m4sim_memory_link import MemoryLink, run_with_m4

from tests.support import wait_until
from x8manager.m4sim import LinuxCallError, LinuxCallTimeout, VirtualM4


def test_call_uses_thread_id_msgid_packed_as_uint32() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        call = asyncio.create_task(m4.call("multiply", 3, 4))
        raw = await link.raw(19)
        assert raw == bytes.fromhex("9400ce10003000a86d756c7469706c79920304")  # reference E8
        link.send(bytes.fromhex("9401ce10003000c00c"))
        assert await call == 12

    run_with_m4(scenario)


def test_error_reply_and_timeout_and_late_reply() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        call = asyncio.create_task(m4.call("divide", 1, 0))
        (request,) = await link.messages(1)
        link.send(msgpack.packb([1, request[1], "division by zero", None]))
        with pytest.raises(LinuxCallError) as caught:
            await call
        assert caught.value.error == "division by zero"

        with pytest.raises(LinuxCallTimeout):
            await m4.call("nobody", reply_timeout=0.05)
        link.send(msgpack.packb([1, 0x0BADBEEF, None, 1]))
        await m4.wait_connected()
        link.send(msgpack.packb([0, 1, "status", []]))
        await link.messages(3)
        assert m4.stats.unmatched_replies == 1
        assert m4.stats.timeouts == 1

    run_with_m4(scenario)


def test_at_most_ten_concurrent_callers_with_distinct_ids() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        entered: list[int] = []

        async def caller(n: int) -> int:
            entered.append(n)
            result: int = await m4.call("square", n)
            return result

        calls = [asyncio.create_task(caller(n)) for n in range(11)]
        requests = await link.messages(10)
        # Once all eleven are inside call() (a caller runs to its first wait in one step), ten hold
        # a slot and the eleventh waits for one: it has sent nothing.
        await wait_until(lambda: len(entered) == 11, "the eleven callers to start")
        assert m4.stats.calls_to_linux == 10
        assert len(await link.messages(10)) == 10
        assert not calls[10].done()
        ids = [r[1] for r in requests]
        assert len(set(ids)) == 10
        assert all(0x10000000 <= i <= 0xFFFFFFFF for i in ids)
        # Answer in reverse order: each caller gets its own answer.
        for r in reversed(requests):
            link.send(msgpack.packb([1, r[1], None, r[3][0] ** 2]))
        eleventh = (await link.messages(11))[10]
        link.send(msgpack.packb([1, eleventh[1], None, eleventh[3][0] ** 2]))
        assert await asyncio.gather(*calls) == [n**2 for n in range(11)]

    run_with_m4(scenario)


def test_serial_println_is_two_tty_notifications_with_bin() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        await m4.serial_println("hi")
        raw = await link.raw(16)
        assert raw == bytes.fromhex("9302a374747991c4026869") + bytes.fromhex("9302a374747991c4020d0a")

    run_with_m4(scenario)


def test_output_is_cut_into_128_byte_chunks() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "blob", [300]]))
        (reply,) = await link.messages(1)
        assert reply[3] == bytes(i % 256 for i in range(300))
        assert max(len(w) for w in link.writes) == 128
        assert len(link.writes) == 3

    run_with_m4(scenario, max_outbound=None)


def test_oversize_output_dropped_like_rpmsg() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "blob", [600]]) + msgpack.packb([0, 2, "status", []]))
        assert await link.messages(1) == [[1, 2, None, 1]]
        assert m4.stats.dropped_oversize_out == 1

    run_with_m4(scenario)


def test_interleaved_raw_text() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        await m4.notify("log", 1)
        raw = await link.raw(len(b"boot ok\r\n") + 8)
        assert raw.startswith(b"boot ok\r\n")
        assert msgpack.unpackb(raw[len(b"boot ok\r\n") :]) == [2, "log", [1]]

    run_with_m4(scenario, interleave_text=b"boot ok\r\n")
