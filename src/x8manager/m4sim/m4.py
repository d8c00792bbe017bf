"""The virtual M4: a stand-in for an M4 sketch using Arduino's ``RPC``/``SerialRPC`` libraries.

It behaves toward Linux as the real library does (ArduinoCore-mbed 4.6.0, measured: reference
section 15), not as we wish it did. The parts, each in its own module:

- :mod:`~x8manager.m4sim.dispatcher`: rpclib's dispatcher (call or notification by array length,
  rpclib's texts with the swapped counts, C++ argument conversion; a wrong type halts the M4);
- :mod:`~x8manager.m4sim.endpoint`: the "rpc" endpoint (the hello swallowed, routing on the raw second
  byte, each message parsed on its own);
- :mod:`~x8manager.m4sim.calls`: the sketch threads' ``RPC.call`` (one fixed msgid per thread, wait
  forever unless a timeout is set, errors seen as nil, ``.as<T>()`` halting on nil);
- :mod:`~x8manager.m4sim.h7` and :mod:`~x8manager.m4sim.runner`: the 496-byte RPMsg cut, the H7's 4 KiB
  ring that loses its oldest bytes, 128-byte chunks, and how a stream link stands for the device;
- :mod:`~x8manager.m4sim.serial`: SerialRPC (``tty`` in, ``tty`` notifications out).

A halted M4 (:attr:`VirtualM4.halted`) reads and answers nothing until :meth:`VirtualM4.reset` or a
new flash (:meth:`VirtualM4.boot`), as a real M4 after ``std::terminate``.

Test switches are one object, :attr:`VirtualM4.switches` (:class:`SimSwitches`); the test-only actions
are ``send_raw``, ``call_raw``, ``pause_reading``/``resume_reading``, ``flush``, ``replug_pty`` and
``bind(..., replace=True)``; ``raw_received`` records every message Linux sent, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack

from x8manager.m4sim import wire
from x8manager.m4sim.calls import MAX_THREADS, CallSlots, SketchThread
from x8manager.m4sim.cxx import CType
from x8manager.m4sim.demo import bind_demo_procedures, demo_procedures
from x8manager.m4sim.dispatcher import Deferred, Dispatcher, Procedure, ReceivedCall, SketchHalt
from x8manager.m4sim.endpoint import HELLO, RpcEndpoint
from x8manager.m4sim.errors import M4Halted, M4SimError
from x8manager.m4sim.h7 import M4_TO_LINUX_CHUNK, H7Ring, rpmsg_cut
from x8manager.m4sim.links import Link, open_pty
from x8manager.m4sim.runner import LinkRunner
from x8manager.m4sim.serial import SerialRPC
from x8manager.m4sim.sketch import SketchProfile, read_profile
from x8manager.rpc import Frame, parse_message

__all__ = [
    "LINUX_TO_M4_MAX", "M4Halted", "M4SimError", "ReceivedCall", "SimStats", "SimSwitches", "VirtualM4",
]

log = logging.getLogger(__name__)

LinkOpener = Callable[[], Awaitable[Link]]

LINUX_TO_M4_MAX = 248  # one /dev/x8h7_ui write() must fit a 256-byte SPI frame (reference 7.1)
RECEIVED_LOG = 1000  # how many received messages the stand-in remembers for tests


@dataclass
class SimSwitches:
    """The virtual M4's test switches, in one place (the defaults are the real M4's behaviour)."""

    answer_calls: bool = True  # False: the sketch takes calls and never replies (a hung rpc thread)
    concurrent_dispatch: bool = False  # True: coroutine procedures answer out of order (no real M4 does)
    chunk_size: int = M4_TO_LINUX_CHUNK  # bytes per write toward Linux (1: every split point)
    max_inbound: int | None = LINUX_TO_M4_MAX  # larger writes from Linux are dropped, as the driver does
    interleave_text: bytes = b""  # raw RPC.print text before every message toward Linux

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")


@dataclass
class _Counters:
    messages_in: int = 0
    messages_out: int = 0
    calls_answered: int = 0
    dropped_oversize_in: int = 0
    cut_oversize_out: int = 0  # messages over 496 bytes sent as their first 496
    dropped_halted: int = 0  # messages a halted M4 never read
    dropped_not_running: int = 0  # messages a silent or crashed sketch never read
    hellos_swallowed: int = 0
    boots: int = 0  # sketches booted over the stand-in SWD wire (m4sim.sketch)
    resets: int = 0


@dataclass
class SimStats:
    """A snapshot of the virtual M4's counters (``m4-sim stats``)."""

    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    calls_answered: int
    calls_to_linux: int
    replies_from_linux: int
    error_replies: int
    unmatched_replies: int
    timeouts: int
    dropped_oversize_in: int
    cut_oversize_out: int
    ring_bytes_lost: int
    split_lost: int
    ignored_in: int
    dropped_halted: int
    dropped_not_running: int
    hellos_swallowed: int
    connections: int
    connected: bool
    boots: int
    resets: int
    halted: bool
    halt_reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _named_answer(sketch: str, method: str) -> Procedure:
    """A procedure of a test sketch that has no demo meaning: it answers who answered."""

    def answer(*args: Any) -> list[Any]:
        return [sketch, method, *args]

    return answer


