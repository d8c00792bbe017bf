"""The byte link to the M4: the X8 char device, a tty/pty/virtio serial port, or TCP.

The link delivers raw chunks (the M4 side is a byte stream with no framing: messages arrive
split, merged, and mixed with raw text) and sends one complete message per ``write()``. It
reopens by itself after an error or EOF (an M4 reset, a virtio port unplugged), so the proxy
never has to restart and never loses its registry.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import logging
import os
import select
import stat
import termios
import threading
import tty
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

__all__ = ["DeviceLink", "LinkDown", "M4Link", "StartupError", "TcpLink", "open_link"]

log = logging.getLogger(__name__)

# x8h7_ui hands out its whole 1024-byte accumulator per read() and discards what does not fit
# the caller's buffer, so the read size must be at least that.
READ_SIZE: Final = 1024
# After the link breaks: retry quickly (a reset M4 is back within a second), then back off.
REOPEN_FIRST_DELAY: Final = 0.05
REOPEN_MAX_DELAY: Final = 1.0
# x8h7_ui returns 0 bytes when a signal interrupts its wait; that means "retry", but a device
# that only ever returns 0 would spin, so pause briefly after a run of them.
ZERO_READS_BEFORE_PAUSE: Final = 3
ZERO_READ_PAUSE: Final = 0.01

DataCallback = Callable[[bytes], None]
ResetCallback = Callable[[], None]


class StartupError(Exception):
    """A fatal problem at start-up (device missing, port in use): the daemon exits non-zero."""


class LinkDown(ConnectionError):
    """The M4 link is closed at the moment (reopening after an error or EOF)."""


class M4Link(abc.ABC):
    """A reopening byte link to the M4."""

    description: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the link once; raise :class:`StartupError` if that fails."""

    @abc.abstractmethod
    def start(self, on_data: DataCallback, on_reset: ResetCallback) -> None:
        """Start reading. *on_data* gets each chunk, *on_reset* is called after every reopen;
        both run on the event loop."""

    @abc.abstractmethod
    async def write(self, message: bytes) -> None:
        """Write one complete message with one ``write()``; raise :class:`LinkDown` if closed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop reading and close."""


