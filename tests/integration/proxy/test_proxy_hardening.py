"""Hostile peers on the legacy ports (issue 11 items 6, 7, 9, 10, 11); each failed on bd5409f."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from pathlib import Path

import msgpack
import pytest
from proxy_harness import WAIT, exchange, m4_on_pty, register, running_proxy, serving, wait_for
from test_proxy_daemon import start_daemon, stop_daemon

from x8manager.proxy import registerport, registry
from x8manager.proxy.link import MAX_BACKLOG


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- item 6: bounded connections, idle timeouts, EMFILE ---------------------------------------

def test_register_port_bounds_connections_and_closes_idle_ones(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registerport, "MAX_REGISTER_CONNECTIONS", 4)
    monkeypatch.setattr(registry, "IDLE_TIMEOUT", 0.3)

    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, _):
            idle = [await asyncio.open_connection("127.0.0.1", proxy.register_port) for _ in range(6)]
            # Four are served (and time out, idle); the two over the bound are closed at once.
            for reader, _ in idle:
                async with asyncio.timeout(WAIT):
                    assert await reader.read() == b""
            for _, writer in idle:
                writer.close()
            assert await register(proxy.register_port, msgpack.packb([0, 1, "list", []]))
    asyncio.run(scenario())


def test_fd_exhaustion_backs_off_instead_of_spinning(tmp_path: Path) -> None:
    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        m4.bind("ping", lambda: "pong")
        process, log = await start_daemon("--device", device, "--bind", "127.0.0.1",
                                          "--register-port", "0", "--call-port", "0")
        words = next(line for line in log.splitlines() if " ready: " in line).replace(",", "").split()
        call_port = int(words[words.index("call") + 2])
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (48, 48))
        held: list[socket.socket] = []
        try:
            for _ in range(60):  # more than the daemon has descriptors for; each waits for its message
                held.append(socket.create_connection(("127.0.0.1", call_port)))
            cpu_before = cpu_seconds(process.pid)
            assert process.stderr is not None
            async with asyncio.timeout(WAIT):
                while "not accepting for" not in (await process.stderr.readline()).decode():
                    pass
            for sock in held:
                sock.close()
            held.clear()
            async with asyncio.timeout(WAIT):
                while True:  # served again once descriptors are free
                    try:
                        reply = await exchange(call_port, msgpack.packb([0, 1, "ping", []]), within=2)
                    except (TimeoutError, ConnectionError):
                        continue
                    if reply:
                        break
            assert msgpack.unpackb(reply) == [1, 1, None, "pong"]
            spent = cpu_seconds(process.pid) - cpu_before
            assert spent < 1.0, f"the daemon spent {spent:.2f} s of CPU at the fd limit"
        finally:
            for sock in held:
                sock.close()
            code, rest = await stop_daemon(process)
            await m4.stop()
        assert code == 0, rest
        assert rest.count("accept failed") <= 3, rest[-2000:]  # rate-limited
    asyncio.run(scenario())


# --- item 7: a peer that does not read its replies -------------------------------------------

def test_pipelined_list_requests_never_read_do_not_pile_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, _):
            names = [f"procedure_with_a_long_name_{n:04d}" for n in range(300)]
            await register(proxy.register_port, msgpack.packb([0, 1, "register", [5999, names]]))
            before = rss_kib()
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.register_port)
            flood = msgpack.packb([0, 2, "list", []]) * 20_000  # ~100 KB asking for ~250 MB of replies
            writer.write(flood)
            try:
                async with asyncio.timeout(3):
                    await writer.drain()  # blocks: the proxy stops reading this peer
            except TimeoutError:
                pass
            grown = rss_kib() - before
            writer.close()
            assert grown < 30_000, f"RSS grew {grown} KiB"
            assert await register(proxy.register_port, msgpack.packb([0, 3, "list", []]))
    asyncio.run(scenario())


# --- item 9: log the change, not the table ---------------------------------------------------

def test_many_registrations_log_linear_not_quadratic(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, _):
            messages = b"".join(msgpack.packb([2, "register", [5999, [f"name{n}"]]]) for n in range(2000))
            with caplog.at_level(logging.INFO):
                await register(proxy.register_port, messages + msgpack.packb([0, 1, "list", []]))
            assert len(proxy.routes.snapshot()) == 2000
    asyncio.run(scenario())
    logged = sum(len(message) for message in caplog.messages)
    assert logged < 2000 * 120, f"{logged} bytes of log for 2000 registrations"


# --- item 10: a live holder keeps its name ---------------------------------------------------

def test_a_live_holder_keeps_its_name_and_the_attempt_is_logged(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            async with serving(proxy, sensor=lambda: "genuine") as holder:
                with caplog.at_level(logging.WARNING):
                    reply = msgpack.unpackb(await register(
                        proxy.register_port, msgpack.packb([0, 5, "register", [5999, ["sensor"]]])))
                assert reply[:2] == [1, 5] and f"live service on port {holder.port}" in reply[2]
                assert await m4.call("sensor") == "genuine"
                assert any(str(holder.port) in line and "5999" in line for line in caplog.messages)
            # The holder is gone (nothing answers on its port): now the name moves.
            again = msgpack.packb([0, 6, "register", [5999, ["sensor"]]])
            assert await register(proxy.register_port, again) == bytes.fromhex("940106c0a0")
            assert proxy.routes.port_of("sensor") == 5999
    asyncio.run(scenario())


# --- item 11: calls the caller gave up on never reach the M4 ---------------------------------

def test_stale_calls_are_dropped_not_delivered_later(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, call_timeout=0.3) as (proxy, m4):
            m4.bind("actuate", len, replace=True)
            m4.pause_reading()  # the sketch is stuck: the pty fills, then the proxy's backlog
            calls = 800
            request = msgpack.packb([0, 0, "actuate", ["p" * 200]])
            replies = await asyncio.gather(*(exchange(proxy.call_port, request) for _ in range(calls)))
            refused = sum(1 for reply in replies if reply and b"already wait for the M4" in reply)
            assert proxy.m4.link.backlog <= MAX_BACKLOG
            m4.resume_reading()
            await wait_for(lambda: proxy.m4.link.backlog == 0, what="the backlog gone")
            withdrawn = proxy.m4.link.withdrawn
            assert refused > 0 and withdrawn > 0
            delivered = calls - refused - withdrawn
            await wait_for(lambda: len([r for r in m4.raw_received if len(r) > 200]) == delivered,
                           what="what was written reached the M4")
    asyncio.run(scenario())
