"""Every crash trigger of the original proxy (reference §3.4, §4.3, §5): the proxy survives,
answers sensibly, and still serves the next normal call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest
from proxy_harness import M4_THREAD_ID, WAIT, exchange, register, running_proxy, serving, wait_for

from x8manager.m4sim import VirtualM4
from x8manager.proxy import M4Proxy


async def assert_still_serving(proxy: M4Proxy, m4: VirtualM4) -> None:
    m4.bind("ping", lambda: "pong", replace=True)
    reply = await exchange(proxy.call_port, msgpack.packb([0, 9, "ping", []]))
    assert reply == bytes.fromhex("940109c0a4706f6e67")
    assert await register(proxy.register_port, msgpack.packb([0, 1, "register", [5999, ["alive"]]])) \
        == bytes.fromhex("940101c0a0")


def decode(reply: bytes) -> list[object]:
    value = msgpack.unpackb(reply, raw=False)
    assert isinstance(value, list)
    return value


# --- register port (§3.4) ------------------------------------------------------------------

REGISTER_CASES = [
    # (what the original did, message, expected reply as a decoded list or None for no reply)
    ("unknown method: panic", [0, 2, "unregister", [5005, ["x"]]],
     [1, 2, b"'unregister' method not found", None]),
    ("names not an array", [0, 2, "register", [5005, "x"]],
     [1, 2, b"The type of argument #1 doesn't match ([]reflect.Value expected, got []uint8)", None]),
    ("non-string name: panic", [0, 2, "register", [5005, ["ok", 7]]],
     [1, 2, b"The type of argument #1 element 1 doesn't match (string expected, got int64)", None]),
    ("float port", [0, 2, "register", [50.5, ["x"]]],
     [1, 2, b"The type of argument #0 doesn't match (uint expected, got float64)", None]),
    ("negative port wrapped", [0, 2, "register", [-1, ["x"]]],
     [1, 2, b"port -1 out of range 1..65535", None]),
    ("empty list is fine", [0, 2, "register", [5005, []]], [1, 2, None, b""]),
    ("params not an array", [0, 2, "register", 5],
     [1, 2, b"Invalid message format: params must be an array, got int", None]),
    ("3 elements, type 0: panic", [0, 2, "register"], None),
    ("2 elements: panic", [0, 2], None),
    ("empty array", [], None),
    ("a response", [1, 2, None, None], None),
    ("type 7", [7, 2, "register", [1, ["x"]]], None),
]


@pytest.mark.parametrize(("what", "message", "expected"), REGISTER_CASES, ids=[c[0] for c in REGISTER_CASES])
def test_register_port_bad_input(tmp_path: Path, what: str, message: list[object], expected: object) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            packed = msgpack.packb(message)
            if expected is None:
                # No reply to this one; the follow-up on the same connection is answered.
                got = await register(proxy.register_port, packed + msgpack.packb([0, 3, "list", []]))
                assert msgpack.unpackb(got, raw=False)[:3] == [1, 3, None], what
            else:
                got = await register(proxy.register_port, packed)
                assert msgpack.unpackb(got, raw=True) == expected, what
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


@pytest.mark.parametrize("encoded_names", [
    b"\x92\xd9\x05alpha\xc4\x04beta",  # str8 and bin8 names: panic in the original
    b"\x91\xda\x00\x05gamma",  # raw16
    b"\x91\xc5\x00\x05delta",  # bin16
])
def test_register_accepts_str8_and_bin_names(tmp_path: Path, encoded_names: bytes) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            message = b"\x94\x00\x01\xd9\x08register\x92\xcd\x13\x8d" + encoded_names
            assert await register(proxy.register_port, message) == bytes.fromhex("940101c0a0")
            assert set(proxy.routes.snapshot().values()) == {5005}
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_register_port_garbage_and_non_arrays(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            junk = b"\xc1\xc1hello\x05\xc0" + msgpack.packb({"a": 1}) + b"\xd4\x01\x02"
            got = await register(proxy.register_port, junk + msgpack.packb([0, 8, "register", [5001, ["z"]]]))
            assert got == bytes.fromhex("940108c0a0")
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


# --- call port (§4.1, §4.3, §4.4) ----------------------------------------------------------

@pytest.mark.parametrize(("what", "data"), [
    ("1-byte message (E17 panic)", b"\x05"),
    ("unused code c1", b"\xc1"),
    ("not msgpack inside an array", b"\x94\x00\x01\xc1"),
    ("a map", msgpack.packb({"a": 1})),
    ("[5, 6] (E11)", b"\x92\x05\x06"),
    ("a response", msgpack.packb([1, 0, None, 1])),
    ("empty array", b"\x90"),
    ("nil alone", b"\xc0"),
    ("notification with 4 elements and a bad method", msgpack.packb([2, 1, 2])),
])
def test_call_port_bad_input_closes_without_reply(tmp_path: Path, what: str, data: bytes) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            assert await exchange(proxy.call_port, data, half_close=True) == b"", what
            assert not m4.raw_received, what
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_call_port_bad_request_with_msgid_gets_error_reply(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            reply = decode(await exchange(proxy.call_port, msgpack.packb([0, 4, 17, []])))
            assert reply[:2] == [1, 4] and "method name" in str(reply[2])
            reply = decode(await exchange(proxy.call_port, msgpack.packb([0, 4, "x", "notalist"])))
            assert reply[:2] == [1, 4] and "params must be an array" in str(reply[2])
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_oversize_message_refused_with_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("echo", len, replace=True)
            reply = decode(await exchange(proxy.call_port, msgpack.packb([0, 1, "echo", ["x" * 300]])))
            assert reply[0:2] == [1, 1] and reply[3] is None
            assert "too large for the M4 link" in str(reply[2]) and "248" in str(reply[2])
            assert not m4.raw_received
            # Just under the limit goes through.
            payload = "y" * 200
            assert decode(await exchange(proxy.call_port, msgpack.packb([0, 2, "echo", [payload]]))) \
                == [1, 2, None, 200]
            assert all(len(raw) <= 248 for raw in m4.raw_received)
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_no_reply_closes_without_bytes_by_default(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, call_timeout=0.2) as (proxy, m4):
            m4.switches.answer_calls = False
            m4.bind("slow", lambda: 1, replace=True)
            assert await exchange(proxy.call_port, msgpack.packb([0, 1, "slow", []])) == b""
            m4.switches.answer_calls = True
            proxy.m4.call_timeout = WAIT  # 0.2 s was for the call that never gets a reply
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_no_reply_gives_error_reply_with_flag(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, call_timeout=0.2, timeout_error_reply=True) as (proxy, m4):
            m4.switches.answer_calls = False
            reply = decode(await exchange(proxy.call_port, msgpack.packb([0, 1, "slow", []])))
            assert reply[:2] == [1, 1] and "no reply from the M4" in str(reply[2])
    asyncio.run(scenario())


def test_late_reply_is_dropped_not_handed_to_the_next_caller(tmp_path: Path) -> None:
    """E5 of the original: the stale reply shifted every later answer by one."""
    async def scenario() -> None:
        async with running_proxy(tmp_path, call_timeout=0.2) as (proxy, m4):
            m4.switches.answer_calls = False
            assert await exchange(proxy.call_port, msgpack.packb([0, 0, "first", []])) == b""
            (late_request,) = m4.raw_received
            m4.switches.answer_calls = True
            late_msgid = msgpack.unpackb(late_request)[1]
            m4.send_raw(msgpack.packb([1, late_msgid, None, "stale"]))
            await wait_for(lambda: proxy.m4.stats.late_replies == 1, what="late reply dropped")
            m4.bind("second", lambda: "fresh", replace=True)
            proxy.m4.call_timeout = WAIT  # this one must get its answer, however loaded the machine
            assert decode(await exchange(proxy.call_port, msgpack.packb([0, 0, "second", []]))) \
                == [1, 0, None, "fresh"]
    asyncio.run(scenario())


def test_pipelined_second_request_is_ignored_without_reset(tmp_path: Path) -> None:
    """E15 of the original: the unread second request made the kernel send RST."""
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("n", lambda: 1, replace=True)
            two = msgpack.packb([0, 1, "n", []]) + msgpack.packb([0, 2, "n", []])
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.call_port)
            writer.write(two)
            reply = await asyncio.wait_for(reader.read(-1), 10)  # ConnectionResetError would fail here
            assert reply == bytes.fromhex("940101c001")
            writer.close()
            assert len(m4.raw_received) == 1
    asyncio.run(scenario())


def test_second_call_on_a_finished_connection_fails_at_once(tmp_path: Path) -> None:
    """msgpack-rpc-python's second call() on one Client: refused with a reset, as by the
    original, instead of being swallowed until the client's own timeout."""
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("n", lambda: 1, replace=True)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.call_port)
            writer.write(msgpack.packb([0, 1, "n", []]))
            assert await asyncio.wait_for(reader.readexactly(5), 10) == bytes.fromhex("940101c001")
            writer.write(msgpack.packb([0, 2, "n", []]))  # the client has not noticed the FIN yet
            with pytest.raises(ConnectionError):  # the reset surfaces at the latest on a write
                for _ in range(100):
                    writer.write(b"\x90")
                    await writer.drain()
                    await asyncio.sleep(0)
            writer.close()
            assert len(m4.raw_received) == 1
    asyncio.run(scenario())


