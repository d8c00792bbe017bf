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
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Literal

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
# TCP link (development): above this many unsent bytes a sender waits for the peer.
TCP_WRITE_BUFFER: Final = 64 * 1024

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
    def send(self, message: bytes) -> asyncio.Future[None] | None:
        """Start writing one complete message (one ``write()`` where the device allows).

        Returns None when the message is already written (the usual case, no task and no
        await on the hot path), else a future that completes once it is, or fails with
        :class:`LinkDown`. Raises :class:`LinkDown` at once if the link is closed. Messages
        go out in the order of the calls.
        """

    async def write(self, message: bytes) -> None:
        """Write one complete message; raise :class:`LinkDown` if the link is closed."""
        pending = self.send(message)
        if pending is not None:
            await pending

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop reading and close."""


ReaderMode = Literal["auto", "thread", "poll"]


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _pollable(fd: int) -> bool:
    """Whether epoll can watch *fd*; x8h7_ui has no poll method and epoll_ctl gives EPERM."""
    try:
        with select.epoll() as probe:
            probe.register(fd, select.EPOLLIN)
    except OSError:
        return False
    return True


class DeviceLink(M4Link):
    """A character device: ``/dev/x8h7_ui``, a tty, a pty or a virtio serial port.

    Devices epoll can watch (ttys, ptys, virtio ports) are read and written on the event loop.
    x8h7_ui cannot be watched (no poll method), so it gets a dedicated thread with blocking
    ``read()``, and its writes go through a single-thread executor. Either way each message is
    one ``write()``, writes never interleave and never race a reopen.
    """

    def __init__(self, path: str, reader: ReaderMode = "auto") -> None:
        self.path = path
        self.description = path
        self.reader_mode = reader
        self._use_thread = reader == "thread"
        self._fd: int | None = None
        self._is_tty = False
        self._lock = threading.Lock()  # guards _fd against a reopen while a write runs
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_data: DataCallback | None = None
        self._on_reset: ResetCallback | None = None
        # Event-loop mode: message tails the device did not take yet, in order, each with the
        # future its sender may wait on.
        self._backlog: deque[tuple[memoryview, asyncio.Future[None]]] = deque()
        self._reopen_task: asyncio.Task[None] | None = None

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
            if not self._use_thread:
                os.set_blocking(fd, False)
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def open(self) -> None:
        try:
            fd = self._open_fd()
        except OSError as exc:
            raise StartupError(f"cannot open M4 device {self.path}: {exc.strerror or exc}") from exc
        except termios.error as exc:
            raise StartupError(f"cannot set raw mode on M4 device {self.path}: {exc}") from exc
        if self.reader_mode == "auto" and not _pollable(fd):
            self._use_thread = True
            os.set_blocking(fd, True)
        self._fd = fd
        log.info("M4 link open: %s (%s%s)", self.path, "tty in raw mode, " if self._is_tty else "",
                 "blocking reader thread" if self._use_thread else "event loop")

    def start(self, on_data: DataCallback, on_reset: ResetCallback) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_data, self._on_reset = on_data, on_reset
        if not self._use_thread:
            assert self._fd is not None
            self._loop.add_reader(self._fd, self._on_readable)
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m4-link-write")
        loop = self._loop

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

    # -- event-loop reader (ttys, ptys, virtio ports) ---------------------------------------

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(f"read failed ({exc.strerror or exc})")
            return
        if not data:  # a tty read of 0 is a hang-up: the other side went away
            self._lost("end of file")
            return
        assert self._on_data is not None
        self._on_data(data)

    def _lost(self, why: str) -> None:
        log.warning("M4 link %s: %s; reopening", self.path, why)
        assert self._loop is not None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._fail_backlog(LinkDown(f"M4 link {self.path}: {why}"))
        self._drop_fd()
        if self._reopen_task is None or self._reopen_task.done():
            self._reopen_task = self._loop.create_task(self._reopen_on_loop(), name="m4-link-reopen")

    async def _reopen_on_loop(self) -> None:
        delay = REOPEN_FIRST_DELAY
        while True:
            try:
                fd = self._open_fd()
            except (OSError, StartupError, termios.error) as exc:
                log.debug("reopening %s failed: %s", self.path, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REOPEN_MAX_DELAY)
                continue
            with self._lock:
                self._fd = fd
            assert self._loop is not None and self._on_reset is not None
            self._loop.add_reader(fd, self._on_readable)
            log.warning("M4 link reopened: %s", self.path)
            self._on_reset()
            return

    def _send_on_loop(self, message: bytes) -> asyncio.Future[None] | None:
        fd = self._fd
        if fd is None:
            raise LinkDown(f"M4 link {self.path} is down (reopening)")
        view = memoryview(message)
        if not self._backlog:
            # The hot path: the device takes the whole message at once.
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise LinkDown(f"write to M4 link {self.path} failed: {exc.strerror or exc}") from exc
            if written == len(view):
                return None
            view = view[written:]
            assert self._loop is not None
            # The M4 side is not reading: the rest goes out when the device takes bytes again.
            self._loop.add_writer(fd, self._on_writable)
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._backlog.append((view, done))
        return done

    def _on_writable(self) -> None:
        fd = self._fd
        assert fd is not None and self._loop is not None
        while self._backlog:
            view, done = self._backlog[0]
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail_backlog(LinkDown(f"write to M4 link {self.path} failed: {exc.strerror or exc}"))
                return
            if written < len(view):
                self._backlog[0] = (view[written:], done)
                return
            self._backlog.popleft()
            if not done.done():
                done.set_result(None)
        self._loop.remove_writer(fd)

    def _fail_backlog(self, error: LinkDown) -> None:
        if self._backlog and self._fd is not None and self._loop is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(self._fd)
        while self._backlog:
            _, done = self._backlog.popleft()
            if not done.done():
                done.set_exception(error)

    # -- reader thread (x8h7_ui) ------------------------------------------------------------

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
            # x8h7_ui returns 0 when a signal interrupts its wait: retry.
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
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                raise LinkDown(f"write to M4 link {self.path} failed: {exc.strerror or exc}") from exc

    # -- both -------------------------------------------------------------------------------

    def send(self, message: bytes) -> asyncio.Future[None] | None:
        if self._executor is None:
            return self._send_on_loop(message)
        return asyncio.wrap_future(self._executor.submit(self._write_blocking, message))

    async def close(self) -> None:
        self._stop.set()
        self._fail_backlog(LinkDown(f"M4 link {self.path} closed"))
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        if self._loop is not None and self._fd is not None and self._executor is None:
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
        thread = self._thread
        if thread is not None:
            # A chardev read cannot be interrupted; the thread is a daemon and exits with us.
            await asyncio.to_thread(thread.join, 1.0)
        self._drop_fd()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
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

    def send(self, message: bytes) -> asyncio.Future[None] | None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise LinkDown(f"M4 link {self.description} is down (reconnecting)")
        writer.write(message)  # one buffer append: messages never interleave
        if writer.transport.get_write_buffer_size() <= TCP_WRITE_BUFFER:
            return None
        return asyncio.ensure_future(self._drain(writer))

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
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
