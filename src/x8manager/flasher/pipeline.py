"""One flash, start to finish: spool snapshot → validation → H7 lock → marker → openocd → status.

Both the daemon and the ``flash``/``rollback`` commands go through :class:`Flasher`, so they
validate, lock, record and recover the same way; the request socket's health-checked transaction
is :meth:`Flasher.flash_checked`, whole. The in-progress marker exists exactly while a transaction
is open: openocd may be writing, or a written sketch waits for (or just passed) its health check.
Whoever next takes the H7 lock and finds it left behind knows a flash was interrupted (SIGKILL,
power cut) and finishes it first, from what the marker carries (:meth:`Flasher._recover_locked`):
an interrupted plain flash is written again (it was validated and it is what the user asked for
last); a sketch that owes a health check it has not passed is never kept: the last good sketch
goes back. Each outcome goes to the status file and the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from x8manager.common.ratelimit import RateLimitedLog
from x8manager.flasher.elfcheck import SketchInfo, SketchRejected, validate_sketch
from x8manager.flasher.health import HealthResult, run_health_check
from x8manager.flasher.lock import LockCancelled, LockTimeout, h7_lock
from x8manager.flasher.openocd import Verdict, classify, kill_orphaned_run, run_openocd
from x8manager.flasher.records import (
    AWAITING_HEALTH,
    HEALTHY,
    FlashRecord,
    HealthCheck,
    InProgress,
    LastGood,
    SketchRef,
)
from x8manager.flasher.safefile import UnsafeFile, read_regular_file
from x8manager.flasher.settings import FlasherSettings
from x8manager.flasher.state import StateDir, utc_now

__all__ = ["Events", "FlashResult", "Flasher", "FlasherSettings", "Job", "Outcome"]

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
    # Programmed and verified, its health check to come: the chip runs it, but it is no success
    # until the check's verdict (recorded next) says so.
    WRITTEN = "written"


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
JsonObject = dict[str, Any]
# What a transaction tells its client as it goes: ``events("health", check=...)``.
Events = Callable[..., None]


async def _checked(check: HealthCheck) -> HealthResult:
    """Run *check*; one that cannot run at all is a failed check (roll back), never an error."""
    try:
        return await run_health_check(check)
    except Exception as error:
        log.exception("the health check could not run")
        return HealthResult(False, f"the health check could not run: {error}", 0.0)


class Flasher:
    def __init__(self, settings: FlasherSettings) -> None:
        self.settings = settings
        self.state = StateDir(settings.state_dir, settings.status_path)
        self.stopping = False  # set on shutdown: no new retries
        self._rejections = RateLimitedLog(log)

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

    def admit_received(self, received: Path, *, source: str, origin: str) -> Job | Outcome:
        """Validate a request body received into the spool at *received* and give it its spool
        name (no second copy); a rejected or unspoolable body is recorded and its Outcome returned.

        The body is read into memory only here, for the check, one at a time (this does not
        yield to the event loop), and is dropped before the flash: the transaction holds a path.
        """
        try:
            # The spool is the daemon's own (0700): one read, one allocation of the body's size.
            with open(received, "rb", buffering=0) as body:
                data = body.read(self.settings.max_file_bytes + 1) or b""
            info = validate_sketch(data, max_file_bytes=self.settings.max_file_bytes)
        except SketchRejected as error:
            received.unlink(missing_ok=True)
            return self.reject(data, error, source=source, origin=origin)
        except OSError as error:
            received.unlink(missing_ok=True)
            return self._untouched(
                FlashResult.FAILED,
                f"the received sketch could not be read back ({error}): not flashed",
                source=source,
                origin=origin,
                sketch=SketchRef(),
            )
        spool_path = self.state.spool_file(f"{next(_sequence):06d}-{os.getpid()}-{info.sha256[:16]}.elf")
        os.replace(received, spool_path)
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
        try:
            async with self._h7_lock(job, cancel=supersede, on_wait=on_wait):
                await self._recover_locked()
                if supersede is not None and supersede.is_set():
                    return self._superseded(job, "a newer upload arrived while this one waited")
                return await self._flash_locked(job, supersede)
        except LockCancelled:
            return self._superseded(job, "a newer upload arrived while this one waited for the H7 lock")
        except LockTimeout as error:
            record = self._base_record(job)
            record.result, record.reason, record.finished_at = FlashResult.BUSY.value, str(error), utc_now()
            self._drop_spool(job)
            return self._finish(FlashResult.BUSY, f"the H7 is busy: {error}", record)

    async def flash_checked(
        self, job: Job, check: HealthCheck | None, events: Events, *, if_changed: bool = False
    ) -> Outcome:
        """The request API's transaction, whole, under one hold of the H7 lock.

        Recover an interrupted flash, then (``if_changed``: unless the M4 already runs this
        verified sketch) write *job*; with a *check*, ask the sketch, and make it the last good
        one only when it answers, else put the last good sketch back before the lock is released.
        The in-progress marker carries the check and the previous last good sketch from before
        openocd starts until the verdict is recorded, so a flasher killed at any step is finished
        by the next holder of the lock without ever keeping an unchecked sketch (see
        :meth:`_recover_locked`). *events* hears ``waiting``, ``flashing``, ``health`` and
        ``rollback`` (with keyword fields), for the client. The spool file is dropped at the end.
        """

        def waiting(holder: str) -> None:
            events("waiting", reason=f"waiting for the H7 lock, held by {holder}")

        try:
            async with self._h7_lock(job, on_wait=waiting):
                await self._recover_locked()
                if if_changed and self._runs_already(job):
                    return await self._unchanged(job, check, events)
                events("flashing", sha256=job.info.sha256)
                if check is None:
                    return await self._flash_locked(job, None)
                return await self._checked_locked(job, check, events)
        except LockTimeout as error:
            return self._summary(FlashResult.BUSY, f"the H7 is busy: {error}", job)
        finally:
            self._drop_spool(job)

    def _h7_lock(
        self,
        job: Job,
        *,
        cancel: asyncio.Event | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[None]:
        purpose = f"m4-flasher {job.source} {job.info.sha256[:12]}"
        return h7_lock(
            self.settings.lock_path,
            purpose,
            wait_limit=self.settings.lock_timeout,
            cancel=cancel,
            on_wait=on_wait,
        )

    def _runs_already(self, job: Job) -> bool:
        """The M4 runs *job*'s sketch, verified, and no transaction is left open."""
        running = self.state.status().running_sha256()
        return running == job.info.sha256 and self.state.read_marker() is None

    async def _unchanged(self, job: Job, check: HealthCheck | None, events: Events) -> Outcome:
        reason = "the M4 already runs this verified sketch: not flashed"
        if check is None:
            return self._summary(FlashResult.UNCHANGED, reason, job)
        events("health", check=check.describe())
        health = await _checked(check)
        result = FlashResult.UNCHANGED if health.healthy else FlashResult.UNHEALTHY
        return self._summary(result, f"{reason}; health: {health.reason}", job, health=health.to_json())

    async def _checked_locked(self, job: Job, check: HealthCheck, events: Events) -> Outcome:
        """Write *job*, check it, then keep it or put the last good sketch back."""
        written = await self._flash_locked(job, None, check=check, previous=self.state.last_good())
        if written.result is not FlashResult.WRITTEN:
            return written
        # The marker says "health" from here until a verdict is recorded: a flasher killed now
        # is found by the next holder of the lock, which puts the last good sketch back.
        events("health", check=check.describe())
        health = await _checked(check)
        if health.healthy:
            return self._settle_healthy(job, health)
        return await self._roll_back(job, health, events)

    def _settle_healthy(self, job: Job, health: HealthResult) -> Outcome:
        """The check passed: record that first (marker phase ``healthy``), then make the sketch
        the last good one (one rename), record the verdict and close the transaction. Killed in
        between, recovery finishes these same steps without touching the chip."""
        reason = f"flashed, verified and healthy: {health.reason}"
        try:
            marker = self.state.read_marker()
            if marker is not None:
                passed = dataclasses.replace(marker.record, health=health.to_json())
                self.state.write_marker(dataclasses.replace(marker, phase=HEALTHY, record=passed))
        except (OSError, ValueError) as error:
            # Unrecorded, a crash during the promotion would look like one during the check: the
            # previous last good sketch stays rather than a last good one nobody could vouch for.
            log.error("could not record the passed health check in the marker: %s", error)
            reason += f"; but it could not be kept as the last good sketch ({error}): the previous one stays"
            verdict = self._summary(FlashResult.SUCCESS, reason, job, health=health.to_json())
            self._close_transaction()
            return verdict
        return self._keep_healthy(job, reason, health.to_json())

    def _keep_healthy(self, job: Job, reason: str, health: JsonObject | None) -> Outcome:
        """Make the checked sketch of *job* the last good one, record SUCCESS, clear the marker."""
        good = LastGood(sha256=job.info.sha256, size=job.info.size, flashed_at=utc_now(), origin=job.origin)
        try:
            self._with_room(
                "keep the last good sketch", lambda: self.state.save_last_good(job.spool_path, good)
            )
        except OSError as error:
            reason += (
                f"; but it could not be kept as the last good sketch ({error.strerror or error}): "
                "the previous one stays"
            )
        verdict = self._summary(FlashResult.SUCCESS, reason, job, health=health)
        self._close_transaction()
        return verdict

    async def _roll_back(self, job: Job, health: HealthResult, events: Events) -> Outcome:
        """The check failed: flash the last good sketch back, then record the verdict. The
        rollback's own marker carries that verdict, so recovery records it if this is cut short."""
        good = self.last_good_job("rollback", f"health check of {job.info.sha256[:12]} failed")
        if good is None:
            reason = f"{health.reason}; no last good sketch to put back: the M4 runs the unhealthy sketch"
            verdict = self._summary(FlashResult.UNHEALTHY, reason, job, health=health.to_json())
            self._close_transaction()  # recorded: the unhealthy sketch stays, nothing to recover
            return verdict
        pending = self._base_record(job)
        pending.result, pending.health = FlashResult.UNHEALTHY.value, health.to_json()
        pending.reason = (
            f"{health.reason}; the flasher stopped while putting back last good sketch "
            f"{good.info.sha256[:12]}"
        )
        events("rollback", sha256=good.info.sha256)
        # This flash's marker replaces the open one (one rename), so a crash from here on is still
        # recovered, and is not mistaken for one already.
        back = await self._flash_locked(good, None, verdict=pending)
        restored = (
            f"last good sketch {good.info.sha256[:12]} restored"
            if back.ok
            else f"restoring last good sketch {good.info.sha256[:12]} failed: {back.reason}"
        )
        verdict = self._summary(
            FlashResult.UNHEALTHY, f"{health.reason}; {restored}", job, health=health.to_json()
        )
        self._close_transaction()
        return verdict

    def _close_transaction(self) -> None:
        """The verdict is recorded: nothing is left to recover."""
        try:
            self.state.clear_marker()
        except OSError as error:
            # The next flash (or start) then finishes the transaction once more: no harm.
            log.error("could not remove the in-progress marker: %s", error)

    def _summary(self, result: FlashResult, reason: str, job: Job, **extra: Any) -> Outcome:
        """Record a result that needs no openocd run of its own (unchanged, busy, health verdicts)."""
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
        check: HealthCheck | None = None,
        previous: LastGood | None = None,
        verdict: FlashRecord | None = None,
    ) -> Outcome:
        """One write of *job* under the lock the caller holds, bracketed by the in-progress marker.

        Without a *check* a verified sketch becomes the last good one and the marker goes. With
        one, nothing is promoted: the marker stays, in phase ``health``, carrying the check and
        the *previous* last good sketch, for the caller's verdict (or recovery). *verdict*: this is
        a rollback, and that is the unhealthy sketch's record, should recovery have to write it.
        """
        record = self._base_record(job)
        marker = InProgress(
            record=record,
            spool_path=str(job.spool_path),
            pid=os.getpid(),
            recovery_attempts=recovery_attempts,
            check=check,
            previous_last_good=previous,
            verdict=verdict,
        )
        # The marker is in place (renamed in) before openocd starts, so a crash of this process
        # always finds it; it is made durable (fsync) right after the spawn, in the time openocd
        # spends on init and reset before it can write any flash (hundreds of ms over bit-banged
        # SWD, against a few ms here). That keeps the fsync off the upload-to-openocd path. A
        # checked flash makes it durable at once: it is what keeps the unchecked sketch from
        # being kept after a crash.
        try:
            self.state.write_marker(marker, durable=check is not None)
        except OSError as error:
            # Without the marker a crash mid-write would go unnoticed: do not start openocd.
            if check is None:
                self._drop_spool(job)
            reason = (
                f"the state directory cannot record the flash ({error.strerror or error}): "
                "not flashed, the chip was not touched"
            )
            record.result, record.reason, record.finished_at = FlashResult.FAILED.value, reason, utc_now()
            return self._finish(FlashResult.FAILED, reason, record)
        try:
            result = await self._attempts(job, supersede, record, marker)
            return self._settle(job, result, record, marker)
        finally:
            if check is None:
                self._drop_spool(job)
            self.state.ensure_reserve()

    async def _attempts(
        self, job: Job, supersede: asyncio.Event | None, record: FlashRecord, marker: InProgress
    ) -> FlashResult:
        """Run openocd, again after a transient probe error (bounded); fill *record* in."""
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
                argv, time_limit=settings.attempt_timeout, cancel=supersede, on_start=started
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
        return result

    def _settle(self, job: Job, result: FlashResult, record: FlashRecord, marker: InProgress) -> Outcome:
        """After the last attempt: promote a verified plain flash, record, then end (or, for a
        checked flash, move on) the transaction, in that order, for crash safety."""
        checked = marker.check is not None
        if result is FlashResult.SUCCESS and not checked:
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
        if result is FlashResult.SUCCESS and checked:
            result = FlashResult.WRITTEN
            record.reason += "; its health check follows"
        outcome = self._finish(result, record.reason, record)
        try:
            if result is FlashResult.WRITTEN:
                # A health check follows: the transaction stays open (renamed over, never a moment
                # without a marker) until its verdict, so a crash during the check is found and
                # the last good sketch put back, instead of the unchecked one running as if good.
                self.state.write_marker(dataclasses.replace(marker, phase=AWAITING_HEALTH, openocd_pid=None))
            elif marker.verdict is None:
                self.state.clear_marker()
            # A rollback's marker stays until the caller has recorded the verdict it carries.
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
        fine = (FlashResult.SUCCESS, FlashResult.SUPERSEDED, FlashResult.WRITTEN)
        level = logging.INFO if result in fine else logging.ERROR
        args = (record.sketch.sha256[:12], result.value, record.reason)
        if result is FlashResult.REJECTED:
            # Files anyone may hand over, as fast as they like, that never reach the chip: at most
            # one line every few seconds (the status file keeps each of them).
            self._rejections.log(level, "rejected", "sketch %s: %s: %s", *args, extra={"journal": fields})
            return
        log.log(level, "sketch %s: %s: %s", *args, extra={"journal": fields})

    # --- recovery ----------------------------------------------------------------------------
    async def _recover_locked(self) -> Outcome | None:
        """Finish the transaction an in-progress marker says was cut short (the caller holds the lock).

        The policy, by what the marker says:

        - a plain flash (no health check) was writing: flash that sketch again (it was validated
          and is what the user asked for last), else the last good sketch;
        - a sketch that owes a health check was writing, or was written and being checked: it is
          never kept unchecked. Its outcome is recorded ``interrupted`` and the last good sketch
          is put back (the check is not run again: its client is gone, and a verdict nobody
          waits for should not decide what the M4 runs);
        - the check had passed (phase ``healthy``): make it the last good sketch and record the
          success, as the flasher would have; the chip is not touched;
        - a rollback was writing: flash the last good sketch again, then record the unhealthy
          sketch's verdict the marker carries.
        """
        marker = self.state.read_marker()
        if marker is None:
            return None
        orphan, spool_path = marker.openocd_pid, marker.spool_path
        if orphan is not None and spool_path and kill_orphaned_run(orphan, spool_path):
            # Without systemd's cgroup clean-up the dead flasher's openocd may still drive the pins.
            log.warning("killed openocd (pid %d) left running by the interrupted flash", orphan)
        if marker.check is not None and marker.phase == HEALTHY:
            return self._recover_healthy(marker)
        interrupted = marker.record
        sha = interrupted.sketch.sha256 or "unknown"
        attempts = marker.recovery_attempts + 1
        what = f"sketch {sha[:12]} ({interrupted.source or '?'}, started {interrupted.started_at or '?'})"
        if marker.awaiting_health:
            reason = (
                f"{what} was written and verified, but the flasher stopped during its health check: "
                "never found healthy, it is replaced by the last good sketch"
            )
        elif marker.unchecked:
            reason = (
                f"the flash of {what} was interrupted before its health check could run: "
                "a sketch is never kept unchecked, the last good sketch is put back"
            )
        else:
            reason = f"the flash of {what} was interrupted; the M4 flash content was unknown"
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
        if spool_path and attempts <= MAX_RECOVERY_ATTEMPTS and not marker.unchecked:
            candidates.append((Path(spool_path), "the interrupted sketch"))
        if self.state.last_good() is not None and attempts <= MAX_RECOVERY_ATTEMPTS + 1:
            candidates.append((self.state.last_good_elf, "the last good sketch"))
        for path, what in candidates:
            job = self._recovery_job(path, what, sha, interrupted.origin)
            if job is None:
                continue
            log.warning("recovering from an interrupted flash: flashing %s %s", what, job.info.sha256[:12])
            outcome = await self._flash_locked(job, None, recovery_attempts=attempts, verdict=marker.verdict)
            if outcome.ok:
                self._record_carried_verdict(marker, outcome)
                self._clean_spool()
                return outcome
        self._record_carried_verdict(marker, None)
        self.state.clear_marker()
        self._clean_spool()
        if marker.awaiting_health:
            reason = (
                f"no last good sketch could be put back: the M4 runs sketch {sha[:12]}, "
                "whose health check never finished"
            )
        elif marker.unchecked:
            reason = (
                f"no last good sketch could be put back: the M4 may hold sketch {sha[:12]} partly "
                "written, never checked"
            )
        else:
            reason = "recovery failed: no sketch could be restored; the M4 flash content is unknown"
        failed = dataclasses.replace(record, source="recovery", finished_at=utc_now())
        return self._finish(FlashResult.FAILED, reason, failed)

    def _recovery_job(self, path: Path, what: str, sha: str, origin: str) -> Job | None:
        """A spool job of the sketch at *path* for recovery to flash; None if it is unusable."""
        try:
            data = path.read_bytes()
            info = validate_sketch(data, max_file_bytes=self.settings.max_file_bytes)
            if path != self.state.last_good_elf and info.sha256 != sha:
                # A power cut before the spool copy was fsync-ed may leave it damaged.
                raise SketchRejected(f"the spooled copy is damaged (sha256 {info.sha256[:12]})")
            flash_from = path
            if path == self.state.last_good_elf:
                # Flash from a spool copy: the last-good file is replaced when the flash succeeds.
                flash_from = self.state.store_in_spool(data, f"recovery-{info.sha256[:16]}.elf")
        except (OSError, SketchRejected) as error:
            log.warning("cannot restore %s from %s: %s", what, path, error)
            return None
        return Job(flash_from, info, "recovery", f"{what} ({origin or '?'})", utc_now())

    def _record_carried_verdict(self, marker: InProgress, restored: Outcome | None) -> None:
        """A rollback was cut short: record the unhealthy sketch's verdict it carried, then close."""
        if marker.verdict is None:
            return
        done = "restored by recovery" if restored is not None else "could not be restored"
        verdict = dataclasses.replace(marker.verdict, finished_at=utc_now())
        self._finish(FlashResult.UNHEALTHY, f"{verdict.reason}; the last good sketch was {done}", verdict)
        self._close_transaction()

    def _recover_healthy(self, marker: InProgress) -> Outcome:
        """The check had passed when the flasher stopped: keep the sketch, as it would have."""
        interrupted = marker.record
        reason = "flashed, verified and healthy (the flasher stopped while recording it)"
        job = (
            self._recovery_job(
                Path(marker.spool_path), "the checked sketch", interrupted.sketch.sha256, interrupted.origin
            )
            if marker.spool_path
            else None
        )
        if job is not None:
            job = dataclasses.replace(job, source=interrupted.source, origin=interrupted.origin)
            outcome = self._keep_healthy(job, reason, interrupted.health)
            self._clean_spool()
            return outcome
        reason += "; but its spooled copy is gone, so the previous last good sketch stays"
        record = dataclasses.replace(interrupted, finished_at=utc_now())
        outcome = self._finish(FlashResult.SUCCESS, reason, record)
        self._close_transaction()
        self._clean_spool()
        return outcome

    def _clean_spool(self) -> None:
        """Remove spool files nobody will flash: recovery copies, and uploads of dead processes.

        The sketch named by an in-progress marker stays: recovery needs it.
        """
        marker = self.state.read_marker()
        keep = marker.spool_path if marker is not None else ""
        for entry in (*self.state.spool.glob("*.elf"), *self.state.spool.glob("*.part")):
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
