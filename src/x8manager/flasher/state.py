"""The flasher's files under its state directory, each written so a crash leaves it whole.

Layout of ``<state-dir>`` (``/var/lib/m4-flasher`` on the X8, kept across reboots so an
interrupted flash can be finished after a power cut):

- ``spool/``            private snapshots of uploads; the flasher only ever reads these
- ``spool/*.part``      request bodies being received (never read whole into memory)
- ``in-progress.json``  present exactly while a flash transaction is open: openocd may be writing
                        the chip, or a written sketch waits for (or just passed) its health check
- ``last-good-SHA.elf`` the last sketch that flashed and verified (for ``m4-flasher rollback``),
                        named by its sha256 (``last-good.elf`` from older flashers)
- ``last-good.json``    its sha256, size, time and ELF name: renaming it in is the commit point
- ``status.json``       what ``m4-flasher status`` shows (``--status`` may put it elsewhere)
- ``daemon.json``       the daemon's settings, so a manual ``m4-flasher flash`` uses the same openocd
- ``status.lock``       serialises read-modify-write of the status file between processes
- ``.reserve``          a few KiB kept free: released when the disk fills, so the outcome of a flash
                        that already wrote the chip can still be recorded

Only ``status.json``, ``last-good.json`` and ``daemon.json`` are readable by other users (what
``m4-flasher status`` shows); the lock, the marker, the sketches and the spool are root's alone,
so no other user can hold a lock the daemon needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from x8manager.flasher.records import DaemonSettings, FlashRecord, InProgress, LastGood, Status

__all__ = ["HISTORY_LENGTH", "StateDir", "atomic_write", "utc_now"]

HISTORY_LENGTH = 10
_LEGACY_LAST_GOOD_ELF = "last-good.elf"  # the ELF of a last-good.json without "elf"
STATUS_LOCK_WAIT = 0.5  # seconds: the longest the event loop may wait for the status lock
# Room for a status file, a last-good record and the marker when the filesystem is otherwise full.
RESERVE_BYTES = 64 * 1024
JsonObject = dict[str, Any]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace *path* with *data*: temp file in the same directory, fsync, rename, fsync the directory.

    ``durable=False`` skips both fsyncs: readers still never see a half-written file.
    """
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fchmod(temp.fileno(), mode)
            if durable:
                os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    if durable:
        _fsync_directory(path.parent)


