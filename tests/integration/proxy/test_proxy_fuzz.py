"""Hypothesis against one live proxy: random bytes and messages from every peer, byte by byte.

The proxy and the pty M4 run on an event loop in a background thread for the whole module, so
each example costs a few socket round trips, not a proxy start-up. After every example the
proxy must still answer a normal call in both directions.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_harness import WAIT, running_proxy, serving, wait_for

from x8manager.m4sim import M4SimError, VirtualM4
from x8manager.m4sim.h7 import M4_TO_LINUX_CHUNK
from x8manager.proxy import M4Proxy

T = TypeVar("T")
FUZZ_CALL_TIMEOUT = 0.3  # seconds: fuzzed calls the M4 never answers end quickly


class LiveProxy:
    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stack = AsyncExitStack()
        self.proxy: M4Proxy
        self.m4: VirtualM4
        self.run(self._start(tmp_path))

    async def _start(self, tmp_path: Path) -> None:
        started = running_proxy(tmp_path, call_timeout=FUZZ_CALL_TIMEOUT)
        self.proxy, self.m4 = await self.stack.enter_async_context(started)
        self.m4.bind("ping", lambda: "pong", replace=True)
        await self.stack.enter_async_context(serving(self.proxy, linux_ping=lambda: "linux-pong"))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT * 3)

    def close(self) -> None:
        self.run(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()

    async def healthy(self) -> None:
        # What the fuzz sent may have halted the M4, as it halts a real one (a notification with the
        # wrong count, a wrong argument type): the proxy is under test here, so the M4 is reset, as a
        # user would reset it, and the check runs again.
        if self.m4.halted:
            self.m4.reset()
        try:
            await self._answers_both_ways()
        except (AssertionError, TimeoutError, ValueError, M4SimError):
            if not self.m4.halted:
                raise
            self.m4.reset()
            await self._answers_both_ways()

    async def _answers_both_ways(self) -> None:
        # The fuzzed calls get 0.3 s (most are never answered); the check's ping gets as long as
        # a loaded machine needs. The fuzzed connection is closed by now: no call of it is waiting.
        self.proxy.m4.call_timeout = WAIT
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy.call_port)
            writer.write(msgpack.packb([0, 1, "ping", []]))
            assert msgpack.unpackb(await asyncio.wait_for(reader.read(-1), WAIT)) == [1, 1, None, "pong"]
            writer.close()
        finally:
            self.proxy.m4.call_timeout = FUZZ_CALL_TIMEOUT
        reply = await self.m4.call_raw("linux_ping", msgid=0xFFFFFFFF)
        assert msgpack.unpackb(reply.raw) == [1, 0xFFFFFFFF, None, "linux-pong"]

    async def send_bytewise(self, port: int, data: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index in range(len(data)):
                writer.write(data[index : index + 1])
                await writer.drain()
            writer.write_eof()
            async with asyncio.timeout(WAIT):
                await reader.read(-1)  # until the proxy closes, or we time out below
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def m4_bytewise(self, data: bytes) -> None:
        expected = self.proxy.m4.stats.m4_bytes + len(data)
        self.m4.switches.chunk_size = 1  # the proxy reads every byte on its own
        self.m4.send_raw(data)
        await wait_for(lambda: self.proxy.m4.stats.m4_bytes == expected, what="proxy read the bytes")
        # Garbage may end in a partial object that would swallow the next message: what a
        # reset M4 leaves behind. The proxy drops it after a pause; here we do not wait for that.
        self.m4.switches.chunk_size = M4_TO_LINUX_CHUNK
        self.proxy.m4.discard_partial_message()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProxy]:
    live = LiveProxy(tmp_path_factory.mktemp("fuzz"))
    yield live
    live.close()


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=64),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=2)
    ),
    max_leaves=8,
)
names = (
    st.sampled_from(["ping", "register", "list", "tty", "linux_ping", ""])
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
messages = st.one_of(
    st.tuples(st.integers(-3, 5), st.integers(-(2**40), 2**40), names, st.lists(values, max_size=3)).map(
        list
    ),
    st.tuples(st.just(2), names, st.lists(values, max_size=3) | values).map(list),
    st.lists(values, max_size=5),
    values,
)
packed = messages.map(lambda m: msgpack.packb(m, use_bin_type=True)) | messages.map(
    lambda m: msgpack.packb(m, use_bin_type=False)
)
payloads = st.lists(packed | st.binary(max_size=40), min_size=1, max_size=4).map(b"".join)

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=payloads)
def test_fuzz_call_port(live: LiveProxy, data: bytes) -> None:
    live.run(live.send_bytewise(live.proxy.call_port, data))
    live.run(live.healthy())


@FUZZ
@given(data=payloads)
def test_fuzz_register_port(live: LiveProxy, data: bytes) -> None:
    live.run(live.send_bytewise(live.proxy.register_port, data))
    live.run(live.healthy())


@FUZZ
@given(data=payloads)
def test_fuzz_m4_stream(live: LiveProxy, data: bytes) -> None:
    live.run(live.m4_bytewise(data))
    live.run(live.healthy())
