"""SerialRPC on the X8's M4: the sketch's ``Serial`` over the RPC link.

``SerialRPC.begin()`` binds ``tty(std::vector<uint8_t>&)``, which stores what Linux sends (str or
bin) in a 1024-byte RX ring behind ``Serial.read()``; ``Serial.write(buf, len)`` sends one
notification ``[2, "tty", [bin]]`` per call, so ``println("x")`` sends two: the text and ``\\r\\n``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["SERIAL_RX_BYTES", "SerialRPC"]

log = logging.getLogger(__name__)

SERIAL_RX_BYTES = 1024


class SerialRPC:
    """The sketch's ``Serial``: *notify* sends one notification (``RPC.send``)."""

    def __init__(self, notify: Callable[[str, bytes], Awaitable[None]]) -> None:
        self._notify = notify
        self.input = bytearray()
        self._changed = asyncio.Event()

    def on_tty(self, data: bytes) -> None:
        """The bound ``tty`` procedure: Linux's bytes for ``Serial.read()``; a full ring drops the rest."""
        room = SERIAL_RX_BYTES - len(self.input)
        if len(data) > room:
            log.warning("virtual M4: serial RX ring full, dropped %d bytes", len(data) - room)
        self.input.extend(data[: max(room, 0)])
        self._changed.set()

    def read(self) -> bytes:
        """Take every byte Linux wrote so far."""
        data = bytes(self.input)
        self.input.clear()
        return data

    async def wait_input(self, predicate: Callable[[bytes], bool], within: float = 10.0) -> bytes:
        """Wait until the unread input satisfies *predicate*; return it (not consumed)."""
        async with asyncio.timeout(within):
            while not predicate(bytes(self.input)):
                self._changed.clear()
                await self._changed.wait()
        return bytes(self.input)

    async def write(self, data: bytes | str) -> None:
        """``Serial.write``: one ``tty`` notification carrying the bytes as bin."""
        await self._notify("tty", data.encode("utf-8") if isinstance(data, str) else data)

    async def println(self, text: str) -> None:
        """``Serial.println``: two notifications, the text and then ``\\r\\n``."""
        await self.write(text)
        await self.write(b"\r\n")
