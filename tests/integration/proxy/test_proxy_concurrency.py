"""Concurrency and recovery: many callers, out-of-order replies, M4 resets, the TCP link."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import msgpack
import pytest
from proxy_harness import WAIT, exchange, running_proxy, serving, wait_for

from x8manager.proxy import M4Proxy, ProxyConfig
from x8manager.proxy.link import ReaderMode
from x8manager.proxy.m4port import STALE_PARTIAL_AFTER
from x8manager.rpc import AsyncM4Client, M4Client, RpcError

CALLERS = 32


@pytest.mark.parametrize("reader", ["poll", "thread"])
def test_32_concurrent_callers_out_of_order_replies_no_crosstalk(tmp_path: Path, reader: ReaderMode) -> None:
    """E24 of the original: two concurrent callers got each other's replies."""
    async def scenario() -> None:
        async with running_proxy(tmp_path, reader=reader) as (proxy, m4):
            shuffle = random.Random(2)
            gates: list[asyncio.Future[None]] = []

            async def identity(value: int) -> int:
                gate = asyncio.get_running_loop().create_future()
                gates.append(gate)
                await gate  # released below in a random order
                return value * 7

            m4.bind("identity", identity, replace=True)
            # A real sketch answers in order; the proxy must match out-of-order replies all the same.
            m4.switches.concurrent_dispatch = True
            client = AsyncM4Client("127.0.0.1", proxy.call_port, timeout=WAIT)
            calls = [asyncio.create_task(client.call("identity", n)) for n in range(CALLERS)]
            await wait_for(lambda: len(gates) == CALLERS, what="all calls at the M4")
            order = list(range(CALLERS))
            shuffle.shuffle(order)
            for index in order:
                gates[index].set_result(None)
            assert await asyncio.gather(*calls) == [n * 7 for n in range(CALLERS)]
            # Every legacy client uses msgid 0: still no crosstalk, because the wire ids differ.
            wire_ids = {msgpack.unpackb(raw)[1] for raw in m4.raw_received}
            assert len(wire_ids) == CALLERS
    asyncio.run(scenario())


def test_32_concurrent_legacy_msgid_zero_callers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            async def double(value: int) -> int:
                await asyncio.sleep(random.random() / 100)  # replies complete out of order
                return value * 2

            m4.bind("double", double, replace=True)
            replies = await asyncio.gather(*(
                exchange(proxy.call_port, msgpack.packb([0, 0, "double", [n]])) for n in range(CALLERS)))
            assert [msgpack.unpackb(r) for r in replies] == [[1, 0, None, n * 2] for n in range(CALLERS)]
    asyncio.run(scenario())


def test_sync_client_and_m4_to_linux_concurrently(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("square", lambda x: x * x, replace=True)
            async with serving(proxy, hello=lambda name: f"hello {name}"):
                client = M4Client("127.0.0.1", proxy.call_port)
                linux_to_m4 = [asyncio.to_thread(client.call, "square", n) for n in range(8)]
                m4_to_linux = [m4.call_raw("hello", f"m4-{n}", msgid=0x10000000 + n) for n in range(8)]
                results = await asyncio.gather(*linux_to_m4, *m4_to_linux)
            assert results[:8] == [n * n for n in range(8)]
            assert [msgpack.unpackb(f.raw)[3] for f in results[8:]] == [f"hello m4-{n}" for n in range(8)]
    asyncio.run(scenario())


@pytest.mark.parametrize("reader", ["poll", "thread"])
def test_m4_reset_device_reopened_without_restarting_the_proxy(tmp_path: Path, reader: ReaderMode) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, reader=reader) as (proxy, m4):
            m4.bind("where", lambda: "first", replace=True)
            client = AsyncM4Client("127.0.0.1", proxy.call_port)
            assert await client.call("where") == "first"
            async with serving(proxy, linux=lambda: "up"):
                m4.send_raw(b"\x94\x00\xce\x10")  # the M4 resets in the middle of a message
                await m4.replug_pty()
                m4.bind("where", lambda: "second", replace=True)

                async def answers() -> bool:
                    try:
                        return await AsyncM4Client("127.0.0.1", proxy.call_port).call("where") == "second"
                    except (RpcError, TimeoutError, ConnectionError):
                        return False  # the link is still reopening

                deadline = asyncio.get_running_loop().time() + WAIT
                while not await answers():
                    assert asyncio.get_running_loop().time() < deadline, "proxy did not reopen the device"
                # The registry survived, and the partial message did not swallow the next call.
                reply = await m4.call_raw("linux")
                assert msgpack.unpackb(reply.raw)[3] == "up"
                # Garbage in mid-stream after the reset is resynchronised too.
                m4.send_raw(b"\xc1\xc1\xdd\xff\xff\xff\xff")
                reply = await m4.call_raw("linux", msgid=77)
                assert msgpack.unpackb(reply.raw) == [1, 77, None, "up"]
    asyncio.run(scenario())


def test_tcp_link_for_development_and_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        connections: list[asyncio.StreamWriter] = []

        async def m4_on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            unpacker = msgpack.Unpacker(raw=False)
            while data := await reader.read(4096):
                unpacker.feed(data)
                for kind, msgid, _method, params in unpacker:
                    assert kind == 0
                    writer.write(msgpack.packb([1, msgid, None, [len(connections), *params]]))

        m4_server = await asyncio.start_server(m4_on_tcp, "127.0.0.1", 0)
        port = m4_server.sockets[0].getsockname()[1]
        proxy = M4Proxy(ProxyConfig(device=f"tcp:127.0.0.1:{port}", bind="127.0.0.1",
                                    register_port=0, call_port=0))
        await proxy.start()
        try:
            client = AsyncM4Client("127.0.0.1", proxy.call_port)
            assert await client.call("echo", "a") == [1, "a"]
            connections[0].close()  # the M4 side drops the link: the proxy reconnects
            await wait_for(lambda: len(connections) == 2, what="reconnect")
            assert await client.call("echo", "b") == [2, "b"]
        finally:
            await proxy.stop()
            m4_server.close()
    asyncio.run(scenario())


def test_partial_message_abandoned_after_a_pause(tmp_path: Path) -> None:
    """x8h7_ui never reports an M4 reset: a message cut short must not swallow the next one."""
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4), serving(proxy, linux=lambda: "up"):
            m4.send_raw(b"\x94\x00\xce\x10")  # the M4 resets after four bytes; the device stays open
            await wait_for(lambda: proxy.m4.stats.m4_bytes >= 4, what="partial message read")
            cut_at = asyncio.get_running_loop().time()
            await wait_for(lambda: asyncio.get_running_loop().time() - cut_at > STALE_PARTIAL_AFTER,
                           what="the pause after the partial message")
            reply = await m4.call_raw("linux", msgid=5)
            assert msgpack.unpackb(reply.raw) == [1, 5, None, "up"]
            assert proxy.m4.stats.stale_partials == 1
    asyncio.run(scenario())
