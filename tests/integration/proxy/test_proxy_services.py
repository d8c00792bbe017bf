"""M4→Linux forwarding to services: the kept-open connection, one-shot services, ordering."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
from proxy_harness import register, running_proxy


@contextlib.asynccontextmanager
async def raw_service(answer: Callable[[list[Any]], Any], *, one_shot: bool = False,
                      port: int = 0) -> AsyncIterator[tuple[int, list[int]]]:
    """A bare msgpack-RPC service: *answer* gives the result of each request (and sees every
    notification); *one_shot* closes after the first reply. Yields its port and a one-item
    connection counter."""
    connections = [0]
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        writers.append(writer)
        unpacker = msgpack.Unpacker(raw=False)
        while data := await reader.read(4096):
            unpacker.feed(data)
            for message in unpacker:
                result = answer(message)
                if message[0] == 0:
                    writer.write(msgpack.packb([1, message[1], None, result]))
                    if one_shot:
                        await writer.drain()
                        writer.close()
                        return

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        for writer in writers:  # a stopped service takes its connections with it
            writer.close()
        await server.wait_closed()


def test_calls_and_notifications_share_one_connection_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: list[object] = []

        def answer(message: list[Any]) -> Any:
            seen.append(message[-1][0])
            return message[-1][0] * 2

        async with raw_service(answer) as (port, connections), running_proxy(tmp_path) as (proxy, m4):
            await register(proxy.register_port, msgpack.packb([0, 1, "register", [port, ["double", "tty"]]]))
            for n in range(5):
                await m4.notify("tty", n)
                reply = await m4.call_raw("double", n, msgid=100 + n)
                assert msgpack.unpackb(reply.raw) == [1, 100 + n, None, 2 * n]
            assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
            assert connections == [1]
    asyncio.run(scenario())


def test_service_that_closes_after_each_reply(tmp_path: Path) -> None:
    """A one-call-per-connection service (fine for the original) keeps working."""
    async def scenario() -> None:
        async with (raw_service(lambda message: "once", one_shot=True) as (port, connections),
                    running_proxy(tmp_path) as (proxy, m4)):
            await register(proxy.register_port, msgpack.packb([0, 1, "register", [port, ["once"]]]))
            for n in range(6):
                reply = await m4.call_raw("once", msgid=n)
                assert msgpack.unpackb(reply.raw) == [1, n, None, "once"]
            assert connections[0] >= 6
    asyncio.run(scenario())


def test_service_restart_is_followed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, m4_error_replies=True) as (proxy, m4):
            async with raw_service(lambda message: "up") as (port, _):
                await register(proxy.register_port, msgpack.packb([0, 1, "register", [port, ["s"]]]))
                assert msgpack.unpackb((await m4.call_raw("s", msgid=1)).raw)[3] == "up"
            async with raw_service(lambda message: "up again", port=port):  # restarted, same port
                deadline = asyncio.get_running_loop().time() + 10
                # The first try may meet the old, dead connection and get an error reply.
                while msgpack.unpackb((await m4.call_raw("s", msgid=2)).raw)[3] != "up again":
                    assert asyncio.get_running_loop().time() < deadline
    asyncio.run(scenario())
