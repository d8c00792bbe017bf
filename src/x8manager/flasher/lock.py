"""The H7 programming lock: one flock-ed file shared by everything that drives the H7's SWD pins.

Two openocd processes bit-banging the same GPIOs corrupt each other's transfers, so the
flasher daemon, a manual ``m4-flasher flash`` and (when wrapped with ``flock``) the M7 firmware
programmer all take ``/run/lock/x8-h7-swd.lock`` first. The holder writes its pid and purpose
into the file so a waiting process can say who it waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["DEFAULT_LOCK_PATH", "LockCancelled", "LockTimeout", "h7_lock", "lock_holder"]

DEFAULT_LOCK_PATH = Path("/run/lock/x8-h7-swd.lock")
_POLL_SECONDS = 0.05


class LockTimeout(TimeoutError):
    """The lock stayed taken for longer than we were willing to wait."""


class LockCancelled(Exception):
    """Waiting for the lock was abandoned because the job became pointless (superseded)."""


def lock_holder(path: Path) -> str | None:
    """Who holds the lock right now ("pid 123: m4-flasher daemon"), or None when it is free."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
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
    units = [part for line in cgroup.splitlines() for part in line.rsplit("/", 1)[-1:]
             if part.endswith((".service", ".scope"))]
    return f"{command} ({units[0]})" if units else command


@contextlib.asynccontextmanager
async def h7_lock(
    path: Path,
    purpose: str,
    *,
    wait_limit: float,
    cancel: asyncio.Event | None = None,
) -> AsyncIterator[None]:
    """Hold the H7 lock for the body; wait up to *wait_limit* seconds, give up early if *cancel* is set.

    Polls with a non-blocking flock so waiting stays cancellable and never blocks the event loop.
    """
    import asyncio  # noqa: PLC0415 - here so `m4-flasher status` (lock_holder) starts without asyncio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait_limit
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
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
