"""The monitor port: the sketch's Serial as a raw TCP stream, and the journal when nobody listens."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from proxy_harness import WAIT, serving, wait_for

from tests.support.proxy import monitor_rig
from x8manager.proxy import M4Proxy
from x8manager.proxy.monitor import JOURNAL_IDENTIFIER


async def monitor_client(proxy: M4Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert proxy.monitor is not None and proxy.monitor.address is not None
    connection = await asyncio.open_connection(*proxy.monitor.address)
    await wait_for(lambda: proxy.monitor is not None and proxy.monitor.clients == 1, what="monitor client")
    return connection


async def read_until(reader: asyncio.StreamReader, expected: bytes) -> bytes:
    async with asyncio.timeout(WAIT):
        return await reader.readuntil(expected)


def test_serial_output_and_input_through_the_monitor_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with monitor_rig(tmp_path) as (proxy, m4):
            reader, writer = await monitor_client(proxy)
            try:
                await m4.serial_println("hello from the sketch")
                assert await read_until(reader, b"\r\n") == b"hello from the sketch\r\n"
                writer.write(b"typed by a user\n" + b"z" * 500)  # longer than one tty message
                await m4.wait_serial_input(lambda data: data.endswith(b"z" * 500))
                assert m4.serial_read() == b"typed by a user\n" + b"z" * 500
                assert all(len(raw) <= 248 for raw in m4.raw_received)
            finally:
                writer.close()
    asyncio.run(scenario())


def test_serial_output_goes_to_the_journal_when_nobody_listens(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with monitor_rig(tmp_path) as (_, m4):
            with caplog.at_level(logging.INFO, logger="x8manager.proxy.m4serial"):
                await m4.serial_println("nobody is listening")
                await m4.serial_write(b"second line\r\n")
                await wait_for(lambda: len(serial_records()) == 2, what="the lines in the log")
            first, second = serial_records()
            assert (first.getMessage(), second.getMessage()) == ("nobody is listening", "second line")
            journal: Any = getattr(first, "journal", {})
            assert journal == {"SYSLOG_IDENTIFIER": JOURNAL_IDENTIFIER}

    def serial_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "x8manager.proxy.m4serial"]

    asyncio.run(scenario())


def test_an_app_that_provides_tty_still_gets_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with monitor_rig(tmp_path) as (proxy, m4):
            got: list[object] = []
            async with serving(proxy, tty=got.append):
                reader, writer = await monitor_client(proxy)
                try:
                    await m4.serial_write(b"to both\n")
                    assert await read_until(reader, b"\n") == b"to both\n"
                    await wait_for(lambda: got == [b"to both\n"], what="the app's tty")
                finally:
                    writer.close()
                await wait_for(lambda: proxy.monitor is not None and proxy.monitor.clients == 0,
                               what="monitor client gone")
                with caplog.at_level(logging.INFO, logger="x8manager.proxy.m4serial"):
                    await m4.serial_write(b"app only\n")
                    await wait_for(lambda: len(got) == 2, what="the app's second tty")
            assert not [r for r in caplog.records if r.name == "x8manager.proxy.m4serial"]
    asyncio.run(scenario())
