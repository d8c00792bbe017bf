"""An M4 message cut at 496 bytes costs only itself, through the real proxy (issue 19 item 2).

On the X8, OpenAMP sends the first 496 bytes of a longer M4 send and the next message follows
at once (reference section 15). The virtual M4's bytes are written by hand with ``send_raw``,
so these tests do not depend on what m4sim cuts by itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
from proxy_harness import WAIT, exchange, running_proxy, serving, wait_for

from x8manager.m4sim import VirtualM4
from x8manager.rpc.framing import M4_MAX_SEND

CALL_TIMEOUT = 3.0  # the call whose reply was cut gets none; its caller waits this long

LINE = msgpack.packb([2, "tty", [b"the next Serial line\r\n"]])


def cut(message: bytes) -> bytes:
    return message[:M4_MAX_SEND]


async def calls_taken(m4: VirtualM4, count: int) -> dict[str, int]:
    """The wire msgid of each call the M4 has taken, by method."""
    await wait_for(lambda: len(m4.raw_received) >= count, what=f"{count} calls at the M4")
    return {method: msgid for _, msgid, method, _ in map(msgpack.unpackb, m4.raw_received)}


def test_a_600_byte_reply_cut_at_496_costs_only_its_own_call(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, call_timeout=CALL_TIMEOUT) as (proxy, m4):
            m4.switches.answer_calls = False  # the replies below are written by hand
            lines: list[bytes] = []
            async with serving(proxy, tty=lines.append):
                big = asyncio.create_task(exchange(proxy.call_port, msgpack.packb([0, 0, "big", []])))
                small = asyncio.create_task(exchange(proxy.call_port, msgpack.packb([0, 0, "small", []])))
                ids = await calls_taken(m4, 2)
                # Behind the cut reply, more than it lacks: msgpack alone would "complete" it with
                # the next reply and lines, and hand the big caller a success carrying them.
                m4.send_raw(cut(msgpack.packb([1, ids["big"], None, "r" * 600]))
                            + msgpack.packb([1, ids["small"], None, "small ok"]) + LINE * 8)
                assert msgpack.unpackb(await small) == [1, 0, None, "small ok"]
                await wait_for(lambda: lines == [b"the next Serial line\r\n"] * 8, what="the lines")
                reply = await asyncio.wait_for(big, WAIT + CALL_TIMEOUT)
                assert reply == b"" or msgpack.unpackb(reply)[2] is not None  # never a success
    asyncio.run(scenario())


def test_a_600_byte_serial_print_cut_at_496_costs_only_itself(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            m4.switches.answer_calls = False
            lines: list[bytes] = []
            async with serving(proxy, tty=lines.append):
                call = asyncio.create_task(exchange(proxy.call_port, msgpack.packb([0, 0, "value", []])))
                ids = await calls_taken(m4, 1)
                long_print = msgpack.packb([2, "tty", [b"p" * 600]])  # Serial.print of 600 bytes
                m4.send_raw(LINE + cut(long_print) + msgpack.packb([1, ids["value"], None, 42])
                            + LINE * 8)
                assert msgpack.unpackb(await call) == [1, 0, None, 42]
                await wait_for(lambda: len(lines) == 9, what="the lines around the cut one")
                assert lines == [b"the next Serial line\r\n"] * 9
    asyncio.run(scenario())
