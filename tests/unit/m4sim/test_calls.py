"""M4 -> Linux: sketch threads' RPC.call with fixed msgids, timeouts, nil on errors, halts."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from m4sim_memory_link import MemoryLink, run_with_m4

from tests.support import wait_until
from x8manager.m4sim import M4Halted, M4SimError, VirtualM4
from x8manager.m4sim.cxx import Float32
from x8manager.m4sim.wire import THREAD_ID_BASE


def reply(msgid: int, result: Any, error: Any = None) -> bytes:
    return bytes(msgpack.packb([1, msgid, error, result]))


async def requests(link: MemoryLink, count: int) -> list[Any]:
    return [m for m in await link.messages(count) if m[0] == 0][:count]


def test_a_call_carries_the_thread_id_packed_as_uint32() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        call = asyncio.create_task(m4.call("multiply", 3, 4))
        assert await link.raw(19) == bytes.fromhex("9400ce10000a48a86d756c7469706c79920304")
        link.send(bytes.fromhex("9401ce10000a48c00c"))
        assert await call == 12

    run_with_m4(scenario)


def test_a_thread_reuses_its_msgid_call_after_call() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        thread = m4.thread(3)
        for n in range(3):
            call = asyncio.create_task(thread.call("square", n))
            request = (await requests(link, n + 1))[n]
            assert request[1] == thread.msgid == THREAD_ID_BASE + 3 * 0x44
            link.send(reply(request[1], n * n))
            assert await call == n * n

    run_with_m4(scenario)


def test_ten_threads_have_ten_ids_and_an_eleventh_does_not_exist() -> None:
    m4 = VirtualM4(demo=False)
    ids = {m4.thread(i).msgid for i in range(10)}
    assert len(ids) == 10 and all(0x10000000 <= i <= 0x7FFFFFFF for i in ids)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        m4.thread(10)


def test_threads_answered_in_reverse_order_each_get_their_own_answer() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        calls = [asyncio.create_task(m4.thread(i).call("square", i)) for i in range(10)]
        sent = await requests(link, 10)
        for request in reversed(sent):
            link.send(reply(request[1], request[3][0] ** 2))
        assert await asyncio.gather(*calls) == [i * i for i in range(10)]

    run_with_m4(scenario)


def test_a_thread_makes_one_call_at_a_time() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        first = asyncio.create_task(m4.call("slow"))
        await requests(link, 1)
        with pytest.raises(M4SimError, match=r"one call at a time"):
            await m4.call("again")
        link.send(reply(THREAD_ID_BASE, 1))
        assert await first == 1

    run_with_m4(scenario)


def test_without_a_timeout_a_call_waits_for_its_reply() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        waiting = asyncio.create_task(m4.thread(0).call("later"))
        # Another thread's full round trip later the first call still waits (no default timeout).
        other = asyncio.create_task(m4.thread(1).call("now"))
        sent = await requests(link, 2)
        link.send(reply(sent[1][1], "done"))
        assert await other == "done"
        assert not waiting.done()
        link.send(reply(sent[0][1], "at last"))
        assert await waiting == "at last"

    run_with_m4(scenario)


def test_a_timed_out_call_returns_nil_and_says_so() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        thread = m4.thread(2)
        thread.set_timeout(20)
        assert await thread.call("nobody") is None
        assert thread.timed_out
        assert m4.stats.timeouts == 1

    run_with_m4(scenario)


def test_the_same_thread_calling_after_a_timeout_takes_the_late_reply_of_the_first_call() -> None:
    """The real library's bug, reproduced: both calls carry the thread's id."""

    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        thread = m4.thread(0)
        thread.set_timeout(20)
        assert await thread.call("first") is None
        thread.set_timeout(None)
        second = asyncio.create_task(thread.call("second"))
        first_request, second_request = await requests(link, 2)
        assert first_request[1] == second_request[1] == thread.msgid
        link.send(reply(thread.msgid, "answer to first"))
        assert await second == "answer to first"
        assert not thread.timed_out

    run_with_m4(scenario)


def test_an_error_reply_reaches_the_sketch_as_nil_and_its_text_is_lost() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        call = asyncio.create_task(m4.call("divide", 1, 0))
        (request,) = await requests(link, 1)
        link.send(reply(request[1], None, "division by zero"))
        assert await call is None
        assert m4.stats.error_replies == 1 and not m4.halted

    run_with_m4(scenario)


def test_as_on_a_nil_result_halts_the_m4_which_then_answers_nothing_until_reset() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        call = asyncio.create_task(m4.call_as("int", "remoteAdd", 1, 2))
        (request,) = await requests(link, 1)
        link.send(reply(request[1], None, "no such method"))
        with pytest.raises(M4Halted, match=r"as<int>"):
            await call
        assert m4.halted and m4.stats.halted
        link.send(msgpack.packb([0, 1, "whoami", []]))
        with pytest.raises(M4Halted):
            await m4.call("anything")
        await wait_until(lambda: m4.stats.dropped_halted == 1, "the halted M4 to drop the call")
        m4.reset()
        link.send(msgpack.packb([0, 2, "whoami", []]))
        answers = [m for m in await link.messages(2) if m[0] == 1]
        assert [a[1] for a in answers] == [2]  # the call to the halted M4 never got an answer

    run_with_m4(scenario)


def test_as_converts_a_good_result() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        call = asyncio.create_task(m4.thread(4).call_as("float", "divide", 1.0, 3.0))
        (request,) = await requests(link, 1)
        link.send(reply(request[1], 1 / 3))
        assert await call == pytest.approx(1 / 3, rel=1e-6)
        assert not m4.halted

    run_with_m4(scenario)


def test_a_wrong_typed_call_halts_the_m4_and_later_calls_time_out() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        link.send(msgpack.packb([0, 1, "add", ["a", "b"]]))
        link.send(msgpack.packb([0, 2, "add", [1, 2]]))
        link.send(msgpack.packb([0, 3, "whoami", []]))
        await wait_until(lambda: m4.stats.dropped_halted == 2, "the halted M4 to drop two calls")
        assert m4.halted and "add() argument 1" in m4.halt_reason
        assert link.writes == []

    run_with_m4(scenario)


def test_a_pending_call_ends_when_the_m4_halts() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        pending = asyncio.create_task(m4.thread(5).call("waiting"))
        await requests(link, 1)
        link.send(msgpack.packb([0, 1, "add", [1.5, 2]]))
        with pytest.raises(M4Halted):
            await pending

    run_with_m4(scenario)


def test_serial_println_is_two_tty_notifications_with_bin() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        await m4.serial_println("hi")
        raw = await link.raw(22)
        assert raw == bytes.fromhex("9302a374747991c4026869") + bytes.fromhex("9302a374747991c4020d0a")

    run_with_m4(scenario)


def test_a_float_argument_goes_out_as_float32_and_a_double_as_float64() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        await m4.notify("divide", Float32(1.5), 1.5)
        assert await link.raw(24) == bytes.fromhex("9302a6646976696465") + bytes.fromhex(
            "92ca3fc00000cb3ff8000000000000")

    run_with_m4(scenario)


def test_rpc_set_timeout_is_one_value_for_every_thread() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        m4.set_timeout(10)
        results = await asyncio.gather(*(m4.thread(i).call("nobody") for i in (0, 9)))
        assert results == [None, None]
        assert m4.thread(0).timed_out and m4.thread(9).timed_out

    run_with_m4(scenario)
