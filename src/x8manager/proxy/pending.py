"""Linux→M4 calls waiting for the M4's reply, keyed by the msgid the proxy put on the wire.

Every msgpack-rpc-python client sends msgid 0, so the client's own ids cannot tell replies
apart; the proxy gives each call a fresh uint32 id instead and drops replies nobody waits for
any more (a late reply never reaches the next caller, unlike the original's FIFO).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from x8manager.rpc.framing import MAX_MSGID

__all__ = ["PendingCalls"]

log = logging.getLogger(__name__)

# msgpack positive fixints: ids that take one byte on the wire.
COMPACT_IDS = 128


ReplyCallback = Callable[[bytes], None]


class PendingCalls:
    """One future (or callback) per in-flight call; the caller removes its entry when done."""

    def __init__(self, first_id: int = 1) -> None:
        self._next = first_id & MAX_MSGID
        self._waiting: dict[int, asyncio.Future[bytes] | ReplyCallback] = {}
        self._compact = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, *, compact: bool = False) -> tuple[int, asyncio.Future[bytes]]:
        """A fresh wire msgid and the future its reply will complete."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        msgid = self._new_id(compact)
        self._waiting[msgid] = future
        return msgid, future

    def open_callback(self, on_reply: ReplyCallback, *, compact: bool = False) -> int:
        """A fresh wire msgid whose reply is passed to *on_reply* as soon as it arrives.

        No future and no event-loop round trip: the proxy's call port uses this per call.
        The entry is gone once the reply is delivered or :meth:`close` is called.
        """
        msgid = self._new_id(compact)
        self._waiting[msgid] = on_reply
        return msgid

    def _new_id(self, compact: bool) -> int:
        """Ids count up through uint32, so a late reply cannot meet a new call with its id for a
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
        return msgid

    def close(self, msgid: int) -> None:
        waiter = self._waiting.pop(msgid, None)
        if isinstance(waiter, asyncio.Future) and not waiter.done():
            waiter.cancel()

    def resolve(self, msgid: int, raw_reply: bytes) -> bool:
        """Hand *raw_reply* to the call waiting for *msgid*; False if none waits (dropped)."""
        waiter = self._waiting.get(msgid)
        if waiter is None:
            return False
        if isinstance(waiter, asyncio.Future):
            if waiter.done():
                return False
            waiter.set_result(raw_reply)
            return True
        del self._waiting[msgid]
        waiter(raw_reply)
        return True
