"""Watch one file path with Linux inotify (via ctypes on libc: no extra dependency).

The Arduino IDE uploads with ``adb push`` to a fixed path such as ``/tmp/arduino/m4-user-sketch.elf``.
A finished upload shows up as ``IN_CLOSE_WRITE`` (written in place) or ``IN_MOVED_TO`` (renamed in)
on the file's directory. That directory may not exist yet (``/tmp`` is empty after boot) or may be
removed and recreated, so the watcher watches the nearest existing ancestor until the directory
appears, and re-arms whenever the watched directory goes away.

Anyone who can write ``/tmp`` can also replace the folder with a symlink (to another directory,
or a loop). Watches never follow a symlink (``IN_DONT_FOLLOW``): a folder that is a symlink counts
as "not there yet", so the watch stays on its parent until a real directory takes its place.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

__all__ = ["FileWatcher", "InotifyError"]

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_REARM_RETRY = 1.0  # seconds before another try when re-arming failed unexpectedly
_ARM_ATTEMPTS = 8  # climbs down a folder made while arming, at most this often per re-arm
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED


class InotifyError(OSError):
    """inotify could not be set up (the daemon cannot watch the upload path)."""


def _libc() -> ctypes.CDLL:
    # The interpreter is linked against libc, so its own symbol table has the inotify calls;
    # ctypes.util.find_library would run ldconfig/gcc, which an image may not have.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.inotify_rm_watch.restype = ctypes.c_int
    return libc


class FileWatcher:
    """Call ``on_change(reason)`` each time a complete new version of *path* appears.

    ``reason`` is ``"close-write"``, ``"moved-to"``, ``"appeared"`` (the directory came into
    existence already holding the file) or ``"overflow"`` (events were lost; look again).
    """

    def __init__(self, path: Path, on_change: Callable[[str], None]) -> None:
        self.path = Path(os.path.abspath(path))
        self._on_change = on_change
        self._libc = _libc()
        self._fd = -1
        self._wd = -1
        self._watched: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._armed_once = False

    @property
    def watched_directory(self) -> Path | None:
        """The directory currently watched (the file's parent, or its nearest existing ancestor)."""
        return self._watched

    def start(self) -> None:
        """Create the inotify instance and arm the first watch; raises :class:`InotifyError`."""
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyError(err, f"inotify_init1 failed: {os.strerror(err)}")
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._arm()
        self._loop.add_reader(fd, self._read_events)

    def close(self) -> None:
        if self._fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._wd = -1

    def _arm(self) -> None:
        """Watch the file's directory if it exists, else the nearest ancestor that does."""
        parent = self.path.parent
        for _ in range(_ARM_ATTEMPTS):
            candidate = self._watch_nearest()
            if not self._made_while_arming(candidate):
                break
        if candidate != self._watched:
            log.info("watching %s for %s", candidate, self.path)
        self._watched = candidate
        if candidate == parent and self._armed_once and os.path.lexists(self.path):
            # The directory appeared (or was recreated) with the upload already inside: that file
            # was written before our watch existed, so report it now instead of losing it.
            self._on_change("appeared")
        self._armed_once = True

    def _made_while_arming(self, watched: Path) -> bool:
        """Whether the folder below the watched ancestor exists now, as a real directory.

        Then it was made after our watch on it failed and before the watch on *watched* existed,
        so its IN_CREATE was never queued for us (``mkdir -p /tmp/a/b`` races like that): the
        caller climbs down now instead of waiting for an event that will not come. Bounded by
        ``_ARM_ATTEMPTS``: someone making and removing it forever still leaves *watched* watched.
        """
        below = self._next_component(watched)
        if below is None:
            return False
        try:
            return stat.S_ISDIR(os.lstat(watched / below).st_mode)  # lstat: a symlink is not one
        except OSError:
            return False

    def _watch_nearest(self) -> Path:
        """Replace the watch with one on the file's directory or its nearest existing ancestor."""
        if self._wd >= 0:
            # The old watch may already be gone (IN_IGNORED); EINVAL then is expected.
            self._libc.inotify_rm_watch(self._fd, self._wd)
            self._wd = -1
        parent = self.path.parent
        candidate = parent
        while True:
            if candidate == parent:
                mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
            else:
                mask = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
            mask |= IN_ONLYDIR | IN_DONT_FOLLOW
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(candidate), mask)
            if wd >= 0:
                break
            err = ctypes.get_errno()
            # ENOTDIR also when the folder is a symlink (IN_DONT_FOLLOW); ELOOP when a folder
            # above it is a symlink loop: either way, wait on the parent for a real directory.
            if err not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP) or candidate == candidate.parent:
                raise InotifyError(err, f"cannot watch {candidate}: {os.strerror(err)}")
            candidate = candidate.parent
        self._wd = wd
        return candidate

    def _rearm(self) -> None:
        try:
            self._arm()
        except InotifyError as error:
            # Never deaf for good: try again shortly (the folder's parent may come back).
            log.error(
                "re-arming the watch on %s failed, retrying in %.0f s: %s", self.path, _REARM_RETRY, error
            )
            if self._loop is not None and self._fd >= 0:
                self._loop.call_later(_REARM_RETRY, self._rearm)

    def _next_component(self, watched: Path | None = None) -> str | None:
        """The name inside the watched ancestor that leads toward the file's directory."""
        watched = self._watched if watched is None else watched
        if watched is None or watched == self.path.parent:
            return None
        return self.path.parent.relative_to(watched).parts[0]

    def _read_events(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as error:
            log.error("reading inotify events failed: %s", error)
            return
        rearm = False
        changed: list[str] = []
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            raw_name = data[offset + _EVENT_HEADER.size : offset + _EVENT_HEADER.size + length]
            offset += _EVENT_HEADER.size + length
            name = os.fsdecode(raw_name.rstrip(b"\0"))
            if mask & IN_Q_OVERFLOW:
                rearm = True
                changed.append("overflow")
                continue
            if wd != self._wd:
                continue  # a stale watch from before a re-arm
            if mask & _GONE:
                rearm = True
            elif self._watched == self.path.parent:
                if name == self.path.name and mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                    changed.append("close-write" if mask & IN_CLOSE_WRITE else "moved-to")
            elif name == self._next_component() and mask & IN_ISDIR:
                rearm = True
        if rearm:
            self._rearm()
        for reason in changed:
            if reason == "overflow" and not os.path.lexists(self.path):
                continue
            self._on_change(reason)
