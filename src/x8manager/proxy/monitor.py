"""The monitor port: the sketch's ``Serial`` as a raw TCP stream (``--monitor-listen``).

SerialRPC on the M4 sends each ``Serial.write`` as a ``[2, "tty", [bin]]`` notification and
binds ``tty`` for input (str or bin, into its 1024-byte RX ring). The monitor port (default
``127.0.0.1:7500``, as arduino-router's) gives every connected client the output bytes as they
come, and sends what a client writes to the sketch as ``tty`` notifications of at most
:data:`INPUT_CHUNK` bytes (each fits the M4 link's 248-byte limit).

When no monitor client is connected and no Linux program provides ``tty`` itself (e.g.
Arduino's py-serialrpc, which still gets it), the output goes to the journal line by line with
its own identifier, ``m4-serial``, instead of being lost.

Any local user can connect, so every log line a client can cause (connects and closes,
refusals, a client that does not read) goes through the rate limiter the other fronts use, and
input the M4 link cannot take is dropped with one rate-limited line (in :mod:`.m4port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final, cast

import msgpack

from x8manager.proxy.link import StartupError
from x8manager.proxy.ratelimit import RateLimitedLog

__all__ = ["JOURNAL_IDENTIFIER", "MonitorPort"]

log = logging.getLogger(__name__)
serial_log = logging.getLogger("x8manager.proxy.m4serial")

JOURNAL_IDENTIFIER: Final = "m4-serial"
# Client bytes per tty notification: 9 bytes of envelope, well under 248 in all.
INPUT_CHUNK: Final = 200
MAX_MONITOR_CLIENTS: Final = 8
# A monitor client this far behind is disconnected (it cannot keep up with the sketch).
MAX_UNSENT: Final = 256 * 1024
# A journal line longer than this is cut (a sketch printing without newlines).
MAX_LINE: Final = 1024
# Journal lines per second at most; the rest are counted in the next line that goes out.
LINES_PER_SECOND: Final = 100
# Connect/close lines per LOG_EVERY seconds (a few monitors coming and going are all logged).
CLIENT_LOG_BURST: Final = 16


class _MonitorClient(asyncio.Protocol):
    def __init__(self, port: MonitorPort, limited_log: RateLimitedLog) -> None:
        self._port = port
        self._limited = limited_log
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self._port.joined(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._port.left(self)

    def data_received(self, data: bytes) -> None:
        self._port.input(data)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_UNSENT:
            self._limited.warning(
                "monitor-slow", "monitor: client %s does not keep up with the sketch's output: disconnected",
                self.peer)
            transport.abort()


class MonitorPort:
    """The monitor listener, its clients, and the journal fallback."""

    def __init__(self, send_to_m4: Callable[[bytes], None]) -> None:
        self._send_to_m4 = send_to_m4
        self._limited = RateLimitedLog(log, burst=CLIENT_LOG_BURST)
        self._clients: set[_MonitorClient] = set()
        self._server: asyncio.Server | None = None
        self._line = bytearray()
        self._second = 0.0
        self._lines_this_second = 0
        self._suppressed = 0
        self.address: tuple[str, int] | None = None

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _MonitorClient(self, self._limited), host, port)
        except OSError as exc:
            raise StartupError(f"cannot listen for the monitor port on {host}:{port}: "
                               f"{exc.strerror or exc}") from exc
        self.address = self._server.sockets[0].getsockname()[:2]

    @property
    def clients(self) -> int:
        return len(self._clients)

    def joined(self, client: _MonitorClient) -> None:
        if len(self._clients) >= MAX_MONITOR_CLIENTS:
            self._limited.warning("monitor-full", "monitor: %s refused: %d clients already", client.peer,
                                  MAX_MONITOR_CLIENTS)
            assert client.transport is not None
            client.transport.abort()
            return
        self._clients.add(client)
        self._flush_line()  # what the journal had so far is complete as far as it goes
        self._limited.info("monitor-clients", "monitor: %s connected", client.peer)

    def left(self, client: _MonitorClient) -> None:
        if client in self._clients:
            self._clients.discard(client)
            self._limited.info("monitor-clients", "monitor: %s disconnected", client.peer)

    # -- sketch → monitor -------------------------------------------------------------------

    def output(self, params: list[Any], *, taken: bool) -> None:
        """A ``tty`` notification's params; *taken*: a Linux program provides ``tty`` too."""
        data = b"".join(_as_bytes(value) for value in params)
        if not data:
            return
        if self._clients:
            for client in list(self._clients):
                client.write(data)
        elif not taken:
            self._to_journal(data)

    def _to_journal(self, data: bytes) -> None:
        self._line += data
        while True:
            end = self._line.find(b"\n")
            if end < 0:
                break
            line = bytes(self._line[:end])
            del self._line[: end + 1]
            self._log_line(line)
        while len(self._line) > MAX_LINE:
            line = bytes(self._line[:MAX_LINE])
            del self._line[:MAX_LINE]
            self._log_line(line)

    def _flush_line(self) -> None:
        if self._line:
            line = bytes(self._line)
            self._line.clear()
            self._log_line(line)

    def _log_line(self, line: bytes) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._second >= 1.0:
            self._second, self._lines_this_second = now, 0
        self._lines_this_second += 1
        if self._lines_this_second > LINES_PER_SECOND:
            self._suppressed += 1
            return
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if self._suppressed:
            text += f" ({self._suppressed} earlier lines not logged: more than {LINES_PER_SECOND}/s)"
            self._suppressed = 0
        serial_log.info("%s", text, extra={"journal": {"SYSLOG_IDENTIFIER": JOURNAL_IDENTIFIER}})

    # -- monitor → sketch -------------------------------------------------------------------

    def input(self, data: bytes) -> None:
        for start in range(0, len(data), INPUT_CHUNK):
            chunk = data[start:start + INPUT_CHUNK]
            packed: bytes = msgpack.packb([2, "tty", [chunk]], use_bin_type=True)
            self._send_to_m4(packed)

    async def close(self) -> None:
        self._flush_line()
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            if client.transport is not None:
                client.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()  # Serial.print(int) as older sketches send it
    return b""
