"""The monitor port under a flood from any local user (issue 20 item 7): connect/close churn,
refused clients and input typed while the M4 does not read cost a few log lines, not one each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from proxy_harness import wait_for

from tests.support.proxy import monitor_rig
from x8manager.proxy.monitor import MAX_MONITOR_CLIENTS


def proxy_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.name.startswith("x8manager.proxy") and record.name != "x8manager.proxy.m4serial"]


def test_monitor_churn_and_refusals_cost_a_few_log_lines(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with monitor_rig(tmp_path) as (proxy, _):
            assert proxy.monitor is not None and proxy.monitor.address is not None
            address = proxy.monitor.address
            with caplog.at_level(logging.INFO, logger="x8manager"):
                for _ in range(300):  # connect, close, again
                    _, writer = await asyncio.open_connection(*address)
                    writer.close()
                    await writer.wait_closed()
                await wait_for(lambda: proxy.monitor is not None and proxy.monitor.clients == 0,
                               what="the churn over")
                held = [(await asyncio.open_connection(*address))[1] for _ in range(MAX_MONITOR_CLIENTS)]
                try:
                    await wait_for(lambda: proxy.monitor is not None
                                   and proxy.monitor.clients == MAX_MONITOR_CLIENTS, what="the monitor full")
                    for _ in range(300):  # each refused
                        reader, writer = await asyncio.open_connection(*address)
                        with contextlib.suppress(ConnectionError):
                            assert await reader.read() == b""
                        writer.close()
                finally:
                    for writer in held:
                        writer.close()
            lines = proxy_lines(caplog)
            assert len(lines) < 60, f"{len(lines)} log lines for 600 connections"
    asyncio.run(scenario())


def test_input_while_the_m4_does_not_read_costs_a_few_log_lines(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with monitor_rig(tmp_path) as (proxy, m4):
            assert proxy.monitor is not None and proxy.monitor.address is not None
            m4.pause_reading()  # the sketch is busy: the M4 link backs up
            try:
                with caplog.at_level(logging.INFO, logger="x8manager"):
                    _, writer = await asyncio.open_connection(*proxy.monitor.address)
                    await wait_for(lambda: proxy.monitor is not None and proxy.monitor.clients == 1,
                                   what="the monitor client")
                    writer.write(b"typed " * 100_000)  # 600 KB: 3,000 tty messages
                    await writer.drain()
                    writer.close()
                    # The proxy handles a connection's data before its close.
                    await wait_for(lambda: proxy.monitor is not None and proxy.monitor.clients == 0,
                                   what="the input taken and the client gone")
            finally:
                m4.resume_reading()
            lines = proxy_lines(caplog)
            assert len(lines) < 20, f"{len(lines)} log lines for 3,000 lost tty messages"
    asyncio.run(scenario())
