"""Dial-backs of legacy holders (issue 20 item 5) and the rate-limited log, without a proxy:
one dial-back per port shared by every waiter, nothing is "dead" unless its port refuses, and
concurrent registrations never race in the table."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

import pytest

from tests.support.router import FakeProvider
from x8manager.proxy import routing
from x8manager.proxy.ratelimit import RateLimitedLog, shown
from x8manager.proxy.routing import Liveness, RouteExists, RoutingTable, is_listening


def test_a_dial_back_we_cannot_make_for_lack_of_descriptors_is_not_a_dead_holder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def out_of_descriptors(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    async def scenario() -> None:
        monkeypatch.setattr(routing.asyncio, "open_connection", out_of_descriptors)
        assert await is_listening(5005) is None
        monkeypatch.setattr(routing.asyncio, "open_connection", refused)
        assert await is_listening(5005) is False
    asyncio.run(scenario())


def test_one_dial_back_per_port_answers_every_waiter() -> None:
    async def scenario() -> None:
        dialled: list[int] = []
        release = asyncio.Event()

        async def probe(port: int) -> bool:
            dialled.append(port)
            await release.wait()
            return True

        liveness = Liveness(probe)
        waiters = [asyncio.create_task(liveness.alive(5005)) for _ in range(500)]
        await asyncio.sleep(0)
        assert liveness.dialling == 1
        waiters[0].cancel()  # one waiter going away does not cancel the others' answer
        release.set()
        answers = await asyncio.gather(*waiters[1:])
        assert answers == [True] * 499 and dialled == [5005]
        for _ in range(50):  # one after another: a few dial-backs a second, then the last answer
            assert await liveness.alive(5005) is True
        assert len(dialled) < 50
    asyncio.run(scenario())


def test_dial_backs_past_the_limit_are_unknown_and_the_holder_keeps_its_name() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def probe(port: int) -> bool:
            await release.wait()
            return False

        table = RoutingTable(live=probe)
        ports = range(6000, 6000 + routing.MAX_DIAL_BACKS + 1)
        for port in ports:
            await table.register_legacy(port, [f"name{port}"])
        busy = [asyncio.create_task(table.liveness.alive(port)) for port in ports[:-1]]
        await asyncio.sleep(0)
        last = ports[-1]
        with pytest.raises(RouteExists, match=f"route already exists: name{last}"):
            await table.add_route(f"name{last}", FakeProvider("a"))  # no dial-back to be had: refused
        assert table.port_of(f"name{last}") == last
        release.set()
        await asyncio.gather(*busy)
        await table.close()
    asyncio.run(scenario())


def test_concurrent_registrations_after_a_dial_back_do_not_race_in_the_table() -> None:
    async def dead(port: int) -> bool:
        await asyncio.sleep(0)
        return False

    async def scenario() -> None:
        table = RoutingTable(live=dead)
        await table.register_legacy(5005, ["x"])
        clients = [FakeProvider(label) for label in "abc"]
        outcomes = await asyncio.gather(*(table.add_route("x", one) for one in clients),
                                        return_exceptions=True)
        assert sorted(type(outcome).__name__ for outcome in outcomes) == \
            ["NoneType", "RouteExists", "RouteExists"]
        assert table.port_of("x") is None and len(table.routes()) == 1
        await table.close()
    asyncio.run(scenario())


def test_route_lines_come_in_a_burst_then_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("test.burst"), burst=3)
    with caplog.at_level(logging.INFO, logger="test.burst"):
        for n in range(1000):
            limited.info("routes", "route %d", n)
    assert caplog.messages == ["route 0", "route 1", "route 2"] and limited.held_back == 997
    assert shown("n" * 100_000).startswith("'nnn") and len(shown("n" * 100_000)) < 80
    assert shown("a\nb") == "'a\\nb'"
