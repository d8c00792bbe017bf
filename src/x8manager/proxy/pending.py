"""Linux→M4 calls waiting for the M4's reply, keyed by the msgid the proxy put on the wire.

Every msgpack-rpc-python client sends msgid 0, so the client's own ids cannot tell replies
apart; the proxy gives each call a fresh uint32 id instead and drops replies nobody waits for
any more (a late reply never reaches the next caller, unlike the original's FIFO).
"""

from __future__ import annotations

import asyncio
import logging

from x8manager.rpc.framing import MAX_MSGID

__all__ = ["PendingCalls"]

log = logging.getLogger(__name__)

# msgpack positive fixints: ids that take one byte on the wire.
COMPACT_IDS = 128


class PendingCalls:
    """One future per in-flight call; the caller removes its entry in ``finally``."""

    def __init__(self, first_id: int = 1) -> None:
        self._next = first_id & MAX_MSGID
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._compact = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, *, compact: bool = False) -> tuple[int, asyncio.Future[bytes]]:
        """A fresh wire msgid and the future its reply will complete.

        Ids count up through uint32, so a late reply cannot meet a new call with its id for a
        very long time. *compact* takes a free id below 128 instead (one byte on the wire), for
        a message the usual id would push over the M4 link's size limit.
        """
        if compact:
            for offset in range(COMPACT_IDS):
                msgid = (self._compact + offset) % COMPACT_IDS
                if msgid not in self._waiting:
                    break
            else:
                raise RuntimeError(f"all {COMPACT_IDS} one-byte msgids are in flight")
            self._compact = (msgid + 1) % COMPACT_IDS
        else:
            if len(self._waiting) > MAX_MSGID:  # pragma: no cover - 4 billion calls in flight
                raise RuntimeError("no free msgid")
            while self._next in self._waiting:
                self._next = (self._next + 1) & MAX_MSGID
            msgid = self._next
            self._next = (self._next + 1) & MAX_MSGID
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[msgid] = future
        return msgid, future

    def close(self, msgid: int) -> None:
        future = self._waiting.pop(msgid, None)
        if future is not None and not future.done():
            future.cancel()

    def resolve(self, msgid: int, raw_reply: bytes) -> bool:
        """Hand *raw_reply* to the call waiting for *msgid*; False if none waits (dropped)."""
        future = self._waiting.get(msgid)
        if future is None or future.done():
            return False
        future.set_result(raw_reply)
        return True
