"""The control surface's thread_calls: a sketch thread's calls with its fixed msgid and RPC.setTimeout."""

from __future__ import annotations

import asyncio

import msgpack
from m4sim_memory_link import MemoryLink, run_with_m4

from x8manager.m4sim import VirtualM4
from x8manager.m4sim.control import control_methods


def test_thread_calls_use_the_threads_one_msgid_and_report_a_timeout_as_the_sketch_sees_it() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        thread_calls = control_methods(m4)["thread_calls"]
        msgid = m4.thread(2).msgid
        # Nobody answers: the call times out (nil, RPC.timedOut()).
        assert await thread_calls(2, [["slow", ["a"]]], 1) == [[None, True]]
        calls = asyncio.ensure_future(thread_calls(2, [["square", [3]], ["square", [4]]]))
        for sent, arg in ((1, 3), (2, 4)):  # one at a time: the second goes out after the first's reply
            requests = [m for m in await link.messages(sent + 1) if m[0] == 0]
            assert requests[sent] == [0, msgid, "square", [arg]]
            link.send(bytes(msgpack.packb([1, msgid, None, arg * arg])))
        answers = await calls
        assert answers == [[9, False], [16, False]]

    run_with_m4(scenario)
