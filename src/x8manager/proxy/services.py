"""M4→Linux traffic: forward the M4's calls and notifications to local services.

Like the original, a service is reached at ``127.0.0.1:<registered port>`` and receives the
M4's raw bytes (a call's msgid excepted, see below). Unlike the original:

- the connection to a service is kept open and shared by the M4's calls and notifications
  (written in the order the M4 sent them), so a call costs no TCP set-up. Each call goes out
  with a msgid of the link's own (same encoding and length as the M4's thread id), matched on
  the reply and swapped back: rpclib uses one msgid per sketch thread, call after call, so the
  late reply to a call the thread gave up on must not match its next one;
- a call finishes as soon as its reply has arrived (no 100 ms idle wait), is bounded by a
  timeout, and never waits for another call;
- a service that closes connections after each reply (one call per connection) still works:
  a request that meets a connection the service has just closed is sent again on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, cast

from x8manager.proxy.ratelimit import RateLimitedLog
from x8manager.rpc.framing import MAX_MSGID, Frame, InvalidMessage, Response, StreamDecoder, replace_msgid

__all__ = ["CallDone", "ServiceCallFailed", "ServiceLink"]

log = logging.getLogger(__name__)

SERVICE_HOST: Final = "127.0.0.1"
READ_CHUNK: Final = 64 * 1024
# A service reply larger than this is refused anyway (the M4 takes 248 bytes per write).
MAX_SERVICE_REPLY: Final = 64 * 1024
# Notifications waiting for one service; beyond this the service is not keeping up and new
# ones are dropped with a warning rather than growing memory.
NOTIFICATION_QUEUE: Final = 1024
# A service connection with no traffic for this long is closed; the next message reopens it.
IDLE_CLOSE: Final = 60.0


class ServiceCallFailed(Exception):
    """The service could not be reached, broke the connection, or did not answer in time."""


# Receives the service's response, or why there is none; called once per call, on the loop.
CallDone = Callable[["Frame | ServiceCallFailed"], None]


class _Connection(asyncio.Protocol):
    """One open connection to a service and the calls waiting for a reply on it.

    A protocol rather than streams: each reply is matched and handed over from
    ``data_received`` directly, with no reader task to wake per read.
    """

    def __init__(self, port: int, limited_log: RateLimitedLog) -> None:
        self.port = port
        self._limited_log = limited_log
        loop = asyncio.get_running_loop()
        self.waiting: dict[int, asyncio.Future[Frame]] = {}
        self.last_used = loop.time()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._decoder = StreamDecoder(MAX_SERVICE_REPLY)
        self._writable: asyncio.Future[None] | None = None  # set while the service reads slower

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing() and not self.closed.done()

    def data_received(self, data: bytes) -> None:
        self.last_used = asyncio.get_running_loop().time()
        for frame in self._decoder.feed_frames(data):
            if not isinstance(frame.message, Response):
                continue
            future = self.waiting.get(frame.message.msgid)
            if future is not None and not future.done():
                future.set_result(frame)
            else:
                # A reply to a call its caller gave up on (or a service's own garbage).
                self._limited_log.info("late", "service on port %d answered msgid %d, which nobody waits for",
                                       self.port, frame.message.msgid)

    def eof_received(self) -> bool:
        return False  # the service closed its side: close ours too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            reason = "closed the connection"
        else:
            reason = f"broke the connection ({getattr(exc, 'strerror', None) or exc})"
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionResetError(f"service on port {self.port} {reason}"))
        self.resume_writing()  # a waiting writer goes on and finds the connection gone
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def write(self, raw: bytes) -> None:
        """Queue *raw* for the service; raise ConnectionResetError if the connection is gone."""
        if not self.usable:
            raise ConnectionResetError(f"service on port {self.port} closed the connection")
        assert self._transport is not None
        self._transport.write(raw)

    async def drain(self) -> None:
        """Wait while the service is not reading (flow control)."""
        if self._writable is not None and not self._writable.done():
            await asyncio.shield(self._writable)
        if not self.usable:
            raise ConnectionResetError(f"service on port {self.port} closed the connection")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _ServiceCall:
    """One M4 call on its way to a service: its raw request with our msgid, and its outcome."""

    __slots__ = ("caller_msgid", "deadline", "done", "raw", "stop", "wait", "wire_msgid")

    def __init__(self, raw: bytes, wire_msgid: int, caller_msgid: bytes, *, wait: float, deadline: float,
                 done: CallDone) -> None:
        self.raw = raw
        self.wire_msgid = wire_msgid
        self.caller_msgid = caller_msgid
        self.wait = wait
        self.deadline = deadline
        self.done: CallDone | None = done  # None once finished or withdrawn
        self.stop: Callable[[], object] = _nothing  # cancels what the call waits on

    def replied(self, frame: Frame) -> None:
        """The service's response, given back the caller's msgid bytes."""
        try:
            restored, _ = replace_msgid(frame.raw, self.caller_msgid)
        except InvalidMessage:  # pragma: no cover - the decoder passed it as a response
            self.finish(ServiceCallFailed("the service's reply is unusable"))
            return
        self.finish(Frame(frame.message, restored))

    def finish(self, result: Frame | ServiceCallFailed) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(result)

    def withdraw(self) -> None:
        """The caller gave up: no outcome is delivered, a late reply finds nobody waiting."""
        if self.done is not None:
            self.done = None
            self.stop()


def _nothing() -> None:
    """Nothing to stop yet."""


def _wire_msgid(msgid: int) -> bytes:
    """Our msgid as msgpack-c writes the M4's thread ids (``ce`` + 4 bytes): same length on the wire."""
    return b"\xce" + msgid.to_bytes(4, "big")


