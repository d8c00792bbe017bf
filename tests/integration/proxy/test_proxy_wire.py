"""Byte vectors of the reference (§3.3, §11.2, §14) through the real proxy and a pty M4."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgpack
import pytest
from proxy_harness import exchange, register, running_proxy, serving, wait_for

from x8manager.rpc import AsyncM4Client

# msgpack-rpc-python 0.4.1 byte vectors (reference §11.2)
LEGACY_REGISTER = bytes.fromhex("940000a8726567697374657292cd138d92a86d756c7469706c79a6646976696465")
LEGACY_CALL_TEMPERATURE = bytes.fromhex("940000ab74656d706572617475726590")
LEGACY_NOTIFY_TTY = bytes.fromhex("9302a374747991a568656c6c6f")


def test_e1_call_forwarded_verbatim_reply_returned_then_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("add", lambda a, b: a + b, replace=True)
            request = bytes.fromhex("940007a3616464920102")
            reply = await exchange(proxy.call_port, request)
            assert reply == bytes.fromhex("940107c003")  # [1, 7, nil, 3], client's msgid restored
            # Only the msgid differs on the M4 wire: the proxy's own id.
            (wire,) = m4.raw_received
            assert wire[:2] == request[:2] and wire[-6:] == request[-6:]
            kind, wire_msgid, method, params = msgpack.unpackb(wire)
            assert (kind, method, params) == (0, "add", [1, 2]) and 0 <= wire_msgid < 2**32
    asyncio.run(scenario())


@pytest.mark.parametrize(("payload", "name"), [
    (bytes.fromhex("cb3ff8000000000000"), "E2b float64 stays cb"),
    (bytes.fromhex("ca3fc00000"), "float32 stays ca"),
    (bytes.fromhex("c403010203"), "E4b bin8 stays bin"),
    (bytes.fromhex("c0"), "nil (crashed the original)"),
    (b"\xd9\x28" + b"s" * 40, "str8 (crashed the original)"),
    (b"\xc5\x00\x03abc", "bin16 (crashed the original)"),
    (b"\xd4\x01\x02", "fixext1 (crashed the original)"),
])
def test_linux_bytes_reach_the_m4_intact(tmp_path: Path, payload: bytes, name: str) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("echo", lambda value: value, replace=True)
            body = b"\xa4echo\x91" + payload
            reply = await exchange(proxy.call_port, b"\x94\x00\x05" + body)
            (wire,) = m4.raw_received
            assert wire.endswith(body), name
            assert msgpack.unpackb(reply, raw=False, strict_map_key=False)[:3] == [1, 5, None]
    asyncio.run(scenario())


def test_client_msgid_encoding_restored_exactly(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("one", lambda: 1, replace=True)
            # msgid 5 written as uint16 (cd 00 05): the reply carries the same three bytes.
            reply = await exchange(proxy.call_port, bytes.fromhex("9400cd0005a36f6e6590"))
            assert reply == bytes.fromhex("9401cd0005c001")
    asyncio.run(scenario())


def test_e8_m4_call_reaches_service_and_reply_returns_unchanged(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            async with serving(proxy, multiply=lambda a, b: a * b):
                reply = await m4.call_raw("multiply", 3, 4, msgid=0x10003000)  # E8's thread id
            assert reply.raw == bytes.fromhex("9401ce10003000c00c")
    asyncio.run(scenario())


def test_e8b_tty_notification_bin_payload_reaches_service(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            got: list[bytes] = []
            async with serving(proxy, tty=got.append):
                m4.send_raw(bytes.fromhex("9302a3747479 91c407") + b"hello\r\n")
                await wait_for(lambda: got == [b"hello\r\n"], what="tty notification")
    asyncio.run(scenario())


def test_register_reply_bytes_and_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, _m4):
            with caplog.at_level(logging.INFO):
                assert await register(proxy.register_port, LEGACY_REGISTER) == bytes.fromhex("940100c0a0")
            assert ("Registering service on port  5005  with functions  map[divide:5005 multiply:5005]"
                    in caplog.messages)
            # E13: msgid 70000 → d2 (Go's smallest signed form); 200 as cc c8 is accepted too.
            reply = await register(proxy.register_port, msgpack.packb([0, 70000, "register", [5006, ["a"]]]))
            assert reply == bytes.fromhex("9401d200011170c0a0")
            reply = await register(proxy.register_port, bytes.fromhex("9400ccc8a8") + b"register"
                                   + bytes.fromhex("92cd138e91a162"))
            assert reply == bytes.fromhex("9401d100c8c0a0")
            assert proxy.routes.snapshot() == {"a": 5006, "b": 5006, "divide": 5005, "multiply": 5005}
    asyncio.run(scenario())


def test_e14b_arity_error_reply_bytes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, _m4):
            reply = await register(proxy.register_port, msgpack.packb([0, 1, "register", [5005]]))
            text = b"The number of the given arguments (1) doesn't match the arity (2)"
            assert reply == bytes.fromhex("940101da0041") + text + b"\xc0"
    asyncio.run(scenario())


def test_register_persistent_connection_request_and_notification(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, _m4):
            messages = (msgpack.packb([2, "register", [5010, ["n1"]]])
                        + msgpack.packb([0, 3, "register", [5011, ["r1"]]])
                        + msgpack.packb([0, 4, "list", []]))
            got = await register(proxy.register_port, messages, replies=2)
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(got)
            first, second = list(unpacker)
            assert first == [1, 3, None, ""]
            assert second == [1, 4, None, {"n1": 5010, "r1": 5011}]
    asyncio.run(scenario())


def test_legacy_call_and_notify_vectors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("temperature", lambda: 321, replace=True)
            seen: list[str] = []
            m4.bind("tty", seen.append, replace=True)
            assert await exchange(proxy.call_port, LEGACY_CALL_TEMPERATURE) == bytes.fromhex("940100c0cd0141")
            assert await exchange(proxy.call_port, LEGACY_NOTIFY_TTY) == b""
            await wait_for(lambda: seen == ["hello"], what="tty on the M4")
            assert m4.raw_received[-1] == LEGACY_NOTIFY_TTY  # notifications carry no msgid: verbatim
    asyncio.run(scenario())


def test_async_client_through_proxy(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("divide", lambda a, b: a / b, replace=True)
            client = AsyncM4Client("127.0.0.1", proxy.call_port)
            assert await client.call("divide", 3.0, 2.0) == 1.5
    asyncio.run(scenario())
