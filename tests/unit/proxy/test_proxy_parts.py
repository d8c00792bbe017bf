"""Proxy parts without the M4: registry messages, pending calls, listeners, flags, link specs."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x8manager.proxy import M4Proxy, ProxyConfig
from x8manager.proxy.cli import build_parser
from x8manager.proxy.link import Backoff, StartupError, parse_link_spec
from x8manager.proxy.listeners import make_listeners
from x8manager.proxy.pending import PendingCalls
from x8manager.proxy.registry import RegisterContext, handle_register_message
from x8manager.proxy.routing import RoutingTable


async def _nobody_listens(port: int) -> bool:
    return False


async def _everybody_listens(port: int) -> bool:
    return True


def table(path: Path | None = None, *, live: bool = False) -> RoutingTable:
    return RoutingTable(path, live=_everybody_listens if live else _nobody_listens)


def test_registry_dead_holder_loses_its_name_and_the_log_names_the_change(
        caplog: pytest.LogCaptureFixture) -> None:
    routes = table()
    with caplog.at_level(logging.INFO):
        asyncio.run(routes.register_legacy(5005, ["tty", "count"]))
        asyncio.run(routes.register_legacy(5006, ["len", "tty"]))
    assert routes.snapshot() == {"count": 5005, "len": 5006, "tty": 5006}
    # The original's line, with this registration's names only (not the whole table).
    assert caplog.messages[-1] == "Registering service on port  5006  with functions  map[len:5006 tty:5006]"
    assert routes.port_of("nothing") is None and len(routes) == 3


def test_registry_live_holder_keeps_its_name(caplog: pytest.LogCaptureFixture) -> None:
    routes = table(live=True)
    with caplog.at_level(logging.INFO):
        assert asyncio.run(routes.register_legacy(5005, ["tty"])) == []
        refused = asyncio.run(routes.register_legacy(5006, ["tty", "len"]))
    assert refused == ["'tty' is registered by the live service on port 5005"]
    assert routes.snapshot() == {"len": 5006, "tty": 5005}
    assert any("5005" in line and "5006" in line and "refused" in line for line in caplog.messages)


def test_register_message_replies() -> None:
    async def scenario() -> None:
        routes = table()
        assert await handle_register_message([0, 0, "register", [5005, ["a"]]], RegisterContext(routes)) \
            == bytes.fromhex("940100c0a0")
        assert await handle_register_message([2, "register", [5006, ["b"]]], RegisterContext(routes)) is None
        assert await handle_register_message([0, 300, b"register", [5007, [b"c"]]], RegisterContext(routes)) \
            == bytes.fromhex("9401d1012cc0a0")
        reply = await handle_register_message([0, 9, "registry", []], RegisterContext(routes))
        assert reply is not None and msgpack.unpackb(reply) == [1, 9, None, {"a": 5005, "b": 5006, "c": 5007}]
        assert await handle_register_message([2, "nope", []], RegisterContext(routes)) is None
    asyncio.run(scenario())


def test_pending_calls_ids_unique_and_late_replies_refused() -> None:
    async def scenario() -> None:
        pending = PendingCalls(first_id=2**32 - 2)
        ids = [pending.open() for _ in range(4)]
        assert [msgid for msgid, _ in ids] == [2**32 - 2, 2**32 - 1, 0, 1]  # wraps inside uint32
        first_id, first = ids[0]
        assert pending.resolve(first_id, b"reply") and await first == b"reply"
        assert not pending.resolve(first_id, b"again")  # answered already
        pending.close(first_id)
        second_id, second = ids[1]
        pending.close(second_id)  # the caller timed out
        assert second.cancelled() and not pending.resolve(second_id, b"late")
        assert not pending.resolve(12345, b"unsolicited")
        assert len(pending) == 2

    asyncio.run(scenario())


def test_pending_calls_skip_ids_still_in_flight() -> None:
    async def scenario() -> None:
        pending = PendingCalls(first_id=7)
        held, _ = pending.open()
        pending._next = held  # the counter came all the way round
        assert pending.open()[0] == held + 1

    asyncio.run(scenario())


def test_default_listeners_dual_stack_register_ipv4_plus_ipv6_calls() -> None:
    register = make_listeners("register", None, 0, dual_stack=True)
    calls = make_listeners("calls", None, 0, dual_stack=False)
    try:
        assert register[0].family in (socket.AF_INET6, socket.AF_INET)
        if register[0].family == socket.AF_INET6:
            assert register[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            with socket.create_connection(("127.0.0.1", register[0].getsockname()[1]), timeout=5):
                pass  # IPv4 reaches the dual-stack socket
        assert calls[0].family == socket.AF_INET and calls[0].getsockname()[0] == "0.0.0.0"
        if len(calls) == 2:
            assert calls[1].family == socket.AF_INET6
            assert calls[1].getsockname()[1] == calls[0].getsockname()[1]
    finally:
        for sock in register + calls:
            sock.close()


def test_listener_errors_are_startup_errors() -> None:
    with pytest.raises(StartupError, match="--bind"):
        make_listeners("calls", "no.such.host.invalid", 0, dual_stack=False)
    first = make_listeners("calls", "127.0.0.1", 0, dual_stack=False)
    try:
        with pytest.raises(StartupError, match="in use"):
            make_listeners("calls", "127.0.0.1", first[0].getsockname()[1], dual_stack=False)
    finally:
        first[0].close()


def test_cli_flags_and_defaults() -> None:
    args = build_parser().parse_args([])
    assert (args.device, args.bind, args.register_port, args.call_port) == ("/dev/x8h7_ui", None, 5000, 5001)
    assert args.call_timeout == 1.0 and not args.timeout_error_reply and not args.m4_error_replies
    assert (args.router_socket, args.router_listen, args.monitor_listen) == (
        "/var/run/arduino-router.sock", None, "127.0.0.1:7500")
    off = build_parser().parse_args(["--router-socket", "", "--monitor-listen", ""])
    assert (off.router_socket, off.monitor_listen) == ("", "")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--call-port", "70000"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--call-timeout", "0"])
    assert args.hold_calls == 30.0 and build_parser().parse_args(["--hold-calls", "0"]).hold_calls == 0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--hold-calls", bad])


def test_link_specs_and_one_backoff() -> None:
    assert parse_link_spec("/dev/x8h7_ui").path == "/dev/x8h7_ui"
    spec = parse_link_spec("tcp:[::1]:7000")
    assert spec.is_tcp and (spec.host, spec.port) == ("::1", 7000)
    for bad in ("tcp:", "tcp:host", "tcp:host:port", "tcp::5"):
        with pytest.raises(StartupError, match="tcp:HOST:PORT"):
            parse_link_spec(bad)
    backoff = Backoff(0.05, 1.0)
    assert [backoff.next() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=12)
        | st.binary(max_size=12)
        | st.lists(st.integers() | st.text(max_size=5), max_size=3),
        max_size=5,
    )
)
def test_fuzz_register_messages_never_raise(value: list[Any]) -> None:
    reply = asyncio.run(handle_register_message(value, RegisterContext(table())))
    if reply is not None:
        assert msgpack.unpackb(reply, raw=True)[0] == 1


def test_pending_compact_ids_are_one_byte_and_free() -> None:
    async def scenario() -> None:
        pending = PendingCalls(first_id=2**31)
        first, _ = pending.open(compact=True)
        second, _ = pending.open(compact=True)
        assert (first, second) == (0, 1)
        for _ in range(126):
            pending.open(compact=True)
        with pytest.raises(RuntimeError, match="one-byte msgids are in flight"):
            pending.open(compact=True)
        pending.close(5)
        assert pending.open(compact=True)[0] == 5
    asyncio.run(scenario())


def test_registry_file_survives_a_restart_and_bad_files_start_empty(tmp_path: Path) -> None:
    path = tmp_path / "run" / "m4-proxy" / "registry.json"

    async def register(routes: RoutingTable, port: int, names: list[str]) -> None:
        await routes.register_legacy(port, names)
        await routes.close()  # writes the batched file

    asyncio.run(register(table(path), 5005, ["tty", "echo"]))
    restored = table(path)
    assert restored.snapshot() == {"echo": 5005, "tty": 5005}
    asyncio.run(register(restored, 5006, ["tty"]))
    assert table(path).snapshot() == {"echo": 5005, "tty": 5006}
    for content in ("{not json", "[1, 2]", '{"a": "x", "b": 0, "c": true, "d": 7}'):
        path.write_text(content)
        assert table(path).snapshot() == ({"d": 7} if content.startswith('{"a"') else {})
    assert table(None).snapshot() == {}


def test_registry_file_written_once_for_many_registrations(tmp_path: Path) -> None:
    """Issue 11 item 9: 10,000 registrations rewrote the file 10,000 times."""
    path = tmp_path / "registry.json"
    writes: list[int] = []

    async def scenario() -> None:
        routes = table(path)
        real_replace = os.replace

        def counting_replace(src: Any, dst: Any) -> None:
            writes.append(1)
            real_replace(src, dst)

        os.replace = counting_replace  # type: ignore[assignment]
        try:
            for n in range(500):
                await routes.register_legacy(6000 + n, [f"name{n}"])
            await routes.close()
        finally:
            os.replace = real_replace  # type: ignore[assignment]

    asyncio.run(scenario())
    assert len(writes) <= 2 and len(table(path).snapshot()) == 500


def test_proxy_restart_keeps_registrations_with_a_registry_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        device = tmp_path / "null"
        os.symlink("/dev/null", device)
        config = ProxyConfig(device=str(device), bind="127.0.0.1", register_port=0, call_port=0,
                             registry_file=tmp_path / "registry.json")
        first = M4Proxy(config)
        await first.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", first.register_port)
        writer.write(msgpack.packb([0, 1, "register", [5005, ["multiply"]]]))
        assert await reader.read(5) == bytes.fromhex("940101c0a0")
        writer.close()
        await first.stop()
        second = M4Proxy(config)
        await second.start()
        assert second.routes.port_of("multiply") == 5005
        await second.stop()
    asyncio.run(scenario())
