"""The trace tap against the real proxy and the virtual M4, read by the real x8-trace.

Calls both ways through the call port, the register port's services and the router front; the
events x8-trace prints name them with the right direction, front, method and msgids. A reader that
never reads costs the proxy nothing but dropped (and counted) events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.support.proxy import M4_THREAD_ID, WAIT, exchange, running_proxy, serving, wait_for
from x8manager.m4sim.h7 import H7_RING_BYTES
from x8manager.proxy import M4Proxy
from x8manager.proxy.tap import MAX_UNSENT

X8_TRACE = [sys.executable, "-m", "x8manager.trace.cli"]


@contextlib.asynccontextmanager
async def traced_proxy(tmp_path: Path) -> AsyncIterator[tuple[M4Proxy, Any, str]]:
    sock = str(tmp_path / "trace.sock")
    async with running_proxy(tmp_path, trace_socket=sock) as (proxy, m4):
        yield proxy, m4, sock


@contextlib.asynccontextmanager
async def x8_trace(proxy: M4Proxy, sock: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """x8-trace attached to *proxy* (returns once the proxy counts it as a client)."""
    assert proxy.trace is not None
    before = proxy.trace.clients
    process = await asyncio.create_subprocess_exec(
        *X8_TRACE, "--socket", sock, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for(lambda: proxy.trace is not None and proxy.trace.clients > before,
                       what="x8-trace attached")
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def json_events(process: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    async with asyncio.timeout(WAIT):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


def call(method: str, *params: Any, msgid: int = 0) -> bytes:
    packed: bytes = msgpack.packb([0, msgid, method, list(params)])
    return packed


def test_a_known_sequence_both_ways_with_methods_msgids_and_latency(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with traced_proxy(tmp_path) as (proxy, m4, sock):
            m4.bind("add", lambda a, b: a + b)
            async with serving(proxy, ping=lambda text: f"pong {text}") as service, \
                    x8_trace(proxy, sock, "--json", "--count", "5") as trace:
                app = f"service on port {service.port}"
                reply = msgpack.unpackb(await exchange(proxy.call_port, call("add", 2, 3, msgid=7)))
                assert reply == [1, 7, None, 5]
                assert await m4.call("ping", "hi") == "pong hi"
                await m4.notify("log_line", "boot done")
                events = await json_events(trace)
        wire_msgid = events[0]["msgid"]
        summary = [(e["dir"], e["front"], e["type"], e["method"], e["msgid"]) for e in events]
        assert summary == [
            ("Linux->M4", "call port", "request", "add", wire_msgid),
            ("M4->Linux", "call port", "response", "add", wire_msgid),
            ("M4->Linux", "register port", "request", "ping", M4_THREAD_ID),
            ("Linux->M4", "register port", "response", "ping", M4_THREAD_ID),
            ("M4->Linux", "", "notification", "log_line", None),
        ]
        assert events[0]["caller_msgid"] == 7  # the caller's own id, beside the one on the M4 wire
        assert events[1]["latency_ms"] >= 0 and "error" not in events[1]
        assert events[2]["app"] == events[3]["app"] == app
        assert events[3]["latency_ms"] >= 0
        assert events[4]["error"] == "no Linux service registered for it"
        assert all(event["size"] > 0 and event["time"] > 0 for event in events)
    asyncio.run(scenario())


def test_nothing_is_traced_without_a_client_and_the_socket_is_root_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with traced_proxy(tmp_path) as (proxy, m4, sock):
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            assert proxy.m4.tap is None  # the hot paths check this one attribute
            m4.bind("add", lambda a, b: a + b)
            await exchange(proxy.call_port, call("add", 1, 1))
            assert proxy.trace is not None and proxy.trace.events == 0
            async with x8_trace(proxy, sock, "--json"):
                assert proxy.m4.tap is not None
            await wait_for(lambda: proxy.trace is not None and proxy.trace.clients == 0, what="detached")
            assert proxy.m4.tap is None
    asyncio.run(scenario())
    assert not (tmp_path / "trace.sock").exists()  # removed when the proxy stops


def test_filters_by_method_and_by_the_app_of_a_registered_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with traced_proxy(tmp_path) as (proxy, m4, sock):
            m4.bind("add", lambda a, b: a + b)
            async with serving(proxy, ping=lambda: "pong") as service, \
                    x8_trace(proxy, sock, "--json", "--count", "2", "--app", str(service.port)) as by_app, \
                    x8_trace(proxy, sock, "--json", "--count", "2", "--method", "add") as by_method:
                await exchange(proxy.call_port, call("add", 1, 2))
                assert await m4.call("ping") == "pong"
                apps, methods = await json_events(by_app), await json_events(by_method)
        assert [(e["type"], e["method"]) for e in apps] == [("request", "ping"), ("response", "ping")]
        assert [(e["type"], e["method"]) for e in methods] == [("request", "add"), ("response", "add")]
    asyncio.run(scenario())


def test_an_unanswered_call_shows_its_timeout_as_an_error_with_latency(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with traced_proxy(tmp_path) as (proxy, m4, sock):
            m4.switches.answer_calls = False  # takes the call, never replies
            async with x8_trace(proxy, sock, "--count", "2") as trace:
                assert await exchange(proxy.call_port, call("slow")) == b""
                async with asyncio.timeout(WAIT):
                    out, _ = await trace.communicate()
        request, failure = out.decode().splitlines()
        assert "Linux->M4" in request and "request" in request and " slow " in request
        assert "M4->Linux" in failure and "error: no reply from the M4 within 1 s" in failure
        assert " ms" in failure
    asyncio.run(scenario())


def test_a_router_front_call_names_the_router_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        router_socket = str(tmp_path / "router.sock")
        async with running_proxy(tmp_path, trace_socket=str(tmp_path / "trace.sock"),
                                 router_socket=router_socket) as (proxy, m4):
            m4.bind("add", lambda a, b: a + b)
            async with x8_trace(proxy, str(tmp_path / "trace.sock"), "--json", "--count", "2",
                                "--app", "router client") as trace:
                reader, writer = await asyncio.open_unix_connection(router_socket)
                writer.write(call("add", 20, 22, msgid=3))
                async with asyncio.timeout(WAIT):
                    assert msgpack.unpackb(await reader.read(4096)) == [1, 3, None, 42]
                writer.close()
                events = await json_events(trace)
        assert [(e["front"], e["type"], e["method"]) for e in events] == [
            ("router front", "request", "add"), ("router front", "response", "add")]
        assert all(e["app"].startswith("router client 1 (pid ") for e in events)
    asyncio.run(scenario())


def test_a_reader_that_never_reads_costs_dropped_events_not_proxy_memory_or_speed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with traced_proxy(tmp_path) as (proxy, m4, sock):
            m4.bind("add", lambda a, b: a + b)
            stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(sock)
            stuck.setblocking(False)
            try:
                await wait_for(lambda: proxy.trace is not None and proxy.trace.clients == 1, what="attached")
                client = next(iter(proxy.trace._clients))  # its queue is the point
                # The M4's notifications are the cheapest events to make in numbers.
                flood = msgpack.packb([2, "log_line", ["x" * 150]])
                burst = H7_RING_BYTES // len(flood) // 2  # what the virtual H7 buffers without loss
                while client.dropped == 0:
                    target = proxy.stats.unroutable + burst
                    for _ in range(burst):
                        m4.send_raw(flood)
                    await wait_for(lambda target=target: proxy.stats.unroutable >= target, what="flood taken")
                assert client.transport is not None
                assert client.transport.get_write_buffer_size() <= MAX_UNSENT + 1024
                # The proxy still answers at once.
                assert msgpack.unpackb(await exchange(proxy.call_port, call("add", 1, 2))) == [1, 0, None, 3]
                # Once read, the stream says how much was dropped, before the next event.
                lines = b""
                loop = asyncio.get_running_loop()
                async with asyncio.timeout(WAIT):
                    while b'"type":"dropped"' not in lines:
                        with contextlib.suppress(BlockingIOError):
                            lines += await loop.sock_recv(stuck, 65536)
                        m4.send_raw(flood)
                        await asyncio.sleep(0)
                dropped = next(json.loads(line) for line in lines.split(b"\n") if b'"dropped"' in line)
                assert dropped["count"] > 0
            finally:
                stuck.close()
    asyncio.run(scenario())


def test_a_second_proxy_does_not_take_a_live_trace_socket(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with traced_proxy(tmp_path) as (first, _m4, sock):
            second_dir = tmp_path / "second"
            second_dir.mkdir()
            async with running_proxy(second_dir, trace_socket=sock) as (second, _):
                assert second.trace is None and first.trace is not None
                assert "another m4-proxy serves a trace there" in caplog.text
            async with x8_trace(first, sock, "--json"):  # still the first proxy's
                pass
    asyncio.run(scenario())


def test_held_calls_show_as_held_then_delivered_expired_or_abandoned(tmp_path: Path) -> None:
    async def scenario() -> None:
        sock = str(tmp_path / "trace.sock")
        async with running_proxy(tmp_path, trace_socket=sock, hold_calls=2.0) as (proxy, m4), \
                x8_trace(proxy, sock, "--json", "--count", "7") as trace:
            # Held, then given up on by its thread (the same msgid calls again), then delivered.
            gave_up = asyncio.create_task(m4.call_raw("late", 1, msgid=M4_THREAD_ID))
            await wait_for(lambda: proxy.stats.held == 1, what="held")
            gave_up.cancel()  # the thread's RPC.setTimeout ran out
            with contextlib.suppress(asyncio.CancelledError):
                await gave_up
            again = asyncio.create_task(m4.call_raw("late", 2, msgid=M4_THREAD_ID))
            await wait_for(lambda: proxy.stats.held == 2, what="held again")
            async with serving(proxy, late=lambda n: n) as service:
                app = f"service on port {service.port}"
                assert msgpack.unpackb((await again).raw)[3] == 2
            # Nobody ever provides this one: held, then no reply.
            never = asyncio.create_task(m4.call_raw("never", msgid=M4_THREAD_ID + 1))
            await wait_for(lambda: proxy.stats.held_expired == 1, what="expired")
            never.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await never
            events = await json_events(trace)
        summary = [(e["dir"], e["front"], e["type"], e["method"]) for e in events]
        assert summary == [
            ("M4->Linux", "", "held", "late"),
            ("Linux->M4", "", "abandoned", "late"),
            ("M4->Linux", "", "held", "late"),
            ("M4->Linux", "register port", "request", "late"),
            ("Linux->M4", "register port", "response", "late"),
            ("M4->Linux", "", "held", "never"),
            ("Linux->M4", "", "error", "never"),
        ]
        assert "held up to 2 s" in events[0]["error"]
        assert "called again with this msgid" in events[1]["error"]
        assert events[3]["app"] == app and events[3]["held_ms"] >= 0
        assert events[6]["error"] == "nobody provided it within 2 s: no reply to the M4"
        assert all(e["msgid"] >= M4_THREAD_ID for e in events)
    asyncio.run(scenario())