def test_client_closing_early_or_sending_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            assert await exchange(proxy.call_port, b"", half_close=True) == b""
            assert await exchange(proxy.call_port, b"\x94\x00", half_close=True) == b""  # truncated
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


# --- M4 side (§5) --------------------------------------------------------------------------

def test_rpclib_str8_error_reply_reaches_the_caller(tmp_path: Path) -> None:
    """E10: calling an unbound M4 function made rpclib answer with a str8 text: Go panic."""
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            reply = await exchange(proxy.call_port, bytes.fromhex("940000a367617390"))
            text = b"rpclib: server could not find function 'gas' with argument count 0."
            assert reply == b"\x94\x01\x00\xd9" + bytes([len(text)]) + text + b"\xc0"
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_a_method_name_that_is_not_utf8_gets_rpclibs_reply_with_its_bytes(tmp_path: Path) -> None:
    """Found by the fuzz: the virtual M4's runner died packing rpclib's text with such a name."""
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            name = b"!R\x89\xfd?"
            reply = await exchange(proxy.call_port, b"\x94\x00\x01\xc4\x05" + name + b"\x90")
            text = b"rpclib: server could not find function '" + name + b"' with argument count 0."
            assert reply == b"\x94\x01\x01\xd9" + bytes([len(text)]) + text + b"\xc0"
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_m4_stream_garbage_split_messages_and_raw_text(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            got: list[object] = []
            async with serving(proxy, tty=got.append):
                big = b"\xa7" * 300  # Serial.write of 300 bytes: bin16 (E26 panic)
                stream = (b"hello from RPC.print\r\n"  # raw text: fixints, skipped
                          + b"\xc0\x90\x92\x05\x06"  # stray nil, empty array, [5, 6]
                          + b"\x92\xa3tty\x01"  # array starting with a string
                          + b"\x92\xcc\x01\x02"  # type as uint8
                          + b"\xc1\xc1"  # bytes msgpack rejects
                          + msgpack.packb([2, "tty", [big]], use_bin_type=True)
                          + msgpack.packb([2, "tty", ["x" * 40]])  # str8 (d9)
                          # Non-ASCII raw text: c3 a9 reads as true + a 9-byte string, which eats
                          # the start of the next message; that one is lost, the one after is not.
                          + "é".encode() + b"\xff\xfe"
                          + msgpack.packb([2, "tty", [b"sacrificed"]], use_bin_type=True)
                          + msgpack.packb([2, "tty", [b"after"]], use_bin_type=True))
                m4.switches.chunk_size = 1  # byte by byte: every split point
                m4.send_raw(stream)
                await wait_for(lambda: b"after" in got, what="tty after garbage")
                assert got[:2] == [big, "x" * 40]
            await assert_still_serving(proxy, m4)
    asyncio.run(scenario())


def test_m4_call_to_unregistered_method_dropped_or_answered_with_flag(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            with pytest.raises(TimeoutError):
                await m4.call_raw("nobody", within=0.3)
            await assert_still_serving(proxy, m4)
        async with running_proxy(tmp_path, m4_error_replies=True) as (proxy, m4):
            reply = await m4.call_raw("nobody")
            kind, msgid, error, result = msgpack.unpackb(reply.raw)
            assert (kind, msgid, result) == (1, M4_THREAD_ID, None) and "nobody" in error
            # A registered but dead service: also an error reply with the flag.
            await register(proxy.register_port, msgpack.packb([0, 1, "register", [1, ["dead"]]]))
            reply = await m4.call_raw("dead", msgid=M4_THREAD_ID + 1)
            assert "port 1" in msgpack.unpackb(reply.raw)[2]
    asyncio.run(scenario())


def test_slow_service_blocks_nothing_else(tmp_path: Path) -> None:
    """E8c: one service that never answers froze every M4→Linux call in the original."""
    async def scenario() -> None:
        async with running_proxy(tmp_path, service_timeout=30) as (proxy, m4):
            never = asyncio.Event()

            async def hang() -> None:
                await never.wait()

            async with serving(proxy, hang=hang, fast=lambda: "quick"):
                hanging = asyncio.create_task(m4.call_raw("hang", msgid=1))
                reply = await m4.call_raw("fast", msgid=2, within=5)
                assert msgpack.unpackb(reply.raw) == [1, 2, None, "quick"]
                await assert_still_serving(proxy, m4)  # Linux→M4 also unaffected
                never.set()
                await hanging
    asyncio.run(scenario())


def test_service_reply_too_large_for_the_m4_becomes_an_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            async with serving(proxy, blob=lambda: "z" * 400):
                reply = await m4.call_raw("blob")
            assert len(reply.raw) <= 248
            assert "too large" in msgpack.unpackb(reply.raw)[2]
    asyncio.run(scenario())


def test_message_at_the_limit_still_fits_after_the_msgid_rewrite(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.bind("echo", len, replace=True)
            proxy.m4.pending._next = 2**31  # a long-running proxy: its ids take five bytes
            head = msgpack.packb([0, 0, "echo", [""]])
            payload = "p" * (248 - len(head) - 1)  # the empty string took 1 byte, str8 takes 2
            message = msgpack.packb([0, 0, "echo", [payload]])
            assert len(message) == 248
            assert decode(await exchange(proxy.call_port, message)) == [1, 0, None, len(payload)]
            assert len(m4.raw_received[-1]) == 248
    asyncio.run(scenario())
