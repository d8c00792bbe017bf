"""The H7 programming lock: one flock-ed file shared by everything that drives the H7's SWD pins.

Two openocd processes bit-banging the same GPIOs corrupt each other's transfers, so the
flasher daemon, a manual ``m4-flasher flash`` and (when wrapped with ``flock``) the M7 firmware
programmer all take ``/run/lock/x8-h7-swd.lock`` first. The holder writes its pid and purpose
into the file so a waiting process can say who it waits for.

``/run/lock`` is world-writable (1777), and a lock file any user can open is a lock any user can
hold. So lock files are opened with :func:`open_private_lock`: never through a symlink, only a
regular file with one link owned by this user, mode 0600. Anything else at the path (a symlink
to a file to be truncated, a file another user created to hold the lock) is removed and replaced
when we are root (root may remove it despite the sticky bit), refused otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "DEFAULT_LOCK_PATH",
    "LockCancelled",
    "LockTimeout",
    "UnsafeLock",
    "h7_lock",
    "lock_holder",
    "open_private_lock",
]

DEFAULT_LOCK_PATH = Path("/run/lock/x8-h7-swd.lock")
_POLL_SECONDS = 0.05


class LockTimeout(TimeoutError):
    """The lock stayed taken for longer than we were willing to wait."""


class LockCancelled(Exception):
    """Waiting for the lock was abandoned because the job became pointless (superseded)."""


class UnsafeLock(OSError):
    """Something other than our own private lock file is at the lock path and cannot be replaced."""


def _foreign(info: os.stat_result) -> str | None:
    """Why the opened file is not a lock file of ours (None when it is)."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}"
    if info.st_nlink != 1:
        return f"{info.st_nlink} hard links"
    return None


def open_private_lock(path: Path) -> int:
    """Open (create) the lock file at *path* as a private file: O_NOFOLLOW, ours, mode 0600."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    for _ in range(3):
        problem: str | None
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as error:
            # ELOOP: a symlink. EACCES: with fs.protected_regular, root may not O_CREAT-open
            # another user's file (or symlink) in a sticky directory.
            if error.errno not in (errno.ELOOP, errno.EACCES):
                raise
            try:
                planted = os.lstat(path)
            except FileNotFoundError:
                continue
            if error.errno == errno.EACCES and planted.st_uid == os.geteuid():
                raise
            problem = "a symlink" if stat.S_ISLNK(planted.st_mode) else f"owned by uid {planted.st_uid}"
        else:
            info = os.fstat(fd)
            problem = _foreign(info)
            if problem is None:
                if stat.S_IMODE(info.st_mode) != 0o600:
                    os.fchmod(fd, 0o600)  # made by flock(1) or an older flasher with 0644
                return fd
            os.close(fd)
        if os.geteuid() != 0:
            raise UnsafeLock(errno.EPERM, f"lock file {path} is {problem}: refusing to use it", str(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the symlink itself, or the other user's file: never what it points to
        flags |= os.O_EXCL
    raise UnsafeLock(errno.EAGAIN, f"lock file {path} keeps being replaced: refusing to use it", str(path))


def lock_holder(path: Path) -> str | None:
    """Who holds the lock right now ("pid 123: m4-flasher daemon"), or None when it is free."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return None  # no lock yet, or a private lock this user may not look at
    except OSError as error:
        return f"unusable lock file ({error.strerror})"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            return text or _flock_holder(os.fstat(fd)) or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _flock_holder(lock_file: os.stat_result, proc: Path = Path("/proc")) -> str | None:
    """A holder that wrote nothing into the file (flock(1), as the drop-in for Arduino's
    stm32h7-program.service uses): its pid from /proc/locks, its command and systemd unit."""
    device = f"{os.major(lock_file.st_dev):02x}:{os.minor(lock_file.st_dev):02x}:{lock_file.st_ino}"
    try:
        locks = (proc / "locks").read_text()
    except OSError:
        return None
    for line in locks.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 456 fe:00:2146413 0 EOF" (blocked waiters carry a "->" field)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            return f"pid {fields[4]}: {_describe_process(proc / fields[4])}"
    return None


def _describe_process(process: Path) -> str:
    try:
        command = (process / "comm").read_text().strip()
    except OSError:
        return "ended"
    try:
        cgroup = (process / "cgroup").read_text()
    except OSError:
        cgroup = ""
    units = [
        part
        for line in cgroup.splitlines()
        for part in line.rsplit("/", 1)[-1:]
        if part.endswith((".service", ".scope"))
    ]
    return f"{command} ({units[0]})" if units else command


@contextlib.asynccontextmanager
async def h7_lock(
    path: Path,
    purpose: str,
    *,
    wait_limit: float,
    cancel: asyncio.Event | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> AsyncIterator[None]:
    """Hold the H7 lock for the body; wait up to *wait_limit* seconds, give up early if *cancel* is set.

    Polls with a non-blocking flock so waiting stays cancellable and never blocks the event loop.
    *on_wait* is told once, with the holder, when the lock is taken and we start waiting.
    """
    import asyncio  # noqa: PLC0415 - here so `m4-flasher status` (lock_holder) starts without asyncio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_private_lock(path)
    try:
        deadline = time.monotonic() + wait_limit
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(lock_holder(path) or "another process")
                    on_wait = None
                if cancel is not None and cancel.is_set():
                    raise LockCancelled(f"stopped waiting for {path}") from None
                if time.monotonic() >= deadline:
                    holder = lock_holder(path) or "another process"
                    raise LockTimeout(f"{path} still held by {holder} after {wait_limit:.0f} s") from None
                await asyncio.sleep(_POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