def _dump(document: JsonObject) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _load(path: Path) -> JsonObject | None:
    """Read a JSON object; a missing file is None, a damaged one is reported as such."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return document


class StateDir:
    """Paths and crash-safe updates of the flasher's state directory."""

    def __init__(self, root: Path, status_path: Path | None = None) -> None:
        self.root = Path(root)
        self.spool = self.root / "spool"
        self.marker_path = self.root / "in-progress.json"
        self.last_good_json = self.root / "last-good.json"
        self.settings_path = self.root / "daemon.json"
        self.status_path = Path(status_path) if status_path else self.root / "status.json"
        self._status_lock_path = self.root / "status.lock"
        self.reserve_path = self.root / ".reserve"

    def prepare(self) -> None:
        """Create the directories and prove they are writable (start-up check)."""
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        self.ensure_reserve()
        self._drop_unnamed_last_good()

    # --- room to record outcomes on a full disk --------------------------------------------------
    def ensure_reserve(self) -> bool:
        """Keep RESERVE_BYTES allocated in the state directory; False if there is no room for it."""
        if self.reserve_path.exists():
            return True
        try:
            atomic_write(self.reserve_path, b"\0" * RESERVE_BYTES, mode=0o600, durable=False)
        except OSError:
            return False
        return True

    def release_reserve(self) -> bool:
        """Free the reserve (the disk is full); True if there was one to free."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        return True

    # --- spool -----------------------------------------------------------------------------
    def spool_file(self, name: str) -> Path:
        return self.spool / name

    def store_in_spool(self, data: bytes, name: str) -> Path:
        """Put *data* in the spool, whole or not at all (write, rename).

        Not fsync-ed here: this is on the upload-to-openocd path. The flash makes it durable right
        after openocd starts, and recovery checks it against the sha256 in the in-progress marker.
        """
        path = self.spool / name
        atomic_write(path, data, mode=0o600, durable=False)
        return path

    def make_durable(self, path: Path) -> None:
        """fsync a file written with ``durable=False`` and the directory entry that names it."""
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_directory(path.parent)

    # --- in-progress marker ----------------------------------------------------------------
    def write_marker(self, marker: InProgress, *, durable: bool = True) -> None:
        atomic_write(self.marker_path, _dump(marker.to_json()), mode=0o600, durable=durable)

    def read_marker(self) -> InProgress | None:
        try:
            raw = _load(self.marker_path)
        except ValueError:
            # Written atomically, so damage means the disk, not us; treat as "interrupted, unknown".
            return InProgress(record=FlashRecord(), damaged=True)
        return None if raw is None else InProgress.from_json(raw)

    def clear_marker(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.marker_path.unlink()
        _fsync_directory(self.root)

    # --- last good sketch -------------------------------------------------------------------
    @property
    def last_good_elf(self) -> Path:
        """The last good sketch's ELF, as ``last-good.json`` names it (may not exist)."""
        try:
            record = LastGood.from_json(_load(self.last_good_json))
        except (ValueError, OSError):
            record = None
        return self._elf_of(record)

    def _elf_of(self, record: LastGood | None) -> Path:
        name = record.elf if record is not None and record.elf else _LEGACY_LAST_GOOD_ELF
        # Only a plain name in this directory: a damaged record never points elsewhere.
        return self.root / (name if "/" not in name and name not in (".", "..") else _LEGACY_LAST_GOOD_ELF)

    def save_last_good(self, elf: Path, record: LastGood) -> None:
        """Make the sketch at *elf* the last good one in one step, or leave the old one whole.

        The ELF goes in first under a name of its own (``last-good-SHA.elf``: a hard link of the
        spool file, no data blocks needed on a full disk; a copy only where links are impossible);
        then ``last-good.json``, naming it, is renamed in: that rename is the commit. A crash (or
        ENOSPC) before it leaves the previous record and the ELF it names as they were; the stray
        new ELF is removed at the next save or start. Nothing is ever half one, half the other.
        """
        target = self.root / f"last-good-{record.sha256}.elf"
        if not target.is_file():
            temp_elf = self.root / f".last-good-{record.sha256}.elf.tmp"
            try:
                with contextlib.suppress(FileNotFoundError):
                    temp_elf.unlink()
                try:
                    os.link(elf, temp_elf)
                except OSError as error:
                    if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copyfile(elf, temp_elf)
                    os.chmod(temp_elf, 0o600)
                self.make_durable(temp_elf)
                os.replace(temp_elf, target)  # not the last good one yet: no record names it
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp_elf.unlink()
        atomic_write(self.last_good_json, _dump(dataclasses.replace(record, elf=target.name).to_json()))
        self._drop_unnamed_last_good()

    def _drop_unnamed_last_good(self) -> None:
        """Remove last-good ELFs no record names (left by a save that stopped before its commit)."""
        try:
            keep = self._elf_of(LastGood.from_json(_load(self.last_good_json))).name
        except (ValueError, OSError):
            return  # a damaged record: keep every ELF rather than guess which one it named
        for entry in (*self.root.glob("last-good-*.elf"), self.root / _LEGACY_LAST_GOOD_ELF):
            if entry.name != keep:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    def last_good(self) -> LastGood | None:
        """The last good sketch's record, or None when there is none (or its ELF is gone)."""
        try:
            record = LastGood.from_json(_load(self.last_good_json))
        except (ValueError, OSError):
            return None
        if record is None or not self._elf_of(record).is_file():
            return None
        return record

    # --- settings ----------------------------------------------------------------------------
    def write_settings(self, settings: DaemonSettings) -> None:
        atomic_write(self.settings_path, _dump(settings.to_json()))

    def read_settings(self) -> DaemonSettings:
        try:
            return DaemonSettings.from_json(_load(self.settings_path))
        except (ValueError, OSError):
            return DaemonSettings()

    # --- status ------------------------------------------------------------------------------
    def read_status(self) -> JsonObject | None:
        """The status file as it is (``m4-flasher status --json``)."""
        return _load(self.status_path)

    def status(self) -> Status:
        """The status file, typed; an empty status when there is none yet."""
        return Status.from_json(self.read_status())

    @contextlib.contextmanager
    def _status_locked(self) -> Iterator[None]:
        from x8manager.flasher.lock import open_private_lock  # noqa: PLC0415 - status stays light

        fd = open_private_lock(self._status_lock_path)
        try:
            # Holders keep it for microseconds (read, modify, write), and only root can open it;
            # still never a blocking flock: this runs on the daemon's event loop.
            deadline = time.monotonic() + STATUS_LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise OSError(
                            errno.EAGAIN,
                            f"{self._status_lock_path} stayed locked for {STATUS_LOCK_WAIT} s",
                            str(self._status_lock_path),
                        ) from None
                    time.sleep(0.002)
            yield
        finally:
            os.close(fd)

    def update_status(self, change: Callable[[JsonObject], None]) -> JsonObject:
        """Read the status, let *change* edit it, write it back atomically; returns the new status."""
        with self._status_locked():
            try:
                status = _load(self.status_path) or {}
            except ValueError:
                status = {}  # a damaged status file is rebuilt rather than blocking every flash
            change(status)
            status["schema"] = 1
            status["updated_at"] = utc_now()
            atomic_write(self.status_path, _dump(status))
            return status

    def _last_good_json(self) -> JsonObject | None:
        good = self.last_good()
        return None if good is None else good.to_json()

    def record_outcome(self, record: FlashRecord) -> JsonObject:
        """Make *record* the latest result and add it to the short history."""
        outcome = record.to_json()

        def change(status: JsonObject) -> None:
            earlier = status.get("history")
            history = [outcome, *(earlier if isinstance(earlier, list) else [])][:HISTORY_LENGTH]
            status.update(outcome)
            status["state"] = "idle"
            status.pop("in_progress", None)
            status["history"] = history
            status["last_good"] = self._last_good_json()

        return self.update_status(change)

    def record_in_progress(self, record: FlashRecord, *, openocd_pid: int) -> JsonObject:
        in_progress = {
            "source": record.source,
            "origin": record.origin,
            "sketch": record.sketch.to_json(),
            "started_at": record.started_at,
            "openocd_pid": openocd_pid,
        }

        def change(status: JsonObject) -> None:
            status["state"] = "flashing"
            status["in_progress"] = in_progress
            status["last_good"] = self._last_good_json()

        return self.update_status(change)
