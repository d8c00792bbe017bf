"""The M4 calls' reply deadlines: one timer for every call in flight (m4port._Deadlines)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.support import wait_until
from x8manager.proxy.m4port import _Deadlines


class _Waiting:
    """What _Deadlines reads of a call: its wait, its deadline, whether it is done."""

    def __init__(self, name: str, wait: float, expired: list[str]) -> None:
        self.name = name
        self.wait = wait
        self.deadline = 0.0
        self.done: Callable[[Any], None] | None = lambda _: None
        self._expired = expired

    def timed_out(self) -> None:
        self.done = None
        self._expired.append(self.name)

    def finish(self, deadlines: _Deadlines) -> None:
        self.done = None
        deadlines.finished(self.wait)


def test_only_unfinished_calls_time_out_in_deadline_order_across_waits() -> None:
    async def scenario() -> None:
        expired: list[str] = []
        deadlines = _Deadlines(asyncio.get_running_loop())
        calls = {name: _Waiting(name, wait, expired)
                 for name, wait in [("slow-1", 0.20), ("fast-1", 0.05), ("fast-2", 0.05), ("slow-2", 0.20)]}
        for call in calls.values():
            deadlines.add(call)  # type: ignore[arg-type]  # the fields _Deadlines reads
        calls["fast-1"].finish(deadlines)  # at its queue's head: leaves at once
        calls["slow-2"].finish(deadlines)  # behind slow-1: leaves when slow-1 does
        await wait_until(lambda: len(expired) == 2, "the two unfinished calls time out")
        assert expired == ["fast-2", "slow-1"]
        assert all(not queue for queue in deadlines._queues.values())
        deadlines.close()

    asyncio.run(scenario())


def test_a_call_added_later_with_an_earlier_deadline_moves_the_timer_up() -> None:
    async def scenario() -> None:
        expired: list[str] = []
        deadlines = _Deadlines(asyncio.get_running_loop())
        long_call = _Waiting("long", 30.0, expired)
        short_call = _Waiting("short", 0.05, expired)
        deadlines.add(long_call)  # type: ignore[arg-type]
        deadlines.add(short_call)  # type: ignore[arg-type]
        await wait_until(lambda: expired == ["short"], "the short call times out")
        assert long_call.done is not None  # still waiting: its deadline is far off
        long_call.finish(deadlines)
        deadlines.close()

    asyncio.run(scenario())


def test_finished_calls_do_not_pile_up_while_the_timer_waits() -> None:
    async def scenario() -> None:
        expired: list[str] = []
        deadlines = _Deadlines(asyncio.get_running_loop())
        for n in range(10_000):  # calls answered one after another, as the M4 does
            call = _Waiting(f"call-{n}", 1.0, expired)
            deadlines.add(call)  # type: ignore[arg-type]
            call.finish(deadlines)
        assert sum(len(queue) for queue in deadlines._queues.values()) == 0
        assert expired == []
        deadlines.close()

    asyncio.run(scenario())