class VirtualM4:
    """Stand-in for the M4 sketch side of the RPC link (not the real M4).

    Use it in-process (``await m4.start(opener)``, ``await m4.call(...)``, ``await m4.stop()``)
    or through the ``m4-sim`` command.
    """

    # No attributes beyond these: a test that sets a switch the M4 does not have (``m4.answer_calls``
    # instead of ``m4.switches.answer_calls``) fails at once instead of testing nothing.
    __slots__ = (
        "_calls", "_counters", "_dispatcher", "_endpoint", "_halt_reason", "_link", "_link_runner",
        "_pty_alias", "_received_changed", "_ring", "_runner", "_serial", "_tasks", "calls_received",
        "raw_received", "rpc_running", "serial", "sketch", "switches",
    )

    def __init__(self, *, demo: bool = True, serial: bool = True,
                 switches: SimSwitches | None = None) -> None:
        self.switches = switches or SimSwitches()
        self._counters = _Counters()
        self.calls_received: deque[ReceivedCall] = deque(maxlen=RECEIVED_LOG)
        self.raw_received: deque[bytes] = deque(maxlen=RECEIVED_LOG)
        self._received_changed = asyncio.Event()
        self.serial = SerialRPC(self.notify)
        self._dispatcher = Dispatcher(observer=self._record)
        self._calls = CallSlots(self)
        self._endpoint = RpcEndpoint(self._dispatcher, self._calls)
        self._ring = H7Ring()
        self._link_runner = LinkRunner(self._ring, self._on_message, lambda: self.switches.chunk_size)
        self._halt_reason: str | None = None
        self._pty_alias: Path | None = None
        self._link: Link | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._serial = serial
        # What the M4 runs: until a sketch is booted, the demo sketch (or none, without demo).
        self.sketch: SketchProfile | None = None
        self.rpc_running = True  # False: a sketch without RPC.begin(), or one that crashed
        if serial:
            self._bind_tty()
        if demo:
            bind_demo_procedures(self)
        self._greet()

    # -- procedures -----------------------------------------------------------------------------
    def bind(self, name: str, fn: Procedure, *, params: Sequence[CType | str] | None = None,
             returns: CType | str | None = None, replace: bool = False) -> None:
        """``RPC.bind(name, fn)``: sync or async *fn*, its C++ parameter types from *params* (C++
        names such as ``"int"``, ``"std::string"``) or its annotations (:mod:`x8manager.m4sim.cxx`).
        Like rpclib a name binds once (*replace* is a test switch: a sketch flashed anew)."""
        self._dispatcher.bind(name, fn, params=params, returns=returns, replace=replace)

    def bind_echo(self, name: str) -> None:
        """Bind *name* to a stand-in procedure that takes any arguments and returns them as a list
        (no real sketch can bind one: rpclib's procedures have a fixed arity)."""

        def echo_args(*args: Any) -> list[Any]:
            return list(args)

        self.bind(name, echo_args)

    @property
    def bound_names(self) -> list[str]:
        return self._dispatcher.bound_names

    def _bind_tty(self) -> None:
        # SerialRPC.begin(): RPC.bind("tty", onWrite(std::vector<uint8_t>&)); str or bin converts.
        self.bind("tty", self.serial.on_tty, params=["std::vector<uint8_t>"], returns="void", replace=True)

    def boot(self, elf: bytes) -> SketchProfile:
        """Reset the M4 into the sketch *elf*, as a flash over SWD does: the procedures it binds
        and whether it answers at all come from its x8sim note (see :mod:`x8manager.m4sim.sketch`)."""
        profile = read_profile(elf)
        self.sketch = profile
        self._counters.boots += 1
        self._dispatcher.clear()
        self.rpc_running = profile.behaviour == "runs"
        if self._serial:
            self._bind_tty()
        if self.rpc_running:
            demo = demo_procedures()
            for name in demo if profile.binds is None else profile.binds:
                self.bind(name, demo.get(name) or _named_answer(profile.name, name), replace=True)
        self.reset()
        log.info(
            "virtual M4: booted sketch %r (%s, sha256 %s...)%s; procedures: %s",
            profile.name, profile.behaviour, profile.sha256[:12],
            f" [{profile.problem}]" if profile.problem else "", ", ".join(self.bound_names) or "none",
        )
        return profile

    # -- halting --------------------------------------------------------------------------------
    @property
    def halted(self) -> bool:
        return self._halt_reason is not None

    @property
    def halt_reason(self) -> str:
        return self._halt_reason or ""

    def halt(self, reason: str) -> None:
        """An exception left a sketch thread: the M4 runs no sketch code until reset."""
        if self._halt_reason is not None:
            return
        self._halt_reason = reason
        log.error("virtual M4 HALTED (a real M4 calls std::terminate and answers nothing until reset): %s",
                  reason)
        self._calls.fail_all(M4Halted(reason))

    def check_running(self) -> None:
        if self._halt_reason is not None:
            raise M4Halted(self._halt_reason)

    def reset(self) -> None:
        """Reset the M4 (the same sketch starts again): no longer halted, every call abandoned."""
        self._counters.resets += 1
        self._calls.fail_all(M4Halted("the M4 was reset during the call"))
        self._halt_reason = None
        self._endpoint.reset()
        self._greet()

    def _greet(self) -> None:
        # The host (the H7) greets each endpoint the M4 announces with one byte; RPC swallows it.
        for _ in self._endpoint.receive(HELLO):
            pass
        self._counters.hellos_swallowed += 1

    # -- calls into Linux -----------------------------------------------------------------------
    def thread(self, index: int) -> SketchThread:
        """Sketch thread *index* (0..9): its own fixed msgid, one ``RPC.call`` at a time."""
        return self._calls.thread(index)

    def set_timeout(self, ms: int | None) -> None:
        """``RPC.setTimeout(ms)``: the library keeps one timeout for every thread; this sets it on all
        ten (:meth:`SketchThread.set_timeout` sets one thread's)."""
        for index in range(MAX_THREADS):
            self.thread(index).set_timeout(ms)

    async def call(self, method: str, *args: Any) -> Any:
        """``RPC.call`` on thread 0: the result, or None after an error reply or a timeout."""
        return await self.thread(0).call(method, *args)

    async def call_as(self, kind: CType | str | type, method: str, *args: Any) -> Any:
        """``RPC.call(...).as<T>()`` on thread 0: on nil or a wrong type the M4 halts (M4Halted)."""
        return await self.thread(0).call_as(kind, method, *args)

    def idle_thread(self) -> SketchThread:
        return self._calls.idle_thread()

    async def call_raw(self, method: str, *args: Any, msgid: int = wire.THREAD_ID_BASE,
                       within: float = 10.0) -> Frame:
        """Test switch: an ``RPC.call`` as the thread with id *msgid*; Linux's reply byte for byte.

        The msgid goes out as msgpack-c writes a thread id (uint32, ``ce``); no sketch thread is
        used, so tests can play any number of callers and ids.
        """
        self.check_running()
        waiter = self._calls.expect_raw(msgid)
        header = b"\x94\x00\xce" + msgid.to_bytes(4, "big")
        self.send_rpc(header + wire.packb(method) + wire.packb(list(args)))
        try:
            raw = await asyncio.wait_for(waiter, within)
        finally:
            waiter.cancel()
        return Frame(parse_message(msgpack.unpackb(raw, raw=False, strict_map_key=False)), raw)

    def send_raw(self, data: bytes) -> None:
        """Test switch: any bytes toward Linux (garbage, half a message), cut into chunks as usual."""
        self._ring.put(data)

    async def notify(self, method: str, *args: Any) -> None:
        """``RPC.send(method, args...)``: a notification, fire and forget."""
        self.check_running()
        self.send_rpc(wire.notification(method, list(args)))

    async def serial_write(self, data: bytes | str) -> None:
        """``Serial.write``/``Serial.print``: one ``tty`` notification (see :attr:`serial`)."""
        await self.serial.write(data)

    async def serial_println(self, text: str) -> None:
        """``Serial.println``: two ``tty`` notifications, the text and then CR LF."""
        await self.serial.println(text)

    async def print_raw(self, text: bytes | str) -> None:
        """``RPC.print`` on the raw endpoint: one RPMsg message per byte, so other threads'
        messages can land between its bytes in the stream toward Linux."""
        self.check_running()
        for byte in text.encode("utf-8") if isinstance(text, str) else text:
            self._ring.put(bytes([byte]))
            await asyncio.sleep(0)

    def send_rpc(self, message: bytes) -> None:
        """One ``OPENAMP_send`` on the "rpc" endpoint: over 496 bytes, the first 496 go out."""
        if self.switches.interleave_text:
            self._ring.put(self.switches.interleave_text)
        sent = rpmsg_cut(message)
        if len(sent) < len(message):
            self._counters.cut_oversize_out += 1
            log.warning("virtual M4: a %d-byte message toward Linux was cut to its first %d bytes "
                        "(an RPMsg payload holds no more)", len(message), len(sent))
        self._counters.messages_out += 1
        self._ring.put(sent)

    # -- running --------------------------------------------------------------------------------
    async def start(self, opener: LinkOpener, *, reconnect: bool = False, open_now: bool = True) -> None:
        """Serve links from *opener* in the background.

        With *open_now* the first link is opened here, so its errors reach the caller; a listener
        passes ``False`` and waits for its first connection in the background.
        """
        link = await opener() if open_now else None
        self._runner = asyncio.create_task(self._serve(link, opener, reconnect), name="m4sim-serve")

    async def start_on_pty(self, alias: str | Path | None = None) -> str:
        """Create a raw pty, serve on it in the background, return the path Linux opens.

        With *alias* that path is a symlink to the pty, so :meth:`replug_pty` can put a fresh pty
        behind the same name, as a re-enumerated device (an M4 reset) would.
        """
        link, path = open_pty()
        if alias is not None:
            self._pty_alias = Path(alias)
            _point_alias(self._pty_alias, path)
            path = str(self._pty_alias)

        async def same_pty() -> Link:
            # The pty outlives the other side closing and reopening it: one link for good.
            return link

        await self.start(same_pty)
        return path

    async def replug_pty(self) -> None:
        """Play a re-enumerated device on a pty started with an alias: what was queued toward
        Linux goes out, then the pty goes away and a new one appears under the alias."""
        if self._pty_alias is None:
            raise M4SimError("replug_pty() needs start_on_pty(alias=...)")
        await self.flush()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        if self._link is not None:
            await self._link.close()
            self._link = None
        await self.start_on_pty(self._pty_alias)

    def pause_reading(self) -> None:
        """Test switch: stop reading the link (a stuck sketch); Linux's writes back up."""
        self._link_runner.pause_reading()

    def resume_reading(self) -> None:
        self._link_runner.resume_reading()

    async def flush(self, within: float = 10.0) -> None:
        """Wait until every byte queued toward Linux has been written to the link."""
        await asyncio.wait_for(self._ring.wait_drained(), within)

    @property
    def runner(self) -> asyncio.Task[None] | None:
        """The background task serving the link (done once serving ends)."""
        return self._runner

    async def run(self, opener: LinkOpener, *, reconnect: bool = False) -> None:
        """Open a link and serve until it ends (or forever with *reconnect*)."""
        await self.start(opener, reconnect=reconnect)
        assert self._runner is not None
        await self._runner

    async def stop(self) -> None:
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._link is not None:
            await self._link.close()
            self._link = None

    async def wait_connected(self, within: float = 10.0) -> None:
        await asyncio.wait_for(self._link_runner.connected.wait(), within)

    async def _serve(self, link: Link | None, opener: LinkOpener, reconnect: bool) -> None:
        while True:
            if link is None:
                link = await (self._open_retrying(opener) if reconnect else opener())
            self._link = link
            try:
                await self._link_runner.serve(link)
            finally:
                if self._link is link:
                    self._link = None
            link = None
            if not reconnect:
                return

    async def _open_retrying(self, opener: LinkOpener) -> Link:
        delay = 0.1
        while True:
            try:
                return await opener()
            except OSError as exc:
                log.debug("virtual M4: link not available yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- input from Linux -----------------------------------------------------------------------
    async def _on_message(self, message: bytes) -> None:
        """One RPMsg message from Linux (one write() on the real device)."""
        self._counters.messages_in += 1
        self.raw_received.append(message)
        limit = self.switches.max_inbound
        if limit is not None and len(message) > limit:
            self._counters.dropped_oversize_in += 1
            log.warning("virtual M4: dropped a %d-byte message from Linux: the real /dev/x8h7_ui write "
                        "carries at most %d bytes, so the M4 would never see it", len(message), limit)
            return
        if self._halt_reason is not None:
            self._counters.dropped_halted += 1
            return
        if not self.rpc_running:
            # No RPC.begin() (or a hard fault): the M7 still delivers, nothing on the M4 reads.
            self._counters.dropped_not_running += 1
            return
        try:
            for outcome in self._endpoint.receive(message):
                if isinstance(outcome, Deferred):
                    if self.switches.concurrent_dispatch:
                        self._spawn(self._finish(outcome))
                    else:
                        await self._finish(outcome)
                else:
                    self._answer(outcome)
        except SketchHalt as exc:
            self.halt(str(exc))

    async def _finish(self, deferred: Deferred) -> None:
        try:
            result = await deferred.work
            reply = deferred.finish(result)
        except Exception as exc:
            self.halt(f"a procedure threw {type(exc).__name__}: {exc}")
            return
        if reply is not None:
            self._answer(reply)

    def _answer(self, reply: bytes) -> None:
        if self._halt_reason is not None:
            return
        if not self.switches.answer_calls:
            log.info("virtual M4: a call taken, not answered (answer_calls is off)")
            return
        self._counters.calls_answered += 1
        self.send_rpc(reply)

    def _record(self, call: ReceivedCall) -> None:
        self.calls_received.append(call)
        self._received_changed.set()

    def serial_read(self) -> bytes:
        """Take every byte Linux wrote to the sketch's ``Serial`` so far."""
        return self.serial.read()

    async def wait_serial_input(self, predicate: Callable[[bytes], bool], within: float = 10.0) -> bytes:
        """Wait until the unread serial input satisfies *predicate*; return it (not consumed)."""
        return await self.serial.wait_input(predicate, within)

    async def wait_received(self, method: str, within: float = 10.0) -> ReceivedCall:
        """Wait until Linux has called or notified *method*; return the latest such message."""
        async with asyncio.timeout(within):
            while True:
                found = next((c for c in reversed(self.calls_received) if c.method == method), None)
                if found is not None:
                    return found
                self._received_changed.clear()
                await self._received_changed.wait()

    # -- counters -------------------------------------------------------------------------------
    @property
    def stats(self) -> SimStats:
        c, link, calls = self._counters, self._link_runner.counters, self._calls.counters
        return SimStats(
            messages_in=c.messages_in, messages_out=c.messages_out, bytes_in=link.bytes_in,
            bytes_out=link.bytes_out, calls_answered=c.calls_answered, calls_to_linux=calls.calls_to_linux,
            replies_from_linux=calls.replies_from_linux, error_replies=calls.error_replies,
            unmatched_replies=calls.unmatched_replies, timeouts=calls.timeouts,
            dropped_oversize_in=c.dropped_oversize_in, cut_oversize_out=c.cut_oversize_out,
            ring_bytes_lost=self._ring.lost, split_lost=link.split_lost, ignored_in=self._endpoint.ignored,
            dropped_halted=c.dropped_halted, dropped_not_running=c.dropped_not_running,
            hellos_swallowed=c.hellos_swallowed, connections=link.connections, connected=link.connected,
            boots=c.boots, resets=c.resets, halted=self.halted, halt_reason=self.halt_reason,
        )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _point_alias(alias: Path, target: str) -> None:
    """Make *alias* a symlink to *target*, replacing it in one step (rename over it)."""
    temporary = alias.with_name(alias.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(target)
    os.replace(temporary, alias)
