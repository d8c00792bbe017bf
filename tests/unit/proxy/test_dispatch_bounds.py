"""The M4 dispatcher's bounds without sockets: a sketch (or garbage that parses) cannot make the
proxy hold, count or remember without limit, and every call it sends is released again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack

from x8manager.proxy.dispatch import (
    MAX_CALLS_PER_PROVIDER,
    MAX_HELD,
    MAX_HELD_PER_METHOD,
    MAX_UNPROVIDED,
    DispatchPolicy,
    DispatchStats,
    M4Dispatcher,
)
from x8manager.proxy.routing import ProviderDone, ProviderFailed, RoutingTable
from x8manager.rpc.framing import Frame, validate_message


class FakeM4:
    """What the dispatcher uses of the M4 port: its tap and its replies."""

    def __init__(self) -> None:
        self.tap = None
        self.replies: list[bytes] = []

    def reply(self, raw: bytes) -> None:
        self.replies.append(raw)


class Recorder:
    """A provider that keeps every call's callback and answers when told."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.calls: list[tuple[Frame, ProviderDone]] = []
        self.withdrawn = 0

    def call(self, frame: Frame, done: ProviderDone, *, wait: float) -> Callable[[], None]:
        self.calls.append((frame, done))

        def withdraw() -> None:
            self.withdrawn += 1

        return withdraw

    def notify(self, frame: Frame) -> None:
        """Not used here."""


def call(method: str, msgid: int, *params: Any) -> Frame:
    return validate_message(msgpack.packb([0, msgid, method, list(params)]))


def dispatcher(**policy: Any) -> tuple[M4Dispatcher, RoutingTable, FakeM4]:
    table, m4 = RoutingTable(), FakeM4()
    return M4Dispatcher(table, m4, DispatchPolicy(service_timeout=10, **policy), DispatchStats()), table, m4  # type: ignore[arg-type]


def test_held_calls_are_bounded_per_method_and_in_all_the_oldest_going_first() -> None:
    async def scenario() -> None:
        dispatch, _, m4 = dispatcher()
        for msgid in range(MAX_HELD_PER_METHOD + 4):
            dispatch.on_frame(call("one", msgid))
        assert dispatch.held == MAX_HELD_PER_METHOD and dispatch.stats.held_expired == 4
        for msgid in range(1000, 1000 + MAX_HELD * 2):
            dispatch.on_frame(call(f"m{msgid % 8}", msgid))
        assert dispatch.held == MAX_HELD
        assert m4.replies == []  # silence, never an error
        dispatch.close()
    asyncio.run(scenario())


def test_names_called_in_vain_are_bounded() -> None:
    async def scenario() -> None:
        dispatch, _, _ = dispatcher(hold=0)
        for n in range(MAX_UNPROVIDED * 3):
            dispatch.on_frame(call(f"name{n}", 1))
        names = dispatch.unprovided()
        assert len(names) == MAX_UNPROVIDED and f"name{MAX_UNPROVIDED * 3 - 1}" in names
    asyncio.run(scenario())


def test_every_call_sent_is_released_answered_failed_or_abandoned() -> None:
    async def scenario() -> None:
        dispatch, table, m4 = dispatcher()
        busy, other = Recorder("busy app"), Recorder("other app")
        await table.add_route("slow", busy)
        await table.add_route("fast", other)
        for msgid in range(MAX_CALLS_PER_PROVIDER + 5):
            dispatch.on_frame(call("slow", msgid))
        assert len(busy.calls) == MAX_CALLS_PER_PROVIDER and dispatch.stats.over_limit == 5
        dispatch.on_frame(call("fast", 9999))
        assert len(other.calls) == 1  # another provider is not held back
        dispatch.on_frame(call("slow", 0))  # thread 0 gave up and calls again: withdrawn, replaced
        assert busy.withdrawn == 1 and dispatch.stats.abandoned == 1
        _, late_done = busy.calls[0]
        late_done(Frame(None, b"late"))  # type: ignore[arg-type]  # a reply after the withdrawal
        for _, done in busy.calls[1:]:
            done(ProviderFailed(3, "gone"))
        _, done = other.calls[0]
        done(ProviderFailed(3, "gone"))
        assert dispatch.in_flight == 0
        assert m4.replies == []  # nothing the proxy itself would say reaches the M4
    asyncio.run(scenario())
