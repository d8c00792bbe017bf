"""The router front under attack (issue 20 items 5-7, 9, 10): floods of registrations, names and
log-worthy messages, deep nesting, idle TCP connections. Each is bounded in count; nothing waits
on time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import msgpack
import pytest

from tests.support.proxy import register, serving
from tests.support.router import Client, client, rig
from x8manager.common.net import free_local_port
from x8manager.proxy.routerfront import MAX_NAME_BYTES, MAX_ROUTER_CONNECTIONS, MAX_ROUTES_PER_CONNECTION

# Pipelined $/register requests per client in the flood (three clients at once).
FLOOD = 200


def proxy_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name.startswith("x8manager.proxy")]


async def replies(one: Client, count: int) -> list[list[object]]:
    return [await one.next() for _ in range(count)]


def test_a_register_flood_does_not_take_a_live_legacy_services_method(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, m4, path), serving(proxy, temperature=lambda: 21) as service:
            flood = b"".join(msgpack.packb([0, i, "$/register", ["temperature"]]) for i in range(FLOOD))
            async with client(path) as a, client(path) as b, client(path) as c:
                for one in (a, b, c):
                    one.writer.write(flood)
                for one in (a, b, c):  # every registration answered, every one refused
                    assert await replies(one, FLOOD) == [
                        [1, i, [5, "route already exists: temperature"], None] for i in range(FLOOD)]
            assert proxy.routes.port_of("temperature") == service.port and proxy.routes.routes() == {}
            assert await m4.call("temperature") == 21  # the M4's next call still reaches the service
    asyncio.run(scenario())


def test_concurrent_registrations_of_a_dead_holders_name_are_each_answered_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, _, path):
            gone = free_local_port()  # registered, then nobody listens there
            await register(proxy.register_port, msgpack.packb([0, 0, "register", [gone, ["x"]]]))
            async with client(path) as a, client(path) as b, client(path) as c:
                for one in (a, b, c):
                    one.writer.write(msgpack.packb([0, 1, "$/register", ["x"]]) * 2)
                answers = [reply for one in (a, b, c) for reply in await replies(one, 2)]
                assert sorted(str(reply[2]) for reply in answers) == \
                    ["None"] + ["[5, 'route already exists: x']"] * 5
                assert proxy.routes.port_of("x") is None and len(proxy.routes.routes()) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    asyncio.run(scenario())


def test_names_are_bounded_in_length_and_per_connection_and_logged_short(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, _, path), client(path) as a:
            with caplog.at_level(logging.INFO, logger="x8manager"):
                huge = "n" * (512 * 1024)
                too_long = f"invalid params: a method name is at most {MAX_NAME_BYTES} bytes, got {len(huge)}"
                assert await a.request(1, "$/register", huge) == [1, 1, [1, too_long], None]
                count = MAX_ROUTES_PER_CONNECTION + 50
                a.writer.write(b"".join(msgpack.packb([0, i, "$/register", [f"name_{i:05d}" + "x" * 200]])
                                        for i in range(count)))
                answers = await replies(a, count)
                assert [reply[3] for reply in answers[:MAX_ROUTES_PER_CONNECTION]] == \
                    [True] * MAX_ROUTES_PER_CONNECTION
                assert {reply[2][0] for reply in answers[MAX_ROUTES_PER_CONNECTION:]} == {4}  # type: ignore[index]
                assert len(proxy.routes.routes()) == MAX_ROUTES_PER_CONNECTION
                assert await a.request(2, "$/reset") == [1, 2, None, True]
            logged = sum(len(record.getMessage()) for record in proxy_lines(caplog))
            assert logged < 32 * 1024, f"{logged} bytes of log for {count} names"
            assert huge[:1000] not in caplog.text
    asyncio.run(scenario())


def test_peer_triggered_lines_on_the_router_front_are_rate_limited(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        count = 2000
        async with rig(tmp_path) as (_, m4, path), client(path) as holder, client(path) as attacker:
            assert await holder.request(1, "$/register", "taken") == [1, 1, None, True]
            with caplog.at_level(logging.INFO, logger="x8manager"):
                unsolicited = b"".join(msgpack.packb([1, 10_000 + i, None, 1]) for i in range(count))
                refused = b"".join(msgpack.packb([0, i, "$/register", ["taken"]]) for i in range(count))
                attacker.writer.write(unsolicited + refused)
                assert len(await replies(attacker, count)) == count
                m4.pause_reading()  # the M4 does not read: its link backs up, notifications are lost
                try:
                    attacker.writer.write(msgpack.packb([2, "tick", ["x" * 40]]) * count)
                    assert await attacker.request(1, "$/version") == \
                        [1, 1, None, "x8manager m4-proxy 0.1.0"]
                finally:
                    m4.resume_reading()
            lines = proxy_lines(caplog)
            assert len(lines) < 20, f"{len(lines)} log lines for {3 * count} messages"
    asyncio.run(scenario())


def test_a_request_nested_1000_deep_closes_its_connection_and_is_never_forwarded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (_, _, path), client(path) as provider:
            assert await provider.request(1, "$/register", "deep") == [1, 1, None, True]
            for deep in (b"\x94\x00\x05\xa4deep\x91" + b"\x91" * 1000 + b"\xc0",  # a request
                         b"\x93\x02\xa4deep\x91" + b"\x91" * 1000 + b"\xc0"):  # a notification
                async with client(path) as sender:
                    sender.writer.write(deep)
                    assert await sender.closed()
            async with client(path) as other:
                other.writer.write(msgpack.packb([0, 7, "deep", [1]]))
                _, _, method, params = await provider.next()
                assert (method, params) == ("deep", [1])  # the first thing the provider got
    asyncio.run(scenario())


def test_idle_tcp_connections_do_not_lock_bridge_apps_out_of_the_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, router_listen="127.0.0.1:0") as (proxy, _, path):
            assert proxy.router is not None and proxy.router.tcp_address is not None
            idle: list[asyncio.StreamWriter] = []
            try:
                for n in range(MAX_ROUTER_CONNECTIONS):
                    tcp = Client(*await asyncio.open_connection(*proxy.router.tcp_address))
                    idle.append(tcp.writer)
                    assert (await tcp.request(n, "$/version"))[2] is None  # taken, then left idle
                reader, writer = await asyncio.open_connection(*proxy.router.tcp_address)
                assert await Client(reader, writer).closed()  # TCP's share is used up...
                writer.close()
                async with client(path) as app:  # ...the socket's is not
                    assert await app.request(1, "$/version") == [1, 1, None, "x8manager m4-proxy 0.1.0"]
            finally:
                for writer in idle:
                    with contextlib.suppress(Exception):
                        writer.close()
    asyncio.run(scenario())
