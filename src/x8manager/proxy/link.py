"""The byte link to the M4: the X8 char device, a tty/pty/virtio serial port, or TCP.

The link delivers raw chunks (the M4 side is a byte stream with no framing: messages arrive
split, merged, and mixed with raw text) and sends one complete message per ``write()``. It
reopens by itself after an error or EOF (an M4 reset, a virtio port unplugged), so the proxy
never has to restart and never loses its registry.

One class per kind of link: :class:`PollDeviceLink` (devices epoll can watch, served on the
event loop), :class:`ThreadDeviceLink` (x8h7_ui, which has no poll method: a blocking reader
thread) and :class:`TcpLink` (development). :func:`open_link` picks and opens one. All of them
wait between reopen attempts with one :class:`Backoff`.
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
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "MAX_BACKLOG",
    "Backoff",
    "LinkBusy",
    "LinkDown",
    "M4Link",
    "PollDeviceLink",
    "ReaderMode",
    "StartupError",
    "TcpLink",
    "ThreadDeviceLink",
    "open_link",
    "parse_link_spec",
]

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
# Messages waiting for an M4 that does not read. Past this a send is refused at once (the
# caller hears so) instead of queueing calls that reach the M4 long after their callers gave up.
MAX_BACKLOG: Final = 64

DataCallback = Callable[[bytes], None]
ResetCallback = Callable[[], None]
ReaderMode = Literal["auto", "thread", "poll"]


class StartupError(Exception):
    """A fatal problem at start-up (device missing, port in use): the daemon exits non-zero."""


class LinkDown(ConnectionError):
    """The M4 link is closed at the moment (reopening after an error or EOF)."""


class LinkBusy(LinkDown):
    """The M4 is not reading: :data:`MAX_BACKLOG` messages already wait for it."""


class Backoff:
    """Delays between reopen attempts: quick at first, doubling up to a cap."""

    def __init__(self, first: float = REOPEN_FIRST_DELAY, cap: float = REOPEN_MAX_DELAY) -> None:
        self._cap = cap
        self._delay = first

    def next(self) -> float:
        """The delay before the next attempt (each call doubles the following one)."""
        delay = self._delay
        self._delay = min(self._delay * 2, self._cap)
        return delay


class M4Link(abc.ABC):
    """A reopening byte link to the M4, already open (see :func:`open_link`)."""

    description: str
    withdrawn = 0  # messages dropped unsent because their sender gave up

    @property
    def backlog(self) -> int:
        """Messages waiting for the M4 to read (none on links that queue elsewhere)."""
        return 0

    @abc.abstractmethod
    def start(self, on_data: DataCallback, on_reset: ResetCallback) -> None:
        """Start reading. *on_data* gets each chunk, *on_reset* is called after every reopen;
        both run on the event loop."""

    @abc.abstractmethod
    def send(self, message: bytes) -> asyncio.Future[None] | None:
        """Start writing one complete message (one ``write()`` where the device allows).

        Returns None when the message is already written (the usual case, no task and no
        await on the hot path), else a future that completes once it is, or fails with
        :class:`LinkDown`. Cancelling that future withdraws the message if no byte of it has
        been written yet (its caller gave up). Raises :class:`LinkDown` at once if the link is
        closed, :class:`LinkBusy` if too many messages wait already. Messages go out in the
        order of the calls.
        """

    async def write(self, message: bytes) -> None:
        """Write one complete message; raise :class:`LinkDown` if the link is closed."""
        pending = self.send(message)
        if pending is not None:
            await pending

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop reading and close."""


# --- character devices ---------------------------------------------------------------------

@dataclass
class _DeviceFd:
    fd: int
    is_tty: bool


