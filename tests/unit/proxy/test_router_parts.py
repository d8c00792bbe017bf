"""Router-front parts without sockets: error mapping, object cutting, rate-limited logs, the table."""

from __future__ import annotations

import asyncio
import logging

import msgpack
import pytest

from tests.support.router import FakeProvider
from x8manager.m4sim import wire
from x8manager.proxy.ratelimit import RateLimitedLog
from x8manager.proxy.routerfront import bridge_error, m4_error_for_bridge
from x8manager.proxy.routing import RouteExists, RoutingTable
from x8manager.rpc.framing import Incomplete, InvalidMessage, ObjectCutter, first_object


def test_rpclib_errors_become_bridge_codes() -> None:
    assert m4_error_for_bridge("gas", wire.not_found_error("gas", 0)) == [2, "method gas not available"]
    arity = wire.arity_error("add", 2, 3)
    assert m4_error_for_bridge("add", arity) == [253, arity]
    # Any other text (rpclib's "threw an exception" one, which an M4 never sends: it halts instead).
    threw = ("rpclib: function 'read' (called with 0 arg(s)) threw an exception. The exception contained "
             "this information: i2c timeout.")
    assert m4_error_for_bridge("read", threw) == [255, threw]
    assert m4_error_for_bridge("x", [7, "own code"]) == [7, "own code"]  # already router-shaped
    assert m4_error_for_bridge("x", b"bytes text") == [255, "bytes text"]
    assert bridge_error("service on port 1: refused") == [255, "service on port 1: refused"]


def test_object_cutter_keeps_step_and_refuses_garbage_and_huge_headers() -> None:
    cutter = ObjectCutter(1000)
    one, two = msgpack.packb([0, 1, "a", []]), msgpack.packb([2, "b", [1]])
    assert [item.raw for item in cutter.feed(one + two[:2])] == [one]
    assert cutter.pending == 2
    assert [item.value for item in cutter.feed(two[2:])] == [[2, "b", [1]]]
    for bad in (b"\xc1", b"\xc6\x06\x00\x00\x00", b"\xdd\xff\xff\xff\xff", b"\x91" * 1001):
        with pytest.raises(InvalidMessage):
            ObjectCutter(1000).feed(bad)
    with pytest.raises(Incomplete):
        first_object(b"\x94\x00", 1000)
    assert first_object(one + b"tail", 1000).raw == one


def test_rate_limited_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"))
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for n in range(1000):
            limited.warning("flood", "bad input %d", n)
        limited.warning("other", "another kind")
    assert caplog.messages == ["bad input 0", "another kind"]


def test_one_table_router_routes_and_legacy_names() -> None:
    async def dead(port: int) -> bool:
        return False

    async def scenario() -> None:
        table = RoutingTable(live=dead)
        a, b = FakeProvider("a"), FakeProvider("b")
        await table.add_route("x", a)
        with pytest.raises(RouteExists, match="route already exists: x"):
            await table.add_route("x", b)
        assert await table.register_legacy(5005, ["x", "y"]) == ["route already exists: x"]
        assert table.provider_of("y") is not None and table.port_of("y") == 5005
        await table.add_route("y", b)  # the legacy holder does not answer: the route takes it
        assert table.provider_of("y") is b and table.port_of("y") is None
        assert not table.remove_route("x", b) and table.remove_route("x", a)
        assert table.drop_provider(b) == ["y"] and table.routes() == {}
    asyncio.run(scenario())
