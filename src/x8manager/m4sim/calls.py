"""The sketch's calls into Linux: ``RPC.call`` from up to ten sketch threads (``RPC.clients[10]``).

As the library does (``RPC.h``, ``RPC_client.h``, ``RPC.cpp``):

- a call goes out as ``[0, (int32_t)osThreadGetId(), name, [args...]]``: the msgid is the calling
  thread's id, the same for every call the thread makes (:attr:`SketchThread.msgid`, ``ce`` + 4 bytes);
- the thread then waits for a reply with that msgid, forever unless ``RPC.setTimeout(ms)`` was set;
  on a timeout the call returns nil and ``RPC.timedOut()`` is true. The library keeps one timeout and
  one timed-out flag for all threads (``VirtualM4.set_timeout`` sets every thread's); here each
  thread has its own (:meth:`SketchThread.set_timeout`, :attr:`SketchThread.timed_out`), so tests can
  give threads different ones;
- a reply is matched to whichever thread is *now* waiting with its msgid: a thread that gave up on a
  call and calls again takes the late reply to the first call as the answer to the second;
- only the result is kept: an error reply reaches the sketch as nil, its text lost;
- ``.as<T>()`` on the result converts it as msgpack-c does; on nil or a wrong type it throws, the
  thread terminates and the M4 halts (:meth:`SketchThread.call_as`).

The module does no I/O: it hands packed requests to its host and is given the replies.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from x8manager.m4sim import wire
from x8manager.m4sim.cxx import CType, TypeMismatch, ctype
from x8manager.m4sim.errors import M4SimError

__all__ = ["MAX_THREADS", "CallSlots", "SketchThread", "ThreadHost"]

log = logging.getLogger(__name__)

MAX_THREADS = 10  # RPCClass::clients[10]


class ThreadHost(Protocol):
    """What a sketch thread needs of the M4 it runs on."""

    def send_rpc(self, message: bytes) -> None:
        """Send one packed message on the "rpc" endpoint."""

    def check_running(self) -> None:
        """Raise :class:`~x8manager.m4sim.errors.M4Halted` when the M4 runs no sketch code."""

    def halt(self, reason: str) -> None:
        """An exception left a sketch thread: stop the M4."""


@dataclass
class CallCounters:
    calls_to_linux: int = 0
    replies_from_linux: int = 0
    error_replies: int = 0
    unmatched_replies: int = 0
    timeouts: int = 0


class SketchThread:
    """One sketch thread calling Linux with ``RPC.call``: a fixed msgid, one call at a time."""

    def __init__(self, index: int, host: ThreadHost, counters: CallCounters) -> None:
        self.index = index
        self.msgid = wire.THREAD_ID_BASE + index * wire.THREAD_ID_STRIDE
        self.timed_out = False  # RPC.timedOut() after this thread's last call
        self._host = host
        self._counters = counters
        self._timeout_ms: int | None = None  # None: osWaitForever
        self._waiting: asyncio.Future[Any] | None = None
        self._method = ""

    def __repr__(self) -> str:
        return f"SketchThread({self.index}, msgid=0x{self.msgid:08x})"

    @property
    def busy(self) -> bool:
        return self._waiting is not None

    def set_timeout(self, ms: int | None) -> None:
        """``RPC.setTimeout(ms)``; None: wait forever (the library's default)."""
        if ms is not None and ms < 0:
            raise ValueError(f"a timeout is a number of milliseconds, got {ms}")
        self._timeout_ms = ms

    async def call(self, method: str, *args: Any) -> Any:
        """``RPC.call(method, args...)``: the result; None (nil) after an error reply or a timeout."""
        self._host.check_running()
        if self._waiting is not None:
            raise M4SimError(f"{self!r} is already in a call to {self._method!r} (one call at a time)")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting, self._method = future, method
        self.timed_out = False
        self._counters.calls_to_linux += 1
        try:
            self._host.send_rpc(wire.request(self.msgid, method, list(args)))
            if self._timeout_ms is None:
                return await future
            try:
                return await asyncio.wait_for(asyncio.shield(future), self._timeout_ms / 1000)
            except TimeoutError:
                self.timed_out = True
                self._counters.timeouts += 1
                log.info("virtual M4: %r: no reply to %r within %d ms (RPC.timedOut())",
                         self, method, self._timeout_ms)
                return None
        finally:
            self._waiting = None

    async def call_as(self, kind: CType | str | type, method: str, *args: Any) -> Any:
        """``RPC.call(method, args...).as<T>()``: the result converted to *kind*. On nil or a
        wrong type ``.as<T>()`` throws, the thread terminates and the M4 halts: this raises
        :class:`~x8manager.m4sim.errors.M4Halted`."""
        target = ctype(kind)
        result = await self.call(method, *args)
        try:
            return target.convert(result)
        except TypeMismatch as exc:
            reason = f"{self!r}: RPC.call({method!r}).as<{target}>() threw: {exc}"
            self._host.halt(reason)
            self._host.check_running()  # raises M4Halted
            raise AssertionError("unreachable") from exc

    def deliver(self, result: Any) -> bool:
        """A reply with this thread's msgid: True if the thread was waiting for one."""
        if self._waiting is None or self._waiting.done():
            return False
        self._waiting.set_result(result)
        return True

    def fail(self, exc: BaseException) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_exception(exc)


class CallSlots:
    """The ten sketch threads that may call Linux, and the matching of Linux's replies to them."""

    def __init__(self, host: ThreadHost) -> None:
        self.counters = CallCounters()
        self.threads = [SketchThread(index, host, self.counters) for index in range(MAX_THREADS)]
        self._raw_waiters: dict[int, asyncio.Future[bytes]] = {}

    def thread(self, index: int) -> SketchThread:
        if not 0 <= index < MAX_THREADS:
            raise ValueError(f"a sketch has threads 0..{MAX_THREADS - 1} calling at once, not {index}")
        return self.threads[index]

    def idle_thread(self) -> SketchThread:
        """A thread not in a call (for callers that do not care which thread calls)."""
        for thread in self.threads:
            if not thread.busy:
                return thread
        raise M4SimError(f"all {MAX_THREADS} sketch threads are in a call")

    def expect_raw(self, msgid: int) -> asyncio.Future[bytes]:
        """Test switch: the next reply with *msgid*, byte for byte, before any thread sees it."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._raw_waiters[msgid] = future
        future.add_done_callback(lambda _f: self._raw_waiters.pop(msgid, None))
        return future

    def deliver(self, msgid: int, error: Any, result: Any, raw: bytes) -> None:
        """``RPCClass::response``: hand *result* to the thread waiting with *msgid*."""
        self.counters.replies_from_linux += 1
        waiter = self._raw_waiters.get(msgid)
        if waiter is not None and not waiter.done():
            waiter.set_result(raw)
            return
        if error is not None:
            self.counters.error_replies += 1
            log.info("virtual M4: Linux answered msgid 0x%08x with an error; the sketch sees nil: %r",
                     msgid, error)
        for thread in self.threads:
            if thread.msgid == msgid and thread.deliver(result):
                return
        self.counters.unmatched_replies += 1
        log.info("virtual M4: a reply with msgid 0x%08x matches no waiting thread; dropped", msgid)

    def fail_all(self, exc: BaseException) -> None:
        for thread in self.threads:
            thread.fail(exc)
        for waiter in list(self._raw_waiters.values()):
            if not waiter.done():
                waiter.set_exception(exc)