def _open_device_fd(path: str, *, blocking: bool) -> _DeviceFd:
    """Open *path* read-write as the M4 link; a tty is put in raw mode."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise StartupError(f"M4 device {path} is not a character device")
        is_tty = os.isatty(fd)
        if is_tty:
            # A serial line would otherwise echo, translate CR/LF and eat control bytes:
            # msgpack needs every byte as sent. TCSANOW keeps bytes already queued.
            tty.setraw(fd, termios.TCSANOW)
        os.set_blocking(fd, blocking)
    except BaseException:
        os.close(fd)
        raise
    return _DeviceFd(fd, is_tty)


def _pollable(fd: int) -> bool:
    """Whether epoll can watch *fd*; x8h7_ui has no poll method and epoll_ctl gives EPERM."""
    try:
        with select.epoll() as probe:
            probe.register(fd, select.EPOLLIN)
    except OSError:
        return False
    return True


def _write_error(path: str, exc: OSError) -> LinkDown:
    return LinkDown(f"write to M4 link {path} failed: {exc.strerror or exc}")


class PollDeviceLink(M4Link):
    """A device epoll can watch (tty, pty, virtio port): read and written on the event loop.

    A message the device does not take at once waits in a bounded backlog with the future its
    sender holds; a withdrawn (cancelled) message that has not started is skipped.
    """

    def __init__(self, path: str, device: _DeviceFd) -> None:
        self.path = path
        self.description = path
        self._fd: int | None = device.fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_data: DataCallback | None = None
        self._on_reset: ResetCallback | None = None
        # (unsent bytes, whether some bytes of it went out already, the sender's future)
        self._backlog: deque[tuple[memoryview, bool, asyncio.Future[None]]] = deque()
        self._reopen_task: asyncio.Task[None] | None = None

    def start(self, on_data: DataCallback, on_reset: ResetCallback) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_data, self._on_reset = on_data, on_reset
        assert self._fd is not None
        self._loop.add_reader(self._fd, self._on_readable)

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
        self._fail_backlog(LinkDown(f"M4 link {self.path}: {why}"))
        self._drop_fd()
        assert self._loop is not None
        if self._reopen_task is None or self._reopen_task.done():
            self._reopen_task = self._loop.create_task(self._reopen(), name="m4-link-reopen")

    def _drop_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    async def _reopen(self) -> None:
        backoff = Backoff()
        while True:
            try:
                device = _open_device_fd(self.path, blocking=False)
            except (OSError, StartupError, termios.error) as exc:
                log.debug("reopening %s failed: %s", self.path, exc)
                await asyncio.sleep(backoff.next())
                continue
            self._fd = device.fd
            assert self._loop is not None and self._on_reset is not None
            self._loop.add_reader(device.fd, self._on_readable)
            log.warning("M4 link reopened: %s", self.path)
            self._on_reset()
            return

    def send(self, message: bytes) -> asyncio.Future[None] | None:
        fd = self._fd
        if fd is None:
            raise LinkDown(f"M4 link {self.path} is down (reopening)")
        view = memoryview(message)
        started = False
        if not self._backlog:
            # The hot path: the device takes the whole message at once.
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise _write_error(self.path, exc) from exc
            if written == len(view):
                return None
            view, started = view[written:], written > 0
            assert self._loop is not None
            # The M4 side is not reading: the rest goes out when the device takes bytes again.
            self._loop.add_writer(fd, self._on_writable)
        elif len(self._backlog) >= MAX_BACKLOG:
            raise LinkBusy(f"M4 link {self.path}: {len(self._backlog)} messages already wait for "
                           "the M4 to read")
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._backlog.append((view, started, done))
        return done

    def _on_writable(self) -> None:
        fd = self._fd
        assert fd is not None and self._loop is not None
        while self._backlog:
            view, started, done = self._backlog[0]
            if done.cancelled() and not started:
                self._backlog.popleft()  # its caller gave up before any byte went out
                self.withdrawn += 1
                continue
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail_backlog(_write_error(self.path, exc))
                return
            if written < len(view):
                self._backlog[0] = (view[written:], True, done)
                return
            self._backlog.popleft()
            if not done.done():
                done.set_result(None)
        self._loop.remove_writer(fd)

    def _fail_backlog(self, error: LinkDown) -> None:
        if self._backlog and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        while self._backlog:
            _, _, done = self._backlog.popleft()
            if not done.done():
                done.set_exception(error)

    @property
    def backlog(self) -> int:
        """Messages waiting for the device to take them."""
        return len(self._backlog)

    async def close(self) -> None:
        self._fail_backlog(LinkDown(f"M4 link {self.path} closed"))
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        if self._loop is not None:
            self._drop_fd()
        elif self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ThreadDeviceLink(M4Link):
    """x8h7_ui (no poll method): a thread blocks in ``read()``, a one-thread executor writes.

    Each message is one ``write()``; writes never interleave and never race a reopen.
    """

    def __init__(self, path: str, device: _DeviceFd) -> None:
        self.path = path
        self.description = path
        self._fd: int | None = device.fd
        self._is_tty = device.is_tty
        self._lock = threading.Lock()  # guards _fd against a reopen while a write runs
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m4-link-write")
        self._thread: threading.Thread | None = None
        self._queued = 0  # messages submitted to the writer and not finished

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
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                device = _open_device_fd(self.path, blocking=True)
            except (OSError, StartupError, termios.error) as exc:
                log.debug("reopening %s failed: %s", self.path, exc)
                self._stop.wait(backoff.next())
                continue
            with self._lock:
                self._fd = device.fd
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
                raise _write_error(self.path, exc) from exc

    def send(self, message: bytes) -> asyncio.Future[None] | None:
        if self._fd is None:
            raise LinkDown(f"M4 link {self.path} is down (reopening)")
        if self._queued >= MAX_BACKLOG:
            raise LinkBusy(f"M4 link {self.path}: {self._queued} messages already wait for the M4 to read")
        self._queued += 1
        # Cancelling the asyncio future cancels the executor's job if it has not started.
        written = asyncio.wrap_future(self._executor.submit(self._write_blocking, message))
        written.add_done_callback(self._written)
        return written

    def _written(self, written: asyncio.Future[None]) -> None:
        self._queued -= 1
        if written.cancelled():
            self.withdrawn += 1  # (a write already running still completes)

    @property
    def backlog(self) -> int:
        return self._queued

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
        thread = self._thread
        if thread is not None:
            # A chardev read cannot be interrupted; the thread is a daemon and exits with us.
            await asyncio.to_thread(thread.join, 1.0)
        self._drop_fd()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if thread is None or not thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


# --- TCP (development) ---------------------------------------------------------------------

class TcpLink(M4Link):
    """``tcp:HOST:PORT`` for development: the M4 (e.g. ``m4-sim --listen``) on a socket."""

    def __init__(self, host: str, port: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.host = host
        self.port = port
        self.description = f"tcp:{host}:{port}"
        self._reader: asyncio.StreamReader | None = reader
        self._writer: asyncio.StreamWriter | None = writer
        self._task: asyncio.Task[None] | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

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
            backoff = Backoff()
            while self._reader is None:
                try:
                    await self._connect()
                except OSError as exc:
                    log.debug("reconnecting %s failed: %s", self.description, exc)
                    await asyncio.sleep(backoff.next())
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


# --- choosing and opening ------------------------------------------------------------------

@dataclass(frozen=True)
class LinkSpec:
    """A parsed ``--device`` value: a device path, or a TCP host and port."""

    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def is_tcp(self) -> bool:
        return bool(self.host)


def parse_link_spec(spec: str) -> LinkSpec:
    """The ``--device`` value: a path, or ``tcp:HOST:PORT``."""
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise StartupError(f"--device {spec!r}: expected tcp:HOST:PORT")
        return LinkSpec(host=host.strip("[]"), port=int(port))
    return LinkSpec(path=spec)


async def open_link(spec: str, reader: ReaderMode = "auto") -> M4Link:
    """Open the link ``--device`` names; raise :class:`StartupError` if that fails.

    *reader* ``auto`` serves a device on the event loop when epoll can watch it and gives it a
    reader thread otherwise (x8h7_ui); ``poll``/``thread`` force one (tests).
    """
    parsed = parse_link_spec(spec)
    if parsed.is_tcp:
        try:
            stream_reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        except OSError as exc:
            raise StartupError(f"cannot connect to M4 link {spec}: {exc.strerror or exc}") from exc
        log.info("M4 link open: %s", spec)
        return TcpLink(parsed.host, parsed.port, stream_reader, writer)
    path = parsed.path
    try:
        device = _open_device_fd(path, blocking=False)
    except OSError as exc:
        raise StartupError(f"cannot open M4 device {path}: {exc.strerror or exc}") from exc
    except termios.error as exc:
        raise StartupError(f"cannot set raw mode on M4 device {path}: {exc}") from exc
    threaded = reader == "thread" or (reader == "auto" and not _pollable(device.fd))
    log.info("M4 link open: %s (%s%s)", path, "tty in raw mode, " if device.is_tty else "",
             "blocking reader thread" if threaded else "event loop")
    if threaded:
        os.set_blocking(device.fd, True)
        return ThreadDeviceLink(path, device)
    return PollDeviceLink(path, device)
