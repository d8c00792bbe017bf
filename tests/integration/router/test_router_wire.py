"""The router front on the wire: router methods and their errors, bad input, flow control, TCP."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgpack

from tests.support.proxy import wait_for
from tests.support.router import Client, client, rig


def test_router_methods_and_their_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, m4, path), client(path) as a, client(path) as b:
            assert (await a.request(1, "$/version"))[2:] == [None, "x8manager m4-proxy 0.1.0"]
            assert await a.request(2, "$/register", "x") == [1, 2, None, True]
            assert await b.request(3, "$/register", "x") == [1, 3, [5, "route already exists: x"], None]
            assert await a.request(4, "$/register", "x") == [1, 4, [5, "route already exists: x"], None]
            assert await a.request(5, "$/register", 7) == \
                [1, 5, [1, "invalid params: expected string, got int8"], None]  # a fixint, as Go decodes it
            assert await a.request(6, "$/register") == \
                [1, 6, [1, "invalid params: only one param is expected, got 0"], None]
            assert await a.request(7, "$/register", ["x"]) == \
                [1, 7, [1, "invalid params: expected string, got []interface {}"], None]
            assert await b.request(8, "$/unregister", "x") == \
                [1, 8, [4, "route not registered by this client: x"], None]
            assert await a.request(9, "$/reset", 1) == \
                [1, 9, [1, "invalid params: no params are expected"], None]
            assert await a.request(10, "$/register", "y") == [1, 10, None, True]
            assert await a.request(11, "$/reset") == [1, 11, None, True]
            assert proxy.routes.routes() == {}
            # Another client's method: b calls what a provides, a answers with its own id.
            assert await a.request(12, "$/register", "double") == [1, 12, None, True]
            b.writer.write(msgpack.packb([0, 99, "double", [21]]))
            kind, forwarded_id, method, params = await a.next()
            assert (kind, method, params) == (0, "double", [21])
            a.writer.write(msgpack.packb([1, forwarded_id, None, 42]))
            assert await b.next() == [1, 99, None, 42]
            # A notification b sends to a's method reaches a; one for nobody goes to the M4.
            m4.bind("tick", lambda n: n)
            b.writer.write(msgpack.packb([2, "double", [1]]) + msgpack.packb([2, "tick", [5]]))
            assert await a.next() == [2, "double", [1]]
            assert (await m4.wait_received("tick")).params == [5]
            # $/cancelRequest: b gives up; a is told to cancel its copy; no answer reaches b.
            b.writer.write(msgpack.packb([0, 100, "double", [1]]))
            _, forwarded_id, _, _ = await a.next()
            b.writer.write(msgpack.packb([2, "$/cancelRequest", [100]]))
            assert await a.next() == [2, "$/cancelRequest", [forwarded_id]]
            a.writer.write(msgpack.packb([1, forwarded_id, None, 2]))  # too late: dropped
            assert await b.request(101, "$/version") == [1, 101, None, "x8manager m4-proxy 0.1.0"]
    asyncio.run(scenario())


def test_bad_input_gets_an_error_or_a_closed_connection_and_others_go_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, m4, path), client(path) as good:
            m4.bind("ping", lambda: "pong")
            assert await good.request(1, "ping") == [1, 1, None, "pong"]
            for garbage in (b"\xc1", b"\x94\x00\x01\xc1", b"\xc6\x06\x00\x00\x00",  # 100 MB bin header
                            b"\xdd\x7f\xff\xff\xff"):  # an array of 2 billion elements
                async with client(path) as bad:
                    bad.writer.write(garbage)
                    assert await bad.closed()
                assert await good.request(2, "ping") == [1, 2, None, "pong"]
            async with client(path) as odd:  # well-formed msgpack, not RPC: an error, not a close
                assert await odd.request(3, 17) == [1, 3, [4, "invalid message: method name must be a "
                                                           "string, got int"], None]
                odd.writer.write(msgpack.packb({"a": 1}) + msgpack.packb([7]))
                assert await odd.request(4, "ping") == [1, 4, None, "pong"]
            await wait_for(lambda: proxy.router is not None and len(proxy.router.connections) == 1,
                           what="the bad clients gone")
    asyncio.run(scenario())


def test_a_client_that_never_reads_is_not_read_from(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, _, path), client(path) as good:
            _, writer = await asyncio.open_unix_connection(str(path))
            request = msgpack.packb([0, 1, "$/version", []])
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        for _ in range(200):  # ~4 MB of replies asked for, none read
                            writer.write(request * 2000)
                            await writer.drain()  # blocks once the proxy stops reading
                assert proxy.router is not None
                stuck = [c for c in proxy.router.connections if c.unsent]
                assert stuck and all(c.unsent < 2 * 1024 * 1024 for c in stuck)
                assert await good.request(9, "$/version") == [1, 9, None, "x8manager m4-proxy 0.1.0"]
            finally:
                writer.close()
    asyncio.run(scenario())


def test_tcp_router_front_and_socket_mode(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, router_listen="127.0.0.1:0") as (proxy, m4, path):
            assert oct(path.stat().st_mode & 0o777) == "0o660"
            assert proxy.router is not None and proxy.router.tcp_address is not None
            m4.bind("ping", lambda: "pong")
            reader, writer = await asyncio.open_connection(*proxy.router.tcp_address)
            tcp = Client(reader, writer)
            try:
                assert await tcp.request(1, "ping") == [1, 1, None, "pong"]
            finally:
                tcp.close()
    asyncio.run(scenario())


def test_set_max_msg_size_caps_what_the_connection_is_sent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (_, m4, path), client(path) as small, client(path) as other:
            assert await small.request(1, "$/setMaxMsgSize", 127) == \
                [1, 1, [1, "invalid params: max message size must be greater than 127, got 127"], None]
            assert await small.request(2, "$/setMaxMsgSize", "x") == \
                [1, 2, [1, "invalid params: expected integer, got string"], None]
            assert await small.request(3, "$/setMaxMsgSize") == \
                [1, 3, [1, "invalid params: only one param is expected, got 0"], None]
            assert await small.request(4, "$/setMaxMsgSize", 4096) == [1, 4, None, True]
            small.writer.write(msgpack.packb([2, "$/setMaxMsgSize", [200]]))  # as RouterBridge sends it
            assert await small.request(5, "$/register", "sink") == [1, 5, None, True]
            # A request over its size: the caller gets the size error, the provider nothing.
            assert await other.request(6, "sink", "x" * 300) == \
                [1, 6, [6, "message size exceeds the limit of 200 bytes"], None]
            other.writer.write(msgpack.packb([2, "sink", ["y" * 300]]) + msgpack.packb([2, "sink", ["fits"]]))
            assert await small.next() == [2, "sink", ["fits"]]  # the big notification was dropped
            # A reply to its own call over its size becomes the size error.
            m4.bind("big", lambda: "z" * 220)
            too_large = [6, "message size exceeds the limit of 200 bytes"]
            assert await small.request(7, "big") == [1, 7, too_large, None]
            assert await other.request(8, "big") == [1, 8, None, "z" * 220]  # others are not capped
    asyncio.run(scenario())


def test_invalid_params_name_the_type_as_arduino_routers_go_decoder_does(tmp_path: Path) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"\x07", "int8"), (b"\xff", "int8"), (b"\xcc\xc8", "uint8"), (b"\xcd\x01\x2c", "uint16"),
        (b"\xce\x00\x01\x00\x00", "uint32"), (b"\xd1\xff\x00", "int16"), (b"\xd3" + bytes(8), "int64"),
        (b"\xca\x3f\xc0\x00\x00", "float32"), (msgpack.packb(1.5), "float64"), (b"\xc0", "<nil>"),
        (b"\xc3", "bool"), (b"\xc4\x01x", "[]uint8"), (b"\x90", "[]interface {}"),
        (b"\x81\xa1k\x01", "map[string]interface {}"), (b"\xd6\xff" + bytes(4), "time.Time")]

    async def scenario() -> None:
        async with rig(tmp_path) as (_, _, path), client(path) as a:
            for msgid, (param, go_type) in enumerate(cases):
                a.writer.write(b"\x94\x00" + bytes([msgid]) + b"\xaa$/register\x91" + param)
                error = [1, f"invalid params: expected string, got {go_type}"]
                assert await a.next() == [1, msgid, error, None]
    asyncio.run(scenario())