class DeviceLink(M4Link):
    """A character device: ``/dev/x8h7_ui``, a tty, a pty or a virtio serial port.

    Reading happens in a dedicated thread with blocking ``read()``: x8h7_ui has no poll method,
    so asyncio cannot watch it. Writes go through a single-thread executor under a lock, one
    ``write()`` per message, never interleaved and never racing a reopen.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = path
        self._fd: int | None = None
        self._is_tty = False
        self._lock = threading.Lock()  # guards _fd against a reopen while a write runs
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m4-link-write")
        self._thread: threading.Thread | None = None

    def _open_fd(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISCHR(mode):
                raise StartupError(f"M4 device {self.path} is not a character device")
            self._is_tty = os.isatty(fd)
            if self._is_tty:
                # A serial line would otherwise echo, translate CR/LF and eat control bytes:
                # msgpack needs every byte as sent. TCSANOW keeps bytes already queued.
                tty.setraw(fd, termios.TCSANOW)
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def open(self) -> None:
        try:
            self._fd = self._open_fd()
        except OSError as exc:
            raise StartupError(f"cannot open M4 device {self.path}: {exc.strerror or exc}") from exc
        except termios.error as exc:
            raise StartupError(f"cannot set raw mode on M4 device {self.path}: {exc}") from exc
        log.info("M4 link open: %s%s", self.path, " (tty, raw mode)" if self._is_tty else "")

    def start(self, on_data: DataCallback, on_reset: ResetCallback) -> None:
        loop = asyncio.get_running_loop()

        def deliver(data: bytes) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(on_data, data)

        def reset() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(on_reset)

        self._thread = threading.Thread(target=self._read_loop, args=(deliver, reset),
                                        name="m4-link-read", daemon=True)
        self._thread.start()

    def _drop_fd(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    def _reopen(self, reset: Callable[[], None]) -> bool:
        delay = REOPEN_FIRST_DELAY
        while not self._stop.is_set():
            try:
                fd = self._open_fd()
            except (OSError, StartupError, termios.error) as exc:
                log.debug("reopening %s failed: %s", self.path, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, REOPEN_MAX_DELAY)
                continue
            with self._lock:
                self._fd = fd
            log.warning("M4 link reopened: %s", self.path)
            reset()
            return True
        return False

    def _read_loop(self, deliver: Callable[[bytes], None], reset: Callable[[], None]) -> None:
        zero_reads = 0
        while not self._stop.is_set():
            fd = self._fd
            if fd is None:
                if not self._reopen(reset):
                    return
                continue
            try:
                # select() only lets close() wake this thread; on x8h7_ui (no poll method) it
                # reports readable at once and the read below is what blocks.
                readable, _, _ = select.select([fd, self._wake_r], [], [])
                if self._wake_r in readable:
                    return
                data = os.read(fd, READ_SIZE)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                log.warning("M4 link %s: read failed (%s); reopening", self.path, exc.strerror or exc)
                self._drop_fd()
                continue
            except ValueError:  # select() on an fd closed under us
                self._drop_fd()
                continue
            if data:
                zero_reads = 0
                deliver(data)
                continue
            if self._is_tty:
                # A tty/pty read of 0 is a hang-up: the other side went away.
                log.warning("M4 link %s: end of file; reopening", self.path)
                self._drop_fd()
                continue
            zero_reads += 1
            if zero_reads >= ZERO_READS_BEFORE_PAUSE:
                self._stop.wait(ZERO_READ_PAUSE)

    def _write_blocking(self, message: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise LinkDown(f"M4 link {self.path} is down (reopening)")
            view = memoryview(message)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError as exc:
                raise LinkDown(f"write to M4 link {self.path} failed: {exc.strerror or exc}") from exc

    async def write(self, message: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._write_blocking, message)

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
        thread = self._thread
        if thread is not None:
            # A chardev read cannot be interrupted; the thread is a daemon and exits with us.
            await asyncio.to_thread(thread.join, 1.0)
        self._drop_fd()
        self._writer.shutdown(wait=False, cancel_futures=True)
        if thread is None or not thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


class TcpLink(M4Link):
    """``tcp:HOST:PORT`` for development: the M4 (e.g. ``m4-sim --listen``) on a socket."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.description = f"tcp:{host}:{port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def open(self) -> None:
        try:
            await self._connect()
        except OSError as exc:
            raise StartupError(
                f"cannot connect to M4 link {self.description}: {exc.strerror or exc}") from exc
        log.info("M4 link open: %s", self.description)

    def start(self, on_data: DataCallback, on_reset: ResetCallback) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read_loop(on_data, on_reset),
                                                            name="m4-link-read")

    async def _read_loop(self, on_data: DataCallback, on_reset: ResetCallback) -> None:
        while True:
            reader = self._reader
            if reader is not None:
                try:
                    while data := await reader.read(READ_SIZE):
                        on_data(data)
                    log.warning("M4 link %s: end of file; reconnecting", self.description)
                except OSError as exc:
                    log.warning("M4 link %s: read failed (%s); reconnecting", self.description, exc)
                if self._writer is not None:
                    self._writer.close()
                self._reader = self._writer = None
            delay = REOPEN_FIRST_DELAY
            while self._reader is None:
                try:
                    await self._connect()
                except OSError as exc:
                    log.debug("reconnecting %s failed: %s", self.description, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, REOPEN_MAX_DELAY)
            log.warning("M4 link reconnected: %s", self.description)
            on_reset()

    async def write(self, message: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise LinkDown(f"M4 link {self.description} is down (reconnecting)")
        writer.write(message)  # one buffer append: messages never interleave
        try:
            await writer.drain()
        except OSError as exc:
            raise LinkDown(f"write to M4 link {self.description} failed: {exc}") from exc

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()


def open_link(spec: str) -> M4Link:
    """A link from the ``--device`` value: a path, or ``tcp:HOST:PORT``."""
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise StartupError(f"--device {spec!r}: expected tcp:HOST:PORT")
        return TcpLink(host.strip("[]"), int(port))
    return DeviceLink(spec)
