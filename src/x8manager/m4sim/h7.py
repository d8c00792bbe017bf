"""The path from the M4 to Linux: RPMsg's 496-byte cut and the H7 firmware's 4 KiB ring.

- ``OPENAMP_send`` of more than an RPMsg payload (496 bytes) sends the first 496 bytes and drops the
  rest (``rpmsg_virtio_send_offchannel_raw``: ``if (len > buff_len) len = buff_len``): a 600-byte
  reply reaches Linux as its first 496 bytes, nothing more (:func:`rpmsg_cut`);
- the H7 appends what both endpoints ("rpc" and "raw") send to one 4096-byte ring that overwrites
  its **oldest** bytes when Linux does not read, and forwards it in subpackets of at most 128 bytes:
  message boundaries are not kept (:class:`H7Ring`).
"""

from __future__ import annotations

import asyncio
import logging

from x8manager.rpc.framing import M4_MAX_SEND

__all__ = ["H7_RING_BYTES", "M4_TO_LINUX_CHUNK", "RPMSG_PAYLOAD_MAX", "H7Ring", "rpmsg_cut"]

log = logging.getLogger(__name__)

# RPMSG_BUFFER_SIZE 512 minus the 16-byte RPMsg header: one limit, the one the proxy's decoder relies on.
RPMSG_PAYLOAD_MAX = M4_MAX_SEND
H7_RING_BYTES = 4096
M4_TO_LINUX_CHUNK = 128  # SPI_DMA_BUFFER_SIZE / 2


def rpmsg_cut(message: bytes) -> bytes:
    """What of *message* one ``OPENAMP_send`` delivers."""
    return message[:RPMSG_PAYLOAD_MAX]


class H7Ring:
    """The H7's ring toward Linux: bytes in, chunks out, the oldest bytes lost when it is full."""

    def __init__(self, capacity: int = H7_RING_BYTES) -> None:
        self.capacity = capacity
        self.lost = 0  # bytes overwritten before Linux read them
        self._data = bytearray()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    def __len__(self) -> int:
        return len(self._data)

    def put(self, data: bytes) -> None:
        self._data += data
        overflow = len(self._data) - self.capacity
        if overflow > 0:
            del self._data[:overflow]
            self.lost += overflow
            log.warning("virtual M4: the H7 ring is full; its %d oldest bytes were overwritten", overflow)
        if self._data:
            self._ready.set()
            self._drained.clear()

    def take(self, limit: int = M4_TO_LINUX_CHUNK) -> bytes:
        """Up to *limit* of the oldest bytes (b"" when empty)."""
        chunk = bytes(self._data[:limit])
        del self._data[: len(chunk)]
        if not self._data:
            self._ready.clear()
        return chunk

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def mark_drained(self) -> None:
        """The link has written everything taken so far (and nothing is left)."""
        if not self._data:
            self._drained.set()

    async def wait_drained(self) -> None:
        await self._drained.wait()
