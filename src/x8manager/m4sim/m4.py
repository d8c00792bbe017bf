"""The virtual M4: a stand-in for an M4 sketch using Arduino's ``RPC``/``SerialRPC`` libraries.

It behaves toward Linux the way the real chain (M4 sketch, RPMsg, H7 firmware, ``/dev/x8h7_ui``)
does, as documented in the m4-proxy reference (sections 6, 7 and 10):

- procedures are bound by name and dispatched like rpclib: unknown names and wrong argument
  counts are answered with rpclib's exact error texts; a message of length 4 is a call and of
  length 3 a notification, whatever its type field says;
- calls into Linux use the caller's "thread id" as msgid (uint32, e.g. ``0x10003000``), at most
  ten at a time (``clients[10]``), matched on the reply, with a timeout;
- ``Serial`` output goes out as ``[2, "tty", [bin]]`` notifications; ``tty`` is bound for input;
- output toward Linux is cut into chunks of at most 128 bytes (the H7 firmware's subpackets),
  optionally with raw ``RPC.print`` text between messages;
- input from Linux is one message per ``write()`` on the real device; a stream transport does
  not keep write boundaries, so a streaming unpacker reassembles it, and messages longer than
  248 bytes, which the real driver drops, are dropped here too (configurable).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from x8manager.m4sim import wire
from x8manager.m4sim.demo import bind_demo_procedures, demo_procedures
from x8manager.m4sim.links import Link, open_pty
from x8manager.m4sim.sketch import SketchProfile, read_profile
from x8manager.rpc.framing import (
    M4_MAX_MESSAGE,
    Frame,
    InvalidMessage,
    Response,
    StreamDecoder,
    parse_message,
)

__all__ = [
    "LinuxCallError",
    "LinuxCallTimeout",
    "M4SimError",
    "ReceivedCall",
    "SimStats",
    "VirtualM4",
]

log = logging.getLogger(__name__)

Procedure = Callable[..., Any]
LinkOpener = Callable[[], Awaitable[Link]]

# Limits of the real transport (reference sections 7.1, 7.3, 7.4).
LINUX_TO_M4_MAX = M4_MAX_MESSAGE  # one /dev/x8h7_ui write() must fit a 256-byte SPI frame
M4_TO_LINUX_CHUNK = 128  # the H7 firmware forwards at most 128 bytes per SPI subpacket
RPMSG_PAYLOAD_MAX = 496  # RPMSG_BUFFER_SIZE 512 minus the header; larger sends fail silently
H7_RING_BYTES = 4096  # the H7 ring buffer overwrites the oldest bytes when nobody reads
MAX_CALLERS = 10  # RPC_client clients[10]
SERIAL_RX_BYTES = 1024  # SerialRPC's RX ring
RECEIVED_LOG = 1000  # how many received calls the stand-in remembers for tests


class M4SimError(Exception):
    """Base class of the virtual M4's errors."""


class LinuxCallError(M4SimError):
    """Linux answered an M4 call with an error (on the real M4 ``RPC.call`` yields nil)."""

    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"Linux answered {method!r} with error {error!r}")
        self.method = method
        self.error = error


class LinuxCallTimeout(M4SimError, TimeoutError):
    """No reply from Linux within the call's timeout (``RPC.timedOut()`` on the real M4)."""


@dataclass
class ReceivedCall:
    """A request or notification the M4 received from Linux."""

    method: str
    params: list[Any]
    notification: bool


@dataclass
class SimStats:
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    calls_answered: int = 0
    notifications_in: int = 0
    calls_to_linux: int = 0
    replies_from_linux: int = 0
    unmatched_replies: int = 0
    timeouts: int = 0
    dropped_oversize_in: int = 0
    dropped_oversize_out: int = 0
    dropped_invalid_in: int = 0
    stream_resyncs: int = 0
    connections: int = 0
    connected: bool = False
    boots: int = 0  # sketches booted over the stand-in SWD wire (m4sim.sketch)
    dropped_not_running: int = 0  # messages a silent or crashed sketch never read

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Binding:
    fn: Procedure
    arity: int | None  # None: variadic, any count is accepted


def _arity(fn: Procedure) -> int | None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


@dataclass
class _Slot:
    thread_id: int
    future: asyncio.Future[Any] | None = None
    method: str = ""


