"""Registration checks: a port registered with nobody listening on it is logged once, naming the
port and its names; the reply to ``register`` keeps its bytes (the dial-back is off the reply path)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgpack
import pytest
from proxy_harness import free_port, register, running_proxy, serving, wait_for

from x8manager.proxy import M4Proxy

OK_REPLY = bytes.fromhex("940100c0a0")  # [1, 0, nil, ""] as the original encodes it


def nobody_listens(caplog: pytest.LogCaptureFixture, port: int) -> list[str]:
    return [message for message in caplog.messages if f"nobody listens on port {port}," in message]


async def checks_done(proxy: M4Proxy) -> None:
    await wait_for(lambda: proxy.routes.checks_pending == 0, what="registration dial-backs finished")


def test_a_port_nobody_listens_on_is_logged_once_with_its_names(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        port = free_port()  # nothing listens there
        request = msgpack.packb([0, 0, "register", [port, ["temperature", "humidity"]]])
        async with running_proxy(tmp_path) as (proxy, _m4):
            with caplog.at_level(logging.INFO):
                assert await register(proxy.register_port, request) == OK_REPLY
                await wait_for(lambda: bool(nobody_listens(caplog, port)), what="the finding logged")
                [line] = nobody_listens(caplog, port)
                assert "registered humidity, temperature (from ('127.0.0.1'," in line
                assert await register(proxy.register_port, request) == OK_REPLY  # the app retries
                await checks_done(proxy)
                assert len(nobody_listens(caplog, port)) == 1
            assert proxy.routes.port_of("temperature") == port  # registered all the same, as before
    asyncio.run(scenario())


def test_a_listening_service_is_not_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, _m4):
            with caplog.at_level(logging.INFO):
                async with serving(proxy, ping=lambda: "pong") as service:
                    await checks_done(proxy)
                    assert not nobody_listens(caplog, service.port)
    asyncio.run(scenario())
