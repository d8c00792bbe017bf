"""The client and server library on real loopback sockets (no proxy in between)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

from tests.support import wait_until
from x8manager.rpc import (
    AsyncM4Client,
    M4Client,
    RpcConnectionError,
    RpcError,
    RpcService,
    RpcTimeout,
    X8RpcError,
)

WAIT = 10.0


@contextlib.asynccontextmanager
async def started(service: RpcService) -> AsyncIterator[RpcService]:
    await service.start()
    try:
        yield service
    finally:
        await service.close()


@contextlib.asynccontextmanager
async def one_shot_server(answer: Callable[[bytes], bytes | None]) -> AsyncIterator[int]:
    """The original proxy's call port in miniature: read one object, answer (or not), close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker()
        data = b""
        while not list(unpacker):
            chunk = await reader.read(4096)
            if not chunk:
                break
            data += chunk
            unpacker = msgpack.Unpacker()
            unpacker.feed(data)
        reply = answer(data)
        if reply is not None:
            writer.write(reply)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_service_persistent_connection_out_of_order_replies_and_ordered_notifications() -> None:
    async def scenario() -> None:
        service = RpcService(0, host="127.0.0.1")
        release = asyncio.Event()
        seen: list[str] = []

        async def slow() -> str:
            await release.wait()
            return "slow"

        service.add("slow", slow)
        service.add("fast", lambda: "fast")
        service.add("tty", seen.append)
        async with started(service):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(
                msgpack.packb([0, 1, "slow", []])
                + msgpack.packb([0, 2, "fast", []])
                + b"".join(msgpack.packb([2, "tty", [str(n)]]) for n in range(20))
            )
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(await reader.read(4096))
            assert list(unpacker) == [[1, 2, None, "fast"]]  # the fast one first, same connection
            release.set()
            unpacker.feed(await reader.read(4096))
            assert list(unpacker) == [[1, 1, None, "slow"]]
            await wait_until(lambda: len(seen) == 20, "notifications")
            assert seen == [str(n) for n in range(20)]
            writer.close()

    asyncio.run(scenario())


def test_service_errors_are_replies_not_crashes() -> None:
    async def scenario() -> None:
        service = RpcService(0, host="127.0.0.1")

        @service.procedure
        def divide(a: float, b: float) -> float:
            return a / b

        service.add("unpackable", object)
        async with started(service):
            client = AsyncM4Client("127.0.0.1", service.port)
            assert await client.call("divide", 3, 2) == 1.5
            with pytest.raises(RpcError) as caught:
                await client.call("divide", 1, 0)
            assert caught.value.error.startswith("ZeroDivisionError")
            with pytest.raises(RpcError, match="method not found"):
                await client.call("missing")
            with pytest.raises(RpcError, match="TypeError"):
                await client.call("divide", 1)  # wrong argument count
            with pytest.raises(RpcError, match="TypeError"):
                await client.call("unpackable")
            assert await client.call("divide", 9, 3) == 3.0  # still serving

    asyncio.run(scenario())


def test_sync_client_calls_and_notifies() -> None:
    async def scenario() -> None:
        service = RpcService(0, host="127.0.0.1")
        got: list[Any] = []
        service.add("echo", lambda *args: list(args))
        service.add("log", got.append)
        async with started(service):
            client = M4Client("127.0.0.1", service.port, timeout=WAIT)
            values = [1.5, None, b"\x00\xff", "tëxt", {"k": [1, 2]}, 2**40]
            assert await asyncio.to_thread(client.call, "echo", *values) == values
            await AsyncM4Client("127.0.0.1", service.port).notify("log", "async")
            await wait_until(lambda: got == ["async"], "async notification")

    asyncio.run(scenario())


def test_client_against_one_call_per_connection_server() -> None:
    async def scenario() -> None:
        def answer(data: bytes) -> bytes:
            _kind, msgid, method, params = msgpack.unpackb(data)
            return msgpack.packb([1, msgid, None, [method, *params]])

        async with one_shot_server(answer) as port:
            client = AsyncM4Client("127.0.0.1", port)
            for n in range(3):  # a new connection each time, so repeated calls work
                assert await client.call("m", n) == ["m", n]
            sync = M4Client("127.0.0.1", port)
            assert await asyncio.to_thread(sync.call, "s", 1) == ["s", 1]

    asyncio.run(scenario())