class ServiceLink:
    """The kept-open connection to the service on one port, shared by calls and notifications.

    Each call goes to the service with a msgid of the link's own, the caller's put back in the
    reply: a sketch thread uses one msgid call after call, so a late reply to a call it gave up
    on would otherwise answer its next call.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._notifications: asyncio.Queue[bytes] = asyncio.Queue(NOTIFICATION_QUEUE)
        self._notifier: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # calls that had to wait for a connection
        self._closed = False
        self._next_id = 1
        self._limited_log = RateLimitedLog(log)  # the service's traffic can cause these lines

    async def _connect(self) -> tuple[_Connection, bool]:
        """The open connection, or a new one; the flag says whether it is new."""
        async with self._connecting:
            current = self._connection
            if current is not None and current.usable:
                return current, False
            if current is not None:
                current.close()
            port, limited_log = self.port, self._limited_log
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(port, limited_log), SERVICE_HOST, port)
            self._connection = connection
            return connection, True

    def _too_slow(self, call: _ServiceCall) -> ServiceCallFailed:
        return ServiceCallFailed(f"service on port {self.port} did not answer within {call.wait:g} s")

    def _new_id(self) -> int:
        msgid = self._next_id
        self._next_id = (msgid + 1) & MAX_MSGID or 1
        return msgid

    def start_call(self, request: Frame, *, wait: float, done: CallDone) -> Callable[[], None]:
        """Send the raw request; *done* gets the response (or the failure) later, once.

        Returns a function that withdraws the call (the caller gave up): *done* is then never
        called and the service's reply, if it comes, is dropped.

        On an open connection this is callbacks only (no task): the request is written at
        once and the reader hands the response over. Otherwise, and for a retry after the
        service closed the connection under the request, :meth:`_call` runs in a task.
        """
        loop = asyncio.get_running_loop()
        wire_msgid = self._new_id()
        raw, caller_msgid = replace_msgid(request.raw, _wire_msgid(wire_msgid))
        call = _ServiceCall(raw, wire_msgid, caller_msgid, wait=wait, deadline=loop.time() + wait, done=done)
        connection = self._connection
        if connection is None or not connection.usable or self._connecting.locked():
            self._call_in_task(call)
        else:
            self._send_on(connection, call, loop)
        return call.withdraw

    def _send_on(self, connection: _Connection, call: _ServiceCall, loop: asyncio.AbstractEventLoop) -> None:
        future: asyncio.Future[Frame] = loop.create_future()
        msgid = call.wire_msgid
        connection.waiting[msgid] = future
        timer = loop.call_at(call.deadline, future.cancel)
        call.stop = future.cancel

        def answered(future: asyncio.Future[Frame]) -> None:
            timer.cancel()
            if connection.waiting.get(msgid) is future:
                del connection.waiting[msgid]
            connection.last_used = loop.time()
            if call.done is None:
                return  # withdrawn
            if future.cancelled():
                call.finish(self._too_slow(call))
                return
            exc = future.exception()
            if exc is None:
                call.replied(future.result())
            elif isinstance(exc, ConnectionError):
                # Sent on a connection the service had just closed: once more on a new one.
                self._call_in_task(call)
            else:  # pragma: no cover - the reader sets only responses and ConnectionErrors
                call.finish(ServiceCallFailed(f"service on port {self.port}: {exc}"))

        future.add_done_callback(answered)
        try:
            connection.write(call.raw)
        except (OSError, RuntimeError) as exc:
            if not future.done():
                future.set_exception(ConnectionResetError(str(exc)))

    def _call_in_task(self, call: _ServiceCall) -> None:
        if self._closed:
            call.finish(ServiceCallFailed(f"service on port {self.port}: the proxy is stopping"))
            return

        async def run() -> None:
            left = call.deadline - asyncio.get_running_loop().time()
            try:
                if left <= 0:
                    raise self._too_slow(call)
                await self._call(call, wait=left)
            except ServiceCallFailed as exc:
                call.finish(exc)

        task = asyncio.get_running_loop().create_task(run(), name=f"service-call:{self.port}")
        call.stop = task.cancel
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, call: _ServiceCall, *, wait: float) -> None:
        """Send the call (reconnecting if need be) and hand its response over."""
        try:
            async with asyncio.timeout(wait):
                for attempt in (1, 2):
                    connection, fresh = await self._connect()
                    future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
                    connection.waiting[call.wire_msgid] = future
                    try:
                        connection.write(call.raw)
                        await connection.drain()
                        call.replied(await future)
                        return
                    except ConnectionError:
                        # Sent on a connection the service had just closed: once more on a new one.
                        if fresh or attempt == 2:
                            raise
                    finally:
                        connection.waiting.pop(call.wire_msgid, None)
                        connection.last_used = asyncio.get_running_loop().time()
        except TimeoutError:
            raise self._too_slow(call) from None
        except OSError as exc:
            raise ServiceCallFailed(f"service on port {self.port}: {exc.strerror or exc}") from exc

    def notify(self, raw: bytes) -> None:
        """Queue a notification; they reach the service in the order they were queued."""
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.get_running_loop().create_task(
                self._deliver_notifications(), name=f"notify:{self.port}")
        try:
            self._notifications.put_nowait(raw)
        except asyncio.QueueFull:
            self._limited_log.warning("behind", "service on port %d is not keeping up: notification dropped",
                                      self.port)

    async def _deliver_notifications(self) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_CLOSE):
                    raw = await self._notifications.get()
            except TimeoutError:
                self._close_if_idle()
                continue
            for attempt in (1, 2):
                try:
                    connection, fresh = await self._connect()
                    connection.write(raw)
                    await connection.drain()
                    break
                except OSError as exc:
                    if fresh or attempt == 2:
                        self._limited_log.warning("lost", "notification to service on port %d lost: %s",
                                                  self.port, exc.strerror or exc)
                        break

    def _close_if_idle(self) -> None:
        connection = self._connection
        if connection is None or connection.waiting:
            return
        if asyncio.get_running_loop().time() - connection.last_used >= IDLE_CLOSE:
            connection.close()
            self._connection = None

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._notifier is not None:
            self._notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notifier
        if self._connection is not None:
            self._connection.close()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._connection.closed), 1.0)
            self._connection = None