@dataclass
class _Outbox:
    data: bytearray = field(default_factory=bytearray)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    empty: asyncio.Event = field(default_factory=asyncio.Event)


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

    def __init__(
        self,
        *,
        demo: bool = True,
        serial: bool = True,
        chunk_size: int = M4_TO_LINUX_CHUNK,
        max_inbound: int | None = LINUX_TO_M4_MAX,
        max_outbound: int | None = RPMSG_PAYLOAD_MAX,
        call_timeout: float = 5.0,
        concurrent_dispatch: bool = False,
        interleave_text: bytes = b"",
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.max_inbound = max_inbound
        self.max_outbound = max_outbound
        self.call_timeout = call_timeout
        # The sketch's rpc thread handles one message at a time; concurrent dispatch lets
        # slow procedures answer out of order, to exercise a proxy's msgid matching.
        self.concurrent_dispatch = concurrent_dispatch
        self.interleave_text = interleave_text
        self.stats = SimStats()
        self.calls_received: deque[ReceivedCall] = deque(maxlen=RECEIVED_LOG)
        # Test switches: every object Linux sent, byte for byte (even those the M4 drops), and
        # a sketch that takes calls but never answers them (a busy or hung rpc thread).
        self.raw_received: deque[bytes] = deque(maxlen=RECEIVED_LOG)
        self.answer_calls = True
        self._reading = asyncio.Event()  # cleared: a sketch whose rpc thread does not read
        self._reading.set()
        self._raw_waiters: dict[int, asyncio.Future[Frame]] = {}
        self._pty_alias: Path | None = None
        self.serial_input = bytearray()
        self._serial_changed = asyncio.Condition()
        self._received_changed = asyncio.Condition()
        self._bindings: dict[str, _Binding] = {}
        self._slots = [_Slot(wire.THREAD_ID_BASE + i * wire.THREAD_ID_STRIDE) for i in range(MAX_CALLERS)]
        self._free_slots: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            self._free_slots.put_nowait(slot)
        self._outbox = _Outbox()
        self._link: Link | None = None
        self._connected = asyncio.Event()
        self._dispatch_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._serial = serial
        # What the M4 runs: until a sketch is booted, the demo sketch (or none, without demo).
        self.sketch: SketchProfile | None = None
        self.rpc_running = True  # False: a sketch without RPC.begin(), or one that crashed
        if serial:
            self.bind("tty", self._on_tty)
        if demo:
            bind_demo_procedures(self)

    # -- procedures -----------------------------------------------------------------------------
    def bind(self, name: str, fn: Procedure, *, replace: bool = False) -> None:
        """Bind procedure *name* (sync or async); like rpclib, a name can be bound only once
        (*replace* is a test switch: a sketch flashed anew with another procedure)."""
        if name in self._bindings and not replace:
            raise ValueError(f"Function name already bound: {name!r}")
        self._bindings[name] = _Binding(fn, _arity(fn))

    def bind_echo(self, name: str) -> None:
        """Bind *name* to a procedure that returns its arguments as a list (for tests)."""

        def echo_args(*args: Any) -> list[Any]:
            return list(args)

        self.bind(name, echo_args)

    @property
    def bound_names(self) -> list[str]:
        return sorted(self._bindings)

    def boot(self, elf: bytes) -> SketchProfile:
        """Reset the M4 into the sketch *elf*, as a flash over SWD does: the procedures it binds
        and whether it answers at all come from its x8sim note (see :mod:`x8manager.m4sim.sketch`)."""
        profile = read_profile(elf)
        self.sketch = profile
        self.stats.boots += 1
        self._bindings.clear()
        self.rpc_running = profile.behaviour == "runs"
        if self._serial:
            self.bind("tty", self._on_tty)
        if self.rpc_running:
            demo = demo_procedures()
            for name in demo if profile.binds is None else profile.binds:
                self.bind(name, demo.get(name) or _named_answer(profile.name, name), replace=True)
        log.info(
            "virtual M4: booted sketch %r (%s, sha256 %s...)%s; procedures: %s",
            profile.name, profile.behaviour, profile.sha256[:12],
            f" [{profile.problem}]" if profile.problem else "", ", ".join(self.bound_names) or "none",
        )
        return profile

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
        """Play an M4 reset on a pty started with an alias: what was queued toward Linux goes
        out, then the pty goes away and a new one appears under the alias."""
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
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def flush(self, within: float = 10.0) -> None:
        """Wait until every byte queued toward Linux has been written to the link."""
        if self._outbox.data or self._outbox.ready.is_set():
            self._outbox.empty.clear()
            await asyncio.wait_for(self._outbox.empty.wait(), within)

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
        await asyncio.wait_for(self._connected.wait(), within)

    async def _serve(self, link: Link | None, opener: LinkOpener, reconnect: bool) -> None:
        while True:
            if link is None:
                link = await (self._open_retrying(opener) if reconnect else opener())
            await self._run_link(link)
            link = None
            if not reconnect:
                return

    async def _open_retrying(self, opener: LinkOpener) -> Link:
        """Open a link, retrying while it is not there (the VM is booting or rebooting)."""
        delay = 0.1
        while True:
            try:
                return await opener()
            except OSError as exc:
                log.info("virtual M4: cannot open the link yet (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _run_link(self, link: Link) -> None:
        self._link = link
        self.stats.connections += 1
        self.stats.connected = True
        self._connected.set()
        log.info("virtual M4 (stand-in for the M4 sketch) serving on %s", link.description)
        writer = asyncio.create_task(self._write_loop(link), name="m4sim-writer")
        decoder = StreamDecoder()
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
                self.stats.bytes_in += len(data)
                await self._feed(decoder, data)
        finally:
            self._connected.clear()
            self.stats.connected = False
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            await link.close()
            if self._link is link:
                self._link = None

    # -- input from Linux -----------------------------------------------------------------------
    async def _feed(self, decoder: StreamDecoder, data: bytes) -> None:
        """Feed *data* and handle every message it completes."""
        dropped = decoder.dropped_bytes
        objects = decoder.feed(data)
        if decoder.dropped_bytes != dropped:
            # The real M4 resets its unpacker for every RPMsg message, so garbage costs one
            # message; on a stream the decoder skips bytes until objects parse again.
            self.stats.stream_resyncs += 1
            log.warning(
                "virtual M4: skipped %d undecodable bytes from Linux", decoder.dropped_bytes - dropped
            )
        for item in objects:
            self.stats.messages_in += 1
            self.raw_received.append(item.raw)
            if self._raw_waiters and self._resolve_raw_waiter(item.value, item.raw):
                continue
            if self.max_inbound is not None and len(item.raw) > self.max_inbound:
                self.stats.dropped_oversize_in += 1
                log.warning(
                    "virtual M4: dropped a %d-byte message from Linux: the real /dev/x8h7_ui write "
                    "carries at most %d bytes, so the M4 would never see it",
                    len(item.raw),
                    self.max_inbound,
                )
                continue
            await self._handle(item.value)

    async def _handle(self, message: Any) -> None:
        if not self.rpc_running:
            # No RPC.begin() (or a hard fault): the M7 still delivers, nothing on the M4 reads.
            self.stats.dropped_not_running += 1
            return
        if not isinstance(message, list) or len(message) < 3:
            self.stats.dropped_invalid_in += 1
            log.warning("virtual M4: ignored a message that is not an RPC array: %r", message)
            return
        kind = message[0]
        if kind == wire.RESPONSE:
            self._on_response(message)
            return
        if kind not in (wire.REQUEST, wire.NOTIFICATION) or isinstance(kind, bool):
            self.stats.dropped_invalid_in += 1
            log.warning("virtual M4: ignored a message of unknown type %r: %r", kind, message)
            return
        # rpclib's dispatch() tells a call from a notification by the array length, not the type.
        if len(message) == 4:
            msgid, method, params = message[1], message[2], message[3]
            if isinstance(msgid, bool) or not isinstance(msgid, int) or not 0 <= msgid <= 0xFFFFFFFF:
                self.stats.dropped_invalid_in += 1
                log.warning(
                    "virtual M4: ignored a call with msgid %r; rpclib's uint32 msgid conversion "
                    "would throw on the real M4",
                    msgid,
                )
                return
        elif len(message) == 3:
            msgid, method, params = None, message[1], message[2]
        else:
            self.stats.dropped_invalid_in += 1
            log.warning("virtual M4: ignored an RPC message of length %d: %r", len(message), message)
            return
        if isinstance(method, bytes):
            method = method.decode("utf-8", "surrogateescape")
        if not isinstance(method, str) or not isinstance(params, list):
            self.stats.dropped_invalid_in += 1
            log.warning("virtual M4: ignored a message with a bad method or params: %r", message)
            return
        await self._record(ReceivedCall(method, params, notification=msgid is None))
        if self.concurrent_dispatch:
            self._spawn(self._dispatch(msgid, method, params))
        else:
            async with self._dispatch_lock:
                await self._dispatch(msgid, method, params)

    def _resolve_raw_waiter(self, value: Any, raw: bytes) -> bool:
        try:
            message = parse_message(value)
        except InvalidMessage:
            return False
        if not isinstance(message, Response):
            return False
        future = self._raw_waiters.get(message.msgid)
        if future is None or future.done():
            return False
        future.set_result(Frame(message, raw))
        return True

    async def _record(self, call: ReceivedCall) -> None:
        async with self._received_changed:
            self.calls_received.append(call)
            self._received_changed.notify_all()

    async def _dispatch(self, msgid: int | None, method: str, params: list[Any]) -> None:
        error: Any = None
        result: Any = None
        binding = self._bindings.get(method)
        if binding is None:
            error = wire.not_found_error(method, len(params))
        elif binding.arity is not None and binding.arity != len(params):
            error = wire.arity_error(method, binding.arity, len(params))
        else:
            try:
                result = binding.fn(*params)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                # The sketch rethrows (suppress_exceptions=false) and would most likely crash;
                # the stand-in answers with rpclib's suppressed-exception text and keeps going.
                log.warning("virtual M4: procedure %r raised %r (a real sketch would crash)", method, exc)
                error = wire.exception_error(method, len(params), str(exc))
                result = None
        if msgid is None:
            self.stats.notifications_in += 1
            if error is not None:
                log.info("virtual M4: notification %r not handled: %s", method, error)
            return
        if not self.answer_calls:
            log.info("virtual M4: call %r taken, not answered (answer_calls is off)", method)
            return
        self.stats.calls_answered += 1
        await self.send(wire.response(msgid, error, result))

    def _on_tty(self, data: bytes | str) -> None:
        """SerialRPC's ``tty`` procedure: Linux's bytes for ``Serial.read()``."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        room = SERIAL_RX_BYTES - len(self.serial_input)
        if len(data) > room:
            log.warning("virtual M4: serial RX ring full, dropped %d bytes", len(data) - room)
        self.serial_input.extend(data[: max(room, 0)])
        self._spawn(self._notify_serial())

    async def _notify_serial(self) -> None:
        async with self._serial_changed:
            self._serial_changed.notify_all()

    def serial_read(self) -> bytes:
        """Take every byte Linux wrote to the sketch's ``Serial`` so far."""
        data = bytes(self.serial_input)
        self.serial_input.clear()
        return data

    async def wait_serial_input(self, predicate: Callable[[bytes], bool], within: float = 10.0) -> bytes:
        """Wait until the unread serial input satisfies *predicate*; return it (not consumed)."""
        async with self._serial_changed:
            await asyncio.wait_for(
                self._serial_changed.wait_for(lambda: predicate(bytes(self.serial_input))), within
            )
        return bytes(self.serial_input)

    async def wait_received(self, method: str, within: float = 10.0) -> ReceivedCall:
        """Wait until Linux has called or notified *method*; return the latest such message."""

        def latest() -> ReceivedCall | None:
            return next((c for c in reversed(self.calls_received) if c.method == method), None)

        async with self._received_changed:
            await asyncio.wait_for(self._received_changed.wait_for(lambda: latest() is not None), within)
        found = latest()
        assert found is not None
        return found

    def _on_response(self, message: list[Any]) -> None:
        self.stats.replies_from_linux += 1
        if len(message) != 4:
            self.stats.dropped_invalid_in += 1
            log.warning("virtual M4: ignored a malformed reply: %r", message)
            return
        _, msgid, error, result = message
        slot = next((s for s in self._slots if s.thread_id == msgid and s.future is not None), None)
        if slot is None or slot.future is None or slot.future.done():
            self.stats.unmatched_replies += 1
            log.warning("virtual M4: reply with msgid %r matches no waiting caller: %r", msgid, message)
            return
        if error is not None:
            slot.future.set_exception(LinuxCallError(slot.method, error))
        else:
            slot.future.set_result(result)

    # -- output toward Linux --------------------------------------------------------------------
    async def call(self, method: str, *args: Any, reply_timeout: float | None = None) -> Any:
        """``RPC.call(method, args...)``: call a procedure Linux registered with the proxy."""
        slot = await self._free_slots.get()
        loop = asyncio.get_running_loop()
        slot.future = loop.create_future()
        slot.method = method
        self.stats.calls_to_linux += 1
        try:
            await self.send(wire.request(slot.thread_id, method, list(args)))
            wait = self.call_timeout if reply_timeout is None else reply_timeout
            try:
                return await asyncio.wait_for(asyncio.shield(slot.future), wait)
            except TimeoutError:
                self.stats.timeouts += 1
                raise LinuxCallTimeout(f"no reply from Linux to {method!r} within {wait} s") from None
        finally:
            slot.future = None
            self._free_slots.put_nowait(slot)

    async def call_raw(self, method: str, *args: Any, msgid: int = wire.THREAD_ID_BASE,
                       within: float = 10.0) -> Frame:
        """An ``RPC.call`` as the thread with id *msgid*; returns Linux's reply byte for byte.

        The msgid goes out as msgpack-c writes a thread id (uint32, ``ce``); no caller slot is
        taken, so tests can play any number of callers and ids.
        """
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._raw_waiters[msgid] = future
        try:
            header = b"\x94\x00\xce" + msgid.to_bytes(4, "big")
            await self.send(header + wire.packb(method) + wire.packb(list(args)))
            return await asyncio.wait_for(future, within)
        finally:
            self._raw_waiters.pop(msgid, None)

    def send_raw(self, data: bytes) -> None:
        """Any bytes toward Linux (garbage, half a message), cut into chunks as usual."""
        self._enqueue(data)

    async def notify(self, method: str, *args: Any) -> None:
        """``RPC.send(method, args...)``: a notification, fire and forget."""
        await self.send(wire.notification(method, list(args)))

    async def serial_write(self, data: bytes | str) -> None:
        """``Serial.write``: one ``tty`` notification carrying the bytes as bin."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        await self.notify("tty", data)

    async def serial_print(self, text: str) -> None:
        await self.serial_write(text)

    async def serial_println(self, text: str) -> None:
        """``Serial.println``: two notifications, the text and then ``\\r\\n``."""
        await self.serial_write(text)
        await self.serial_write(b"\r\n")

    async def print_raw(self, text: bytes | str) -> None:
        """``RPC.print`` on the raw endpoint: bytes mixed into the same stream, not msgpack-RPC."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        self._enqueue(text)

    async def send(self, message: bytes) -> None:
        """Send one complete packed message toward Linux."""
        if self.max_outbound is not None and len(message) > self.max_outbound:
            self.stats.dropped_oversize_out += 1
            log.warning(
                "virtual M4: dropped a %d-byte outgoing message: an RPMsg payload holds at most %d bytes",
                len(message),
                self.max_outbound,
            )
            return
        self.stats.messages_out += 1
        if self.interleave_text:
            self._enqueue(self.interleave_text)
        self._enqueue(message)

    def _enqueue(self, data: bytes) -> None:
        box = self._outbox
        box.data.extend(data)
        if len(box.data) > H7_RING_BYTES:
            lost = len(box.data) - H7_RING_BYTES
            log.warning("virtual M4: H7 ring buffer overflow, %d oldest bytes lost", lost)
            del box.data[:lost]
        box.ready.set()

    async def _write_loop(self, link: Link) -> None:
        box = self._outbox
        while True:
            await box.ready.wait()
            while box.data:
                # The H7 dequeues the byte stream (both endpoints mixed) in subpackets of at most
                # chunk_size bytes; message boundaries are not kept.
                chunk = bytes(box.data[: self.chunk_size])
                del box.data[: len(chunk)]
                try:
                    await link.write(chunk)
                except OSError as exc:
                    log.warning("virtual M4: writing to %s failed: %s", link.description, exc)
                    return
                self.stats.bytes_out += len(chunk)
            box.ready.clear()
            box.empty.set()

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
