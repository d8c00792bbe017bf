"""The link runner: moves bytes between a link (pty, device, socket) and the virtual M4.

Toward the M4, a real ``/dev/x8h7_ui`` ``write()`` becomes exactly one RPMsg message, and the RPC
library parses each message on its own: a message split across two writes is lost, two messages
in one write are both handled (routed on the first one's type byte). How much of that a link can
show depends on the link (:class:`InboundSplitter`):

- a link that keeps write boundaries (``keeps_write_boundaries``: the unit tests' memory link, a
  datagram socket) hands over one write per read: each read is one RPMsg message, exactly as on
  the device, split messages are lost;
- a pty, a tty, a virtio port or a stream socket keeps none: it merges writes and splits them by
  itself (a pty returned one 200-byte write in two reads when its reader drained a full buffer, and
  a writer blocked on a full pty writes the rest of a message later). Bytes split by the transport
  are indistinguishable from a write split by Linux, so the runner recovers messages from the
  stream: every complete msgpack object is one message, an incomplete one waits for its rest (up
  to :data:`MAX_CARRY` bytes), and bytes that are not msgpack make the rest of the read one message
  (the M4 routes it on its second byte; a parse error behind a request byte halts it).

Toward Linux, the runner writes what the H7 ring holds in chunks of at most ``chunk_size`` bytes,
as the H7 forwards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgpack

from x8manager.m4sim.h7 import H7Ring
from x8manager.m4sim.links import Link

__all__ = ["InboundSplitter", "LinkCounters", "LinkRunner"]

log = logging.getLogger(__name__)

MAX_CARRY = 64 * 1024  # an unfinished message kept for the next read; beyond it, garbage


@dataclass
class LinkCounters:
    bytes_in: int = 0
    bytes_out: int = 0
    split_lost: int = 0  # tails dropped: longer than MAX_CARRY (a stream) or never finished
    connections: int = 0
    connected: bool = False


class InboundSplitter:
    """One read from Linux -> the RPMsg messages the real M4 would have received."""

    def __init__(self, counters: LinkCounters) -> None:
        self._carry = b""
        self._counters = counters

    def feed(self, data: bytes, *, boundaries: bool = False) -> list[bytes]:
        """The messages in one read *data*; *boundaries*: the read is one write of Linux's."""
        if boundaries:
            return [data]
        data, self._carry = self._carry + data, b""
        unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        messages: list[bytes] = []
        start = 0
        while start < len(data):
            try:
                unpacker.skip()
            except msgpack.OutOfData:
                tail = data[start:]
                if len(tail) <= MAX_CARRY:
                    self._carry = tail
                else:
                    self._counters.split_lost += 1
                    log.warning("virtual M4: dropped %d bytes that declare a message longer than any "
                                "write to the M4 can be", len(tail))
                break
            except (ValueError, msgpack.StackError):
                messages.append(data[start:])
                break
            end = unpacker.tell()
            messages.append(data[start:end])
            start = end
        return messages


class LinkRunner:
    """Serve one link at a time: read messages into *on_message*, write the H7 ring out in chunks."""

    def __init__(self, ring: H7Ring, on_message: Callable[[bytes], Awaitable[None]],
                 chunk_size: Callable[[], int]) -> None:
        self.counters = LinkCounters()
        self._ring = ring
        self._on_message = on_message
        self._chunk_size = chunk_size
        self._reading = asyncio.Event()
        self._reading.set()
        self.connected = asyncio.Event()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def serve(self, link: Link) -> None:
        """Until end of stream or a read error on *link*."""
        self.counters.connections += 1
        self.counters.connected = True
        self.connected.set()
        log.info("virtual M4 (stand-in for the M4 sketch) serving on %s", link.description)
        writer = asyncio.create_task(self._write_loop(link), name="m4sim-writer")
        splitter = InboundSplitter(self.counters)
        boundaries = bool(getattr(link, "keeps_write_boundaries", False))
        try:
            while True:
                await self._reading.wait()
                try:
                    data = await link.read()
                except OSError as exc:
                    log.warning("virtual M4: reading %s failed: %s", link.description, exc)
                    break
                if not data:
                    log.info("virtual M4: end of stream on %s", link.description)
                    break
                self.counters.bytes_in += len(data)
                for message in splitter.feed(data, boundaries=boundaries):
                    await self._on_message(message)
        finally:
            self.connected.clear()
            self.counters.connected = False
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            await link.close()

    async def _write_loop(self, link: Link) -> None:
        ring = self._ring
        while True:
            await ring.wait_ready()
            while chunk := ring.take(self._chunk_size()):
                try:
                    await link.write(chunk)
                except OSError as exc:
                    log.warning("virtual M4: writing to %s failed: %s", link.description, exc)
                    return
                self.counters.bytes_out += len(chunk)
            ring.mark_drained()
