"""Helpers for the virtual M4's unit tests: an in-memory link that records every write."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from x8manager.m4sim import SimSwitches, VirtualM4


class MemoryLink:
    """The Linux end of the link, in memory: tests feed bytes in and see each write() the M4 makes."""

    description = "memory link"
    keeps_write_boundaries = True  # each send() is one write of Linux's: one RPMsg message

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.writes: list[bytes] = []
        self.written = asyncio.Condition()
        self.closed = False

    async def read(self) -> bytes:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        async with self.written:
            self.writes.append(bytes(data))
            self.written.notify_all()

    async def close(self) -> None:
        self.closed = True

    def send(self, data: bytes) -> None:
        """Bytes from Linux toward the M4 (one read() on the M4 side)."""
        self.incoming.put_nowait(data)

    def end(self) -> None:
        self.incoming.put_nowait(b"")

    async def messages(self, count: int, within: float = 5.0) -> list[Any]:
        """Wait until the M4 has written at least *count* complete objects; return them."""

        def decoded() -> list[Any]:
            return list(msgpack.Unpacker(io.BytesIO(b"".join(self.writes)), raw=False))

        async with self.written:
            await asyncio.wait_for(self.written.wait_for(lambda: len(decoded()) >= count), within)
        return decoded()

    async def raw(self, size: int, within: float = 5.0) -> bytes:
        async with self.written:
            await asyncio.wait_for(self.written.wait_for(lambda: len(b"".join(self.writes)) >= size), within)
        return b"".join(self.writes)


Scenario = Callable[[VirtualM4, MemoryLink], Awaitable[None]]


def run_with_m4(scenario: Scenario, *, demo: bool = True, **switches: Any) -> None:
    """Run *scenario* against a started virtual M4 on a memory link (*switches*: SimSwitches)."""

    async def main() -> None:
        m4 = VirtualM4(demo=demo, switches=SimSwitches(**switches))
        link = MemoryLink()

        async def opener() -> MemoryLink:
            return link

        await m4.start(opener)
        try:
            await asyncio.wait_for(scenario(m4, link), 30)
        finally:
            await m4.stop()

    asyncio.run(main())