def test_closed_without_reply_is_a_timeout_and_wrong_msgid_is_detected() -> None:
    async def scenario() -> None:
        async with one_shot_server(lambda data: None) as port:
            with pytest.raises(RpcTimeout, match="no reply from the M4"):
                await AsyncM4Client("127.0.0.1", port).call("x")
            with pytest.raises(RpcTimeout):
                await asyncio.to_thread(M4Client("127.0.0.1", port).call, "x")
        async with one_shot_server(lambda data: msgpack.packb([1, 999, None, 1])) as port:
            with pytest.raises(RpcConnectionError, match="msgid 999"):
                await AsyncM4Client("127.0.0.1", port).call("x")
        async with one_shot_server(lambda data: b"\x94\x01") as port:
            with pytest.raises(RpcConnectionError, match="middle of a reply"):
                await AsyncM4Client("127.0.0.1", port).call("x")

    asyncio.run(scenario())


def test_timeout_and_connection_refused() -> None:
    async def scenario() -> None:
        async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)

        server = await asyncio.start_server(never, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(RpcTimeout) as caught:
            await AsyncM4Client("127.0.0.1", port, timeout=0.2).call("x")
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, X8RpcError)
        with pytest.raises(RpcTimeout):
            await asyncio.to_thread(M4Client("127.0.0.1", port, timeout=0.2).call, "x")
        server.close()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        with pytest.raises(RpcConnectionError, match="cannot connect"):
            await AsyncM4Client("127.0.0.1", closed_port).call("x")
        with pytest.raises(RpcConnectionError, match="cannot connect"):
            M4Client("127.0.0.1", closed_port).call("x")

    asyncio.run(scenario())


def test_proxy_host_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("M4_PROXY_HOST", raising=False)
    assert M4Client().address == ("127.0.0.1", 5001)
    monkeypatch.setenv("M4_PROXY_HOST", "m4-proxy")
    assert M4Client().address == ("m4-proxy", 5001)
    assert AsyncM4Client(port=6001).address == ("m4-proxy", 6001)
    assert M4Client("10.0.0.1").address == ("10.0.0.1", 5001)


def test_service_registers_and_registers_again_when_the_proxy_comes_back() -> None:
    async def scenario() -> None:
        registrations: list[Any] = []
        connections: list[asyncio.StreamWriter] = []

        async def fake_register_port(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            unpacker = msgpack.Unpacker(raw=False)
            while data := await reader.read(4096):
                unpacker.feed(data)
                for _kind, msgid, method, params in unpacker:
                    registrations.append((method, params))
                    writer.write(b"\x94\x01" + msgpack.packb(msgid) + b"\xc0\xa0")  # the Go reply

        proxy = await asyncio.start_server(fake_register_port, "127.0.0.1", 0)
        service = RpcService(0, host="127.0.0.1")
        service.add("b_name", lambda: 1)
        service.add("a_name", lambda: 2)
        task = asyncio.create_task(
            service.serve(proxy_host="127.0.0.1", register_port=proxy.sockets[0].getsockname()[1])
        )
        try:
            await asyncio.wait_for(service.wait_registered(), WAIT)
            assert registrations == [("register", [service.port, ["a_name", "b_name"]])]
            connections[0].close()  # the proxy restarted and forgot everything
            await wait_until(lambda: len(registrations) == 2, "re-registration")
            assert registrations[1] == registrations[0]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await service.close()
            proxy.close()

    asyncio.run(scenario())


def test_register_error_reply_raises() -> None:
    async def scenario() -> None:
        def refuse(data: bytes) -> bytes:
            return msgpack.packb([1, msgpack.unpackb(data)[1], "nope", None])

        async with one_shot_server(refuse) as port:
            service = RpcService(0, host="127.0.0.1")
            async with started(service):
                with pytest.raises(RpcError, match="nope"):
                    await service.register("127.0.0.1", port)

    asyncio.run(scenario())
