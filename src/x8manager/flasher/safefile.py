"""Read a sketch file that someone else controls, without being tricked into reading anything else.

The upload folder (``/tmp/arduino``) is writable by anyone who can write ``/tmp``, and the daemon
reading it runs as root. What sits at the upload path may be a symlink to a file the uploader may
not read (``/etc/shadow``), a FIFO or a terminal that blocks a plain ``open``/``read`` forever, or
a hard link to someone else's file; the folder itself may be a symlink. So the path is walked
one component at a time with ``O_NOFOLLOW`` (no symlink anywhere, when *strict*), the file is
opened ``O_NONBLOCK | O_NOCTTY`` and ``fstat`` decides before a byte is read: only a regular file
with one link is read, and never more than the size limit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["UnsafeFile", "describe_mode", "read_regular_file"]

_O_PATH = getattr(os, "O_PATH", 0)


class UnsafeFile(OSError):
    """The path is not a plain file the flasher may read; the message says what it is."""


def describe_mode(mode: int) -> str:
    kinds = [
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device (a terminal or a device node)"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _is_symlink_error(error: OSError) -> bool:
    return error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)


def _open_parent(path: Path, strict: bool) -> int:
    """An O_PATH descriptor of *path*'s directory; with *strict*, reached without any symlink."""
    if not strict:
        return os.open(path.parent, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fd = os.open("/", _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = Path("/")
        for part in path.parent.parts[1:]:
            walked /= part
            try:
                next_fd = os.open(part, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as error:
                if not _is_symlink_error(error):
                    raise
                try:
                    kind = describe_mode(os.lstat(walked).st_mode)
                except OSError:
                    raise error from None
                raise UnsafeFile(
                    errno.ELOOP, f"{walked} is {kind}: the flasher does not follow it", str(path)
                ) from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: Path, limit: int, *, strict: bool = True) -> bytes:
    """Up to *limit* + 1 bytes of the regular file at *path*; :class:`UnsafeFile` for anything else.

    *strict*: no component of the path may be a symlink (the daemon's upload path). Otherwise
    only the file itself must not be one (a user's own ``m4-flasher flash FILE``).
    """
    path = Path(os.path.abspath(path))
    directory = _open_parent(path, strict)
    try:
        try:
            fd = os.open(
                path.name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=directory,
            )
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafeFile(
                    errno.ELOOP, f"{path} is a symlink: the flasher reads only the file itself", str(path)
                ) from None
            raise
    finally:
        os.close(directory)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(errno.EINVAL, f"{path} is {describe_mode(info.st_mode)}, not a file", str(path))
        if info.st_nlink != 1:
            # A hard link may name a file its creator could not read: refused like a symlink.
            raise UnsafeFile(
                errno.EMLINK,
                f"{path} has {info.st_nlink} hard links: the flasher reads only a file with one name",
                str(path),
            )
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
