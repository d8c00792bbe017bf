"""M4→Linux traffic: forward the M4's calls and notifications to local services.

Like the original, a service is reached at ``127.0.0.1:<registered port>`` and receives the
M4's raw bytes unchanged. Unlike the original, a call finishes as soon as one complete reply
has arrived (no 100 ms idle wait), is bounded by a timeout, and runs concurrently with every
other call; notifications keep their order per service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from x8manager.rpc.framing import Frame, Response, StreamDecoder

__all__ = ["NotificationChannel", "ServiceCallFailed", "call_service"]

log = logging.getLogger(__name__)

SERVICE_HOST: Final = "127.0.0.1"
READ_CHUNK: Final = 64 * 1024
# A service reply larger than this is refused anyway (the M4 takes 248 bytes per write), but
# it is read to the end so the service sees a clean close.
MAX_SERVICE_REPLY: Final = 64 * 1024
# Notifications waiting for one service; beyond this the service is not keeping up and new
# ones are dropped with a warning rather than growing memory.
NOTIFICATION_QUEUE: Final = 1024
# A notification connection with nothing to send for this long is closed.
NOTIFICATION_IDLE_CLOSE: Final = 30.0


class ServiceCallFailed(Exception):
    """The service could not be reached, broke the connection, or did not answer in time."""


async def call_service(port: int, request: Frame, *, wait: float) -> Frame:
    """Send the M4's raw request to the service on *port*; return its first complete response."""
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


class NotificationChannel:
    """In-order delivery of the M4's notifications to one service port.

    One worker and one kept-open connection per port: ``tty`` output must reach the service in
    the order the M4 wrote it, which separate concurrent connections would not guarantee.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(NOTIFICATION_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def send(self, raw: bytes) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"notify:{self.port}")
        try:
            self._queue.put_nowait(raw)
        except asyncio.QueueFull:
            log.warning("service on port %d is not keeping up: notification dropped", self.port)

    def _connected(self) -> bool:
        # The service never writes on this connection, so EOF shows up as at_eof() at once.
        return (self._writer is not None and not self._writer.is_closing()
                and self._reader is not None and not self._reader.at_eof())

    def _disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _deliver(self, raw: bytes) -> None:
        for attempt in (1, 2):  # a kept connection may have died since the last message
            if not self._connected():
                self._disconnect()
                self._reader, self._writer = await asyncio.open_connection(SERVICE_HOST, self.port)
            assert self._writer is not None
            try:
                self._writer.write(raw)
                await self._writer.drain()
                return
            except OSError:
                self._disconnect()
                if attempt == 2:
                    raise

    async def _run(self) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(NOTIFICATION_IDLE_CLOSE):
                        raw = await self._queue.get()
                except TimeoutError:
                    self._disconnect()
                    if self._queue.empty():
                        return
                    continue
                try:
                    await self._deliver(raw)
                except OSError as exc:
                    log.warning("notification to service on port %d lost: %s", self.port, exc.strerror or exc)
        finally:
            self._disconnect()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._disconnect()
