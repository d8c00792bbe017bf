"""arduino-router-bridge 0.5.1 from PyPI, unchanged in its own venv, against the real proxy's
router front and the virtual M4 (issue 10 item 1)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.support.bridge import BridgeFailed, bridge_app, bridge_python
from tests.support.proxy import WAIT, m4_on_pty, register, serving, wait_for
from x8manager.m4sim import VirtualM4
from x8manager.proxy import M4Proxy, ProxyConfig
from x8manager.rpc import Frame, Response


@pytest.fixture(scope="session")
def bridge_py() -> Path:
    return bridge_python()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # UNIX socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="x8rt") as path:
        yield Path(path)


def proxy_config(device: str, socket_path: Path, **options: Any) -> ProxyConfig:
    return ProxyConfig(device=device, bind="127.0.0.1", register_port=0, call_port=0,
                       router_socket=str(socket_path), **options)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, socket_dir: Path,
              **options: Any) -> AsyncIterator[tuple[M4Proxy, VirtualM4, str]]:
    """The virtual M4 on a pty, the proxy with its router socket; yields both and the address."""
    m4, device = await m4_on_pty(tmp_path)
    path = socket_dir / "router.sock"
    proxy = M4Proxy(proxy_config(device, path, **options))
    await proxy.start()
    try:
        yield proxy, m4, f"unix://{path}"
    finally:
        await proxy.stop()
        await m4.stop()


def nothing_left(proxy: M4Proxy) -> bool:
    assert proxy.router is not None
    return not proxy.router.connections and not proxy.routes.routes() and not len(proxy.m4.pending)


def test_call_notify_provide_unprovide(tmp_path: Path, socket_dir: Path, bridge_py: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, socket_dir, m4_error_replies=True) as (proxy, m4, address):
            m4.bind("add", lambda a, b: a + b)
            m4.bind("set_led", lambda on: on)
            async with bridge_app(bridge_py, address) as app:
                assert await app.call("add", 2, 3) == 5
                await app.notify("set_led", True)
                received = await m4.wait_received("set_led")
                assert received.params == [True] and received.notification
                await app.provide("linux_add", "add")
                assert await m4.call("linux_add", 40, 2) == 42
                assert proxy.routes.routes() == {"linux_add": next(iter(proxy.routes.routes().values()))}
                # The M4's notification for a method the app provides reaches the app.
                await app.provide("linux_note", "record")
                await m4.notify("linux_note", "from the sketch", 7)
                assert (await app.wait_event("called"))["args"] == ["from the sketch", 7]
                await app.unprovide("linux_add")
                assert list(proxy.routes.routes()) == ["linux_note"]
                # A sketch sees nil for an error reply (its text is lost): the proxy's reply is
                # checked byte for byte instead.
                assert "no service registered" in error_of(await m4.call_raw("linux_add", 1, 1))
                # A handler that raises: the M4 gets the Bridge's error, code 255.
                await app.provide("linux_fail", "fail")
                assert error_of(await m4.call_raw("linux_fail")) == [255, "Unhandled RuntimeError in handler"]
                assert await m4.call("linux_fail") is None
            await wait_for(lambda: nothing_left(proxy), what="the app's routes dropped")
    asyncio.run(scenario())


def error_of(frame: Frame) -> Any:
    assert isinstance(frame.message, Response)
    return frame.message.error


def test_m4_errors_tell_nobody_has_it_from_it_failed(tmp_path: Path, socket_dir: Path,
                                                      bridge_py: Path) -> None:
    async def scenario() -> None:
        # (A procedure that throws gives no error to classify: the real M4 halts, see the m4sim tests.)
        async with rig(tmp_path, socket_dir) as (_, m4, address):
            m4.bind("one", lambda a: a)
            async with bridge_app(bridge_py, address) as app:
                with pytest.raises(BridgeFailed) as nobody:
                    await app.call("gas")  # the sketch binds no 'gas'
                assert (nobody.value.code, nobody.value.message) == (2, "method gas not available")
                with pytest.raises(BridgeFailed) as arity:
                    await app.call("one", 1, 2)
                assert arity.value.code == 253 and "invalid number of arguments" in str(arity.value.message)
    asyncio.run(scenario())


def test_route_conflict_with_a_legacy_registration(tmp_path: Path, socket_dir: Path, bridge_py: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, socket_dir) as (proxy, m4, address), \
                serving(proxy, shared=lambda: "legacy"), bridge_app(bridge_py, address) as app:
                with pytest.raises(BridgeFailed) as refused:
                    await app.provide("shared", "echo")
                assert refused.value.type == "ValueError" and "already provided" in refused.value.text
                assert await m4.call("shared") == "legacy"  # the live legacy service keeps it
                # And the other way round: the legacy port cannot take a Bridge route.
                await app.provide("mine", "echo")
                reply = msgpack.unpackb(await register(
                    proxy.register_port, msgpack.packb([0, 7, "register", [5999, ["mine"]]])))
                assert reply[:2] == [1, 7] and "route already exists: mine" in reply[2]
                assert await m4.call("mine", "x") == ["x"]
                # A Bridge call of a legacy service's method reaches that service.
                assert await app.call("shared") == "legacy"
        assert any("shared" in line and "refused" in line for line in caplog.messages)
        assert any("mine" in line and "5999" in line and "refused" in line for line in caplog.messages)
    asyncio.run(scenario())


def test_call_over_the_m4_link_limit_refused_with_code_6(tmp_path: Path, socket_dir: Path,
                                                         bridge_py: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, socket_dir) as (_, m4, address):
            m4.bind("length", len)
            async with bridge_app(bridge_py, address) as app:
                with pytest.raises(BridgeFailed) as refused:
                    await app.call("length", "x" * 300)
                assert (refused.value.code, refused.value.message) == (
                    6, "message size exceeds the limit of 248 bytes")
                assert not [raw for raw in m4.raw_received if len(raw) > 248]  # nothing was sent
                assert await app.call("length", "y" * 200) == 200
    asyncio.run(scenario())


def test_32_concurrent_calls_on_one_bridge(tmp_path: Path, socket_dir: Path, bridge_py: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, socket_dir) as (_, m4, address):
            async def slow_square(n: int) -> int:
                await asyncio.sleep((32 - n) / 1000)  # later callers answered first
                return n * n

            m4.bind("square", slow_square)
            async with bridge_app(bridge_py, address) as app:
                results = await app.call_many("square", [[n] for n in range(32)])
            assert results == [{"ok": n * n} for n in range(32)]
    asyncio.run(scenario())


def test_proxy_restarted_under_a_connected_bridge(tmp_path: Path, socket_dir: Path, bridge_py: Path) -> None:
    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        path = socket_dir / "router.sock"
        proxy = M4Proxy(proxy_config(device, path))
        await proxy.start()
        try:
            async with bridge_app(bridge_py, f"unix://{path}") as app:
                await app.provide("linux_echo", "echo")
                assert await m4.call("linux_echo", 1) == [1]
                await proxy.stop()
                proxy = M4Proxy(proxy_config(device, path))
                await proxy.start()
                # The Bridge reconnects by itself (every 3 s) and provides its method again.
                await wait_for(lambda: "linux_echo" in proxy.routes.routes(), within=WAIT * 2,
                               what="the Bridge re-registered")
                assert await m4.call("linux_echo", 2) == [2]
        finally:
            await proxy.stop()
            await m4.stop()
    asyncio.run(scenario())


def test_client_killed_mid_call(tmp_path: Path, socket_dir: Path, bridge_py: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, socket_dir) as (proxy, m4, address), \
                bridge_app(bridge_py, address) as app:
                await app.provide("linux_hang", "hang")
                pending = asyncio.create_task(m4.call_raw("linux_hang", within=WAIT))
                await app.wait_event("hanging")
                replies = m4.stats.replies_from_linux
                await app.kill()
                # No error reply (it would halt a real sketch): the sketch's own timeout decides.
                await wait_for(lambda: proxy.stats.failed == 1, what="the call failed")
                assert not pending.done() and m4.stats.replies_from_linux == replies
                pending.cancel()
                await wait_for(lambda: nothing_left(proxy), what="nothing left of the killed client")
                assert not proxy.routes.routes()
    asyncio.run(scenario())
