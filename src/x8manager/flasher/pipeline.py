"""One flash, start to finish: spool snapshot → validation → H7 lock → marker → openocd → status.

Both the daemon and the ``flash``/``rollback`` commands go through :class:`Flasher`, so they
validate, lock, record and recover the same way. The in-progress marker exists exactly while
openocd may be writing, and on while a written sketch waits for its health check's verdict;
whoever next takes the H7 lock and finds it left behind knows a flash was interrupted (SIGKILL,
power cut) and recovers first: it flashes the interrupted sketch again (it was validated and it
is what the user asked for last); if that cannot be done, or the sketch was never found healthy,
it restores the last good sketch. Each outcome goes to the status file and the journal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import errno
import hashlib
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from x8manager.flasher.elfcheck import SketchInfo, SketchRejected, validate_sketch
from x8manager.flasher.lock import LockCancelled, LockTimeout, h7_lock
from x8manager.flasher.openocd import Verdict, classify, kill_orphaned_run, run_openocd
from x8manager.flasher.records import AWAITING_HEALTH, FlashRecord, InProgress, LastGood, SketchRef
from x8manager.flasher.safefile import UnsafeFile, read_regular_file
from x8manager.flasher.settings import FlasherSettings
from x8manager.flasher.state import StateDir, utc_now

__all__ = ["FlashResult", "Flasher", "FlasherSettings", "Job", "Outcome"]

log = logging.getLogger(__name__)

# A daemon that dies during every recovery must not loop forever re-flashing the same sketch.
MAX_RECOVERY_ATTEMPTS = 2


class FlashResult(enum.Enum):
    SUCCESS = "success"
    REJECTED = "rejected"  # the file is not a valid sketch; the chip was not touched
    FAILED = "failed"
    TIMEOUT = "timeout"
    SUPERSEDED = "superseded"  # a newer upload replaced it before programming began
    BUSY = "busy"  # the H7 lock stayed taken; the chip was not touched
    INTERRUPTED = "interrupted"  # found afterwards: a flash was killed while it ran
    UNCHANGED = "unchanged"  # --if-changed: the running, verified sketch is this one; no chip write
    UNHEALTHY = "unhealthy"  # flashed, but failed its health check (the last good one is put back)


@dataclass(frozen=True)
class Job:
    """A validated sketch waiting in the spool."""

    spool_path: Path
    info: SketchInfo
    source: str  # "upload", "manual", "rollback", "recovery", "request"
    origin: str  # where it came from (upload path, file given on the command line, ...)
    received_at: str

    @property
    def sketch(self) -> SketchRef:
        return SketchRef(
            sha256=self.info.sha256,
            size=self.info.size,
            flash_bytes=self.info.flash_bytes,
            entry=f"0x{self.info.entry:08x}",
        )


@dataclass(frozen=True)
class Outcome:
    result: FlashResult
    reason: str
    record: FlashRecord

    @property
    def ok(self) -> bool:
        return self.result is FlashResult.SUCCESS


_sequence = itertools.count()
_T = TypeVar("_T")


class Flasher:
    def __init__(self, settings: FlasherSettings) -> None:
        self.settings = settings
        self.state = StateDir(settings.state_dir, settings.status_path)
        self.stopping = False  # set on shutdown: no new retries

    # --- intake ----------------------------------------------------------------------------
    def snapshot(self, path: Path, *, strict: bool = True) -> bytes:
        """Read the file once (bounded); everything later looks only at this copy.

        Raises :class:`UnsafeFile` for a symlink (anywhere in the path when *strict*), a FIFO, a
        device, a hard-linked file: see :mod:`x8manager.flasher.safefile`.
        """
        return read_regular_file(path, self.settings.max_file_bytes, strict=strict)

    def admit(self, data: bytes, *, source: str, origin: str) -> Job:
        """Validate *data* and put it in the spool; raises SketchRejected (recorded by the caller)."""
        info = validate_sketch(data, max_file_bytes=self.settings.max_file_bytes)
        name = f"{next(_sequence):06d}-{os.getpid()}-{info.sha256[:16]}.elf"
        spool_path = self.state.store_in_spool(data, name)
        return Job(spool_path, info, source, origin, utc_now())

    def _untouched(
        self, result: FlashResult, reason: str, *, source: str, origin: str, sketch: SketchRef
    ) -> Outcome:
        """Record an outcome that never reached openocd."""
        now = utc_now()
        record = FlashRecord(
            result=result.value,
            reason=reason,
            source=source,
            origin=origin,
            sketch=sketch,
            started_at=now,
            finished_at=now,
        )
        return self._finish(result, reason, record)

    def reject(self, data: bytes, error: SketchRejected, *, source: str, origin: str) -> Outcome:
        sketch = SketchRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        return self._untouched(
            FlashResult.REJECTED, error.reason, source=source, origin=origin, sketch=sketch
        )

    def refuse_path(self, error: UnsafeFile, *, source: str, origin: str) -> Outcome:
        """Record that the file at *origin* was not read at all (nothing of it is in the record)."""
        reason = f"not read: {error.strerror}"
        return self._untouched(FlashResult.REJECTED, reason, source=source, origin=origin, sketch=SketchRef())

    def spool_failed(self, data: bytes, error: OSError, *, source: str, origin: str) -> Outcome:
        """The upload was valid but could not be put in the spool (disk full): not flashed."""
        reason = f"could not be spooled ({error.strerror or error}): not flashed, the chip was not touched"
        sketch = SketchRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        return self._untouched(FlashResult.FAILED, reason, source=source, origin=origin, sketch=sketch)

    def _with_room(self, what: str, action: Callable[[], _T]) -> _T:
        """Run *action*; if the state directory is full, free the reserve and try once more."""
        try:
            return action()
        except OSError as error:
            if error.errno != errno.ENOSPC or not self.state.release_reserve():
                raise
            log.error("state directory %s is full: released its reserve to %s", self.state.root, what)
            return action()

    # --- flashing ----------------------------------------------------------------------------
    async def flash(
        self,
        job: Job,
        *,
        supersede: asyncio.Event | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Outcome:
        """Flash *job* under the H7 lock (after recovering an interrupted flash, if any).

        *on_wait* is told the holder once if the lock is taken and this flash has to wait.
        """
        purpose = f"m4-flasher {job.source} {job.info.sha256[:12]}"
        try:
            async with h7_lock(
                self.settings.lock_path,
                purpose,
                wait_limit=self.settings.lock_timeout,
                cancel=supersede,
                on_wait=on_wait,
            ):
                return await self.flash_locked(job, supersede)
        except LockCancelled:
            return self._superseded(job, "a newer upload arrived while this one waited for the H7 lock")
        except LockTimeout as error:
            record = self._base_record(job)
            record.result, record.reason, record.finished_at = FlashResult.BUSY.value, str(error), utc_now()
            self._drop_spool(job)
            return self._finish(FlashResult.BUSY, f"the H7 is busy: {error}", record)

    async def flash_locked(
        self, job: Job, supersede: asyncio.Event | None = None, *, promote: bool = True
    ) -> Outcome:
        """Flash *job*; the caller holds the H7 lock. An interrupted flash is recovered first.

        ``promote=False`` (a health check follows): a verified sketch does not become the last
        good one yet, its spool file stays for :meth:`promote` (the caller drops it) and the
        transaction stays open (marker phase ``health``) until the caller ends it with
        :meth:`close_transaction` or :meth:`flash_instead_locked`.
        """
        await self._recover_locked()
        if supersede is not None and supersede.is_set():
            return self._superseded(job, "a newer upload arrived while this one waited")
        return await self._flash_locked(job, supersede, promote=promote)

    def promote(self, job: Job, record: FlashRecord) -> None:
        """Make *job* (flashed with ``promote=False``, now healthy) the last good sketch."""
        good = LastGood(
            sha256=job.info.sha256, size=job.info.size, flashed_at=record.finished_at, origin=job.origin
        )
        self._with_room("keep the last good sketch", lambda: self.state.save_last_good(job.spool_path, good))

    def close_transaction(self) -> None:
        """The health verdict of a ``promote=False`` flash is recorded: nothing is left to recover."""
        try:
            self.state.clear_marker()
        except OSError as error:
            # The next flash (or start) then puts the last good sketch back once more: no harm.
            log.error("could not remove the in-progress marker: %s", error)

    async def flash_instead_locked(self, job: Job) -> Outcome:
        """Flash *job* (the last good sketch) over an open transaction whose sketch failed its
        health check; the caller holds the H7 lock. This flash's own marker replaces the open one,
        so a crash from here on is still recovered, and is not mistaken for one already."""
        return await self._flash_locked(job, None)

    def record_summary(self, result: FlashResult, reason: str, job: Job, **extra: Any) -> Outcome:
        """Record a result that needs no openocd run of its own (unchanged, health verdicts)."""
        record = self._base_record(job)
        record.finished_at = utc_now()
        for key, value in extra.items():
            setattr(record, key, value)
        return self._finish(result, reason, record)

    def last_good_job(self, source: str, origin: str) -> Job | None:
        """A spool copy of the last good sketch, ready to flash (None if there is none usable)."""
        if self.state.last_good() is None:
            return None
        try:
            data = self.state.last_good_elf.read_bytes()
            info = validate_sketch(data, max_file_bytes=self.settings.max_file_bytes)
            path = self.state.store_in_spool(data, f"recovery-{info.sha256[:16]}.elf")
        except (OSError, SketchRejected) as error:
            log.error("the last good sketch cannot be used: %s", error)
            return None
        return Job(path, info, source, origin, utc_now())

    async def recover(self) -> Outcome | None:
        """Take the lock and finish an interrupted flash, if one was left behind."""
        async with h7_lock(
            self.settings.lock_path, "m4-flasher recovery", wait_limit=self.settings.lock_timeout
        ):
            return await self._recover_locked()

    def _base_record(self, job: Job) -> FlashRecord:
        return FlashRecord(
            source=job.source,
            origin=job.origin,
            sketch=job.sketch,
            received_at=job.received_at,
            started_at=utc_now(),
        )

    def _superseded(self, job: Job, reason: str) -> Outcome:
        record = self._base_record(job)
        record.result, record.reason, record.finished_at = FlashResult.SUPERSEDED.value, reason, utc_now()
        self._drop_spool(job)
        return self._finish(FlashResult.SUPERSEDED, reason, record)

    def _drop_spool(self, job: Job) -> None:
        job.spool_path.unlink(missing_ok=True)

    async def _flash_locked(
        self,
        job: Job,
        supersede: asyncio.Event | None,
        recovery_attempts: int = 0,
        *,
        promote: bool = True,
    ) -> Outcome:
        record = self._base_record(job)
        marker = InProgress(
            record=record,
            spool_path=str(job.spool_path),
            pid=os.getpid(),
            recovery_attempts=recovery_attempts,
        )
        # The marker is in place (renamed in) before openocd starts, so a crash of this process
        # always finds it; it is made durable (fsync) right after the spawn, in the time openocd
        # spends on init and reset before it can write any flash (hundreds of ms over bit-banged
        # SWD, against a few ms here). That keeps the fsync off the upload-to-openocd path.
        try:
            self.state.write_marker(marker, durable=False)
        except OSError as error:
            # Without the marker a crash mid-write would go unnoticed: do not start openocd.
            self._drop_spool(job)
            reason = (
                f"the state directory cannot record the flash ({error.strerror or error}): "
                "not flashed, the chip was not touched"
            )
            record.result, record.reason, record.finished_at = FlashResult.FAILED.value, reason, utc_now()
            return self._finish(FlashResult.FAILED, reason, record)
        try:
            return await self._run_and_record(job, supersede, record, marker, promote=promote)
        finally:
            if promote:
                self._drop_spool(job)
            self.state.ensure_reserve()

    async def _run_and_record(
        self,
        job: Job,
        supersede: asyncio.Event | None,
        record: FlashRecord,
        marker: InProgress,
        *,
        promote: bool,
    ) -> Outcome:
        settings = self.settings
        argv = settings.openocd.argv(job.spool_path)

        def started(pid: int) -> None:
            try:
                self.state.make_durable(job.spool_path)  # recovery after a power cut needs the sketch
                self.state.write_marker(dataclasses.replace(marker, openocd_pid=pid))
                self.state.record_in_progress(dataclasses.replace(record), openocd_pid=pid)
            except OSError as error:
                # The marker from before the spawn stays: a crash is still found afterwards.
                log.warning("could not record the running flash: %s", error)

        log.info(
            "flashing %s sketch %s (%s)",
            job.source,
            job.info.sha256[:12],
            job.info.describe(),
            extra={"journal": {"SKETCH_SHA256": job.info.sha256, "FLASH_SOURCE": job.source}},
        )
        attempts = 0
        while True:
            attempts += 1
            run = await run_openocd(
                argv,
                time_limit=settings.attempt_timeout,
                cancel=supersede,
                on_start=started,
            )
            if record.openocd_spawned_at is None:
                record.openocd_spawned_at = run.spawned_at or None
            verdict = classify(run)
            record.attempts = attempts
            record.openocd_exit = run.exit_code
            record.openocd_log_tail = list(run.tail)
            record.openocd_seconds = round(run.duration, 3)
            if verdict.verdict is Verdict.TRANSIENT and attempts <= settings.retries and not self.stopping:
                log.warning(
                    "attempt %d of %d failed, retrying: %s", attempts, settings.retries + 1, verdict.reason
                )
                await asyncio.sleep(settings.retry_delay * attempts)
                continue
            break
        result = {
            Verdict.SUCCESS: FlashResult.SUCCESS,
            Verdict.TIMEOUT: FlashResult.TIMEOUT,
            Verdict.CANCELLED: FlashResult.SUPERSEDED,
        }.get(verdict.verdict, FlashResult.FAILED)
        record.result, record.reason, record.finished_at = result.value, verdict.reason, utc_now()
        if result is FlashResult.SUCCESS and promote:
            good = LastGood(
                sha256=job.info.sha256, size=job.info.size, flashed_at=record.finished_at, origin=job.origin
            )
            try:
                self._with_room(
                    "keep the last good sketch", lambda: self.state.save_last_good(job.spool_path, good)
                )
            except OSError as error:
                # The chip runs the new sketch whatever the disk says: report that, keep the old one.
                record.reason += (
                    f"; but it could not be kept as the last good sketch ({error.strerror or error}): "
                    "the previous last good sketch stays"
                )
                record.last_good_saved = False
        # Order matters for crash safety: the outcome is on disk before the marker goes away.
        outcome = self._finish(result, record.reason, record)
        try:
            if result is FlashResult.SUCCESS and not promote:
                # A health check follows: the transaction stays open (renamed over, never a moment
                # without a marker) until its verdict, so a crash during the check is found and
                # the last good sketch put back, instead of the unchecked one running as if good.
                self.state.write_marker(dataclasses.replace(marker, phase=AWAITING_HEALTH, openocd_pid=None))
            else:
                self.state.clear_marker()
        except OSError as error:
            log.error("could not update the in-progress marker: %s", error)
        return outcome

    def _finish(self, result: FlashResult, reason: str, record: FlashRecord) -> Outcome:
        """Log the outcome to the journal, then record it in the status (freeing the reserve if full).

        Never raises: what happened to the chip must reach the caller even when the disk is full.
        """
        record.result, record.reason = result.value, reason
        self._journal(result, record)
        try:
            self._with_room("record the outcome", lambda: self.state.record_outcome(record))
        except (OSError, ValueError) as error:
            log.error(
                "could not record the outcome in %s: %s (the journal line above is the record)",
                self.state.status_path,
                error,
            )
        return Outcome(result, reason, record)

    def _journal(self, result: FlashResult, record: FlashRecord) -> None:
        fields = {
            "SKETCH_SHA256": record.sketch.sha256,
            "SKETCH_SIZE": "" if record.sketch.size is None else record.sketch.size,
            "FLASH_RESULT": result.value,
            "FLASH_REASON": record.reason,
            "FLASH_SOURCE": record.source,
            "FLASH_ATTEMPTS": record.attempts,
            "OPENOCD_EXIT": "" if record.openocd_exit is None else record.openocd_exit,
        }
        level = logging.INFO if result in (FlashResult.SUCCESS, FlashResult.SUPERSEDED) else logging.ERROR
        log.log(
            level,
            "sketch %s: %s: %s",
            record.sketch.sha256[:12],
            result.value,
            record.reason,
            extra={"journal": fields},
        )

    # --- recovery ----------------------------------------------------------------------------
    async def _recover_locked(self) -> Outcome | None:
        marker = self.state.read_marker()
        if marker is None:
            return None
        orphan, spool_path = marker.openocd_pid, marker.spool_path
        if orphan is not None and spool_path and kill_orphaned_run(orphan, spool_path):
            # Without systemd's cgroup clean-up the dead flasher's openocd may still drive the pins.
            log.warning("killed openocd (pid %d) left running by the interrupted flash", orphan)
        interrupted = marker.record
        sha = interrupted.sketch.sha256 or "unknown"
        attempts = marker.recovery_attempts + 1
        if marker.awaiting_health:
            reason = (
                f"sketch {sha[:12]} ({interrupted.source or '?'}, started {interrupted.started_at or '?'}) "
                "was written and verified, but the flasher stopped during its health check: "
                "never found healthy, it is replaced by the last good sketch"
            )
        else:
            reason = (
                f"the flash of sketch {sha[:12]} ({interrupted.source or '?'}, started "
                f"{interrupted.started_at or '?'}) was interrupted; the M4 flash content was unknown"
            )
        record = FlashRecord(
            result=FlashResult.INTERRUPTED.value,
            reason=reason,
            source=interrupted.source,
            origin=interrupted.origin,
            sketch=interrupted.sketch,
            started_at=interrupted.started_at,
            finished_at=utc_now(),
        )
        self._finish(FlashResult.INTERRUPTED, reason, record)
        candidates: list[tuple[Path, str]] = []
        if spool_path and attempts <= MAX_RECOVERY_ATTEMPTS and not marker.awaiting_health:
            candidates.append((Path(spool_path), "the interrupted sketch"))
        if self.state.last_good() is not None and attempts <= MAX_RECOVERY_ATTEMPTS + 1:
            candidates.append((self.state.last_good_elf, "the last good sketch"))
        for path, what in candidates:
            try:
                data = path.read_bytes()
                info = validate_sketch(data, max_file_bytes=self.settings.max_file_bytes)
                if path != self.state.last_good_elf and info.sha256 != sha:
                    # A power cut before the spool copy was fsync-ed may leave it damaged.
                    raise SketchRejected(f"the spooled copy is damaged (sha256 {info.sha256[:12]})")
            except (OSError, SketchRejected) as error:
                log.warning("cannot restore %s from %s: %s", what, path, error)
                continue
            flash_from = path
            if path == self.state.last_good_elf:
                # Flash from a spool copy: the last-good file is replaced when the flash succeeds.
                flash_from = self.state.store_in_spool(data, f"recovery-{info.sha256[:16]}.elf")
            job = Job(flash_from, info, "recovery", f"{what} ({interrupted.origin or '?'})", utc_now())
            log.warning("recovering from an interrupted flash: flashing %s %s", what, info.sha256[:12])
            outcome = await self._flash_locked(job, None, recovery_attempts=attempts)
            if outcome.ok:
                self._clean_spool()
                return outcome
        self.state.clear_marker()
        self._clean_spool()
        if marker.awaiting_health:
            reason = (
                f"no last good sketch could be put back: the M4 runs sketch {sha[:12]}, "
                "whose health check never finished"
            )
        else:
            reason = "recovery failed: no sketch could be restored; the M4 flash content is unknown"
        failed = dataclasses.replace(record, source="recovery", finished_at=utc_now())
        return self._finish(FlashResult.FAILED, reason, failed)

    def _clean_spool(self) -> None:
        """Remove spool files nobody will flash: recovery copies, and uploads of dead processes.

        The sketch named by an in-progress marker stays: recovery needs it.
        """
        marker = self.state.read_marker()
        keep = marker.spool_path if marker is not None else ""
        for entry in self.state.spool.glob("*.elf"):
            if str(entry) == keep:
                continue
            if entry.name.startswith("recovery-") or not _owner_alive(entry.name):
                entry.unlink(missing_ok=True)

    def sweep_spool(self) -> None:
        """Start-up housekeeping: drop snapshots that a crashed process left behind."""
        self._clean_spool()


def _owner_alive(spool_name: str) -> bool:
    """Spool names are ``SEQ-PID-SHA.elf``; a file whose process is gone is an orphan."""
    parts = spool_name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
