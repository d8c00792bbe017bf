"""M4→Linux traffic: forward the M4's calls and notifications to local services.

Like the original, a service is reached at ``127.0.0.1:<registered port>`` and receives the
M4's raw bytes unchanged. Unlike the original:

- the connection to a service is kept open and shared by the M4's calls (replies matched by
  msgid; rpclib's msgids are the calling threads' ids, unique while a call is in flight) and
  notifications (written in the order the M4 sent them), so a call costs no TCP set-up;
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

from x8manager.rpc.framing import Frame, Response, StreamDecoder

__all__ = ["CallDone", "ServiceCallFailed", "ServiceLink", "call_service"]

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


async def call_service(port: int, request: Frame, *, wait: float) -> Frame:
    """One call on its own connection: send the raw request, return the first complete response."""
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(SERVICE_HOST, port)
            try:
                writer.write(request.raw)
                decoder = StreamDecoder(MAX_SERVICE_REPLY)
                while data := await reader.read(READ_CHUNK):
                    for frame in decoder.feed_frames(data):
                        if isinstance(frame.message, Response):
                            return frame
                raise ServiceCallFailed(f"service on port {port} closed the connection without a reply")
            finally:
                writer.close()
    except TimeoutError:
        raise ServiceCallFailed(f"service on port {port} did not answer within {wait:g} s") from None
    except OSError as exc:
        raise ServiceCallFailed(f"service on port {port}: {exc.strerror or exc}") from exc


class _Connection(asyncio.Protocol):
    """One open connection to a service and the calls waiting for a reply on it.

    A protocol rather than streams: each reply is matched and handed over from
    ``data_received`` directly, with no reader task to wake per read.
    """

    def __init__(self, port: int) -> None:
        self.port = port
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
                log.info("service on port %d answered msgid %d, which nobody waits for",
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


class ServiceLink:
    """The kept-open connection to the service on one port, shared by calls and notifications."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._notifications: asyncio.Queue[bytes] = asyncio.Queue(NOTIFICATION_QUEUE)
        self._notifier: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # calls that had to wait for a connection
        self._closed = False

    async def _connect(self) -> tuple[_Connection, bool]:
        """The open connection, or a new one; the flag says whether it is new."""
        async with self._connecting:
            current = self._connection
            if current is not None and current.usable:
                return current, False
            if current is not None:
                current.close()
            port = self.port
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(port), SERVICE_HOST, port)
            self._connection = connection
            return connection, True

    def start_call(self, request: Frame, msgid: int, *, wait: float, done: CallDone) -> None:
        """Send the M4's raw request; *done* gets the response (or the failure) later.

        On an open connection this is callbacks only (no task): the request is written at
        once and the reader hands the response over. Otherwise, and for a retry after the
        service closed the connection under the request, :meth:`call` runs in a task.
        """
        loop = asyncio.get_running_loop()
        connection = self._connection
        if (connection is None or not connection.usable or msgid in connection.waiting
                or self._connecting.locked()):
            self._call_in_task(request, msgid, wait, loop.time() + wait, done)
            return
        future: asyncio.Future[Frame] = loop.create_future()
        connection.waiting[msgid] = future
        deadline = loop.time() + wait
        timer = loop.call_at(deadline, future.cancel)

        def answered(future: asyncio.Future[Frame]) -> None:
            timer.cancel()
            if connection.waiting.get(msgid) is future:
                del connection.waiting[msgid]
            connection.last_used = loop.time()
            if future.cancelled():
                done(ServiceCallFailed(f"service on port {self.port} did not answer within {wait:g} s"))
                return
            exc = future.exception()
            if exc is None:
                done(future.result())
            elif isinstance(exc, ConnectionError):
                # Sent on a connection the service had just closed: once more on a new one.
                self._call_in_task(request, msgid, wait, deadline, done)
            else:  # pragma: no cover - the reader sets only responses and ConnectionErrors
                done(ServiceCallFailed(f"service on port {self.port}: {exc}"))

        future.add_done_callback(answered)
        try:
            connection.write(request.raw)
        except (OSError, RuntimeError) as exc:
            if not future.done():
                future.set_exception(ConnectionResetError(str(exc)))

    def _call_in_task(self, request: Frame, msgid: int, wait: float, deadline: float, done: CallDone) -> None:
        if self._closed:
            done(ServiceCallFailed(f"service on port {self.port}: the proxy is stopping"))
            return

        async def run() -> None:
            left = deadline - asyncio.get_running_loop().time()
            try:
                if left <= 0:
                    raise ServiceCallFailed(f"service on port {self.port} did not answer within {wait:g} s")
                result: Frame | ServiceCallFailed = await self.call(request, msgid, wait=left)
            except ServiceCallFailed as exc:
                result = exc
            done(result)

        task = asyncio.get_running_loop().create_task(run(), name=f"service-call:{self.port}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def call(self, request: Frame, msgid: int, *, wait: float) -> Frame:
        """Send the M4's raw request; return the service's response with the same msgid."""
        try:
            async with asyncio.timeout(wait):
                for attempt in (1, 2):
                    connection, fresh = await self._connect()
                    if msgid in connection.waiting:
                        # Two M4 calls with one msgid (not rpclib, which uses thread ids): the
                        # second one gets a connection of its own so the replies cannot mix.
                        return await call_service(self.port, request, wait=wait)
                    future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
                    connection.waiting[msgid] = future
                    try:
                        connection.write(request.raw)
                        await connection.drain()
                        return await future
                    except ConnectionError:
                        # Sent on a connection the service had just closed: once more on a new one.
                        if fresh or attempt == 2:
                            raise
                    finally:
                        connection.waiting.pop(msgid, None)
                        connection.last_used = asyncio.get_running_loop().time()
                raise AssertionError("unreachable")  # pragma: no cover
        except TimeoutError:
            raise ServiceCallFailed(f"service on port {self.port} did not answer within {wait:g} s") from None
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
            log.warning("service on port %d is not keeping up: notification dropped", self.port)

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
                        log.warning("notification to service on port %d lost: %s",
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
