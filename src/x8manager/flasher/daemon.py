"""The ``m4-flasher daemon``: watch the upload path, flash the newest complete upload, one at a time.

Each finished upload (close-write or rename onto the watched name) is copied into the spool at
once and validated there, so later writes to the upload path cannot change what gets flashed.
Uploads that arrive while one is waiting replace it; an upload that arrives while openocd is
still connecting (before ``** Programming Started **``) stops that run, because the newer file
is what the user wants on the chip. Once programming has begun it finishes, then the newest
upload is flashed. An upload with the sketch being flashed right now (one burst of writes is
often read more than once) is already on its way and changes nothing. A rejected upload
replaces any waiting one but never stops a running flash.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
import signal
from pathlib import Path

from x8manager.common.ratelimit import RateLimitedLog
from x8manager.common.systemd import notify_ready, notify_status, notify_stopping
from x8manager.flasher.elfcheck import SketchRejected
from x8manager.flasher.inotify import FileWatcher, InotifyError
from x8manager.flasher.lock import LockTimeout, open_private_lock
from x8manager.flasher.pipeline import Flasher, FlashResult, Job, Outcome
from x8manager.flasher.records import DaemonSettings
from x8manager.flasher.request import RequestLimits, RequestServer
from x8manager.flasher.safefile import UnsafeFile

__all__ = ["FlasherDaemon", "StartupError"]

log = logging.getLogger(__name__)

UPLOAD_RETRY_SECONDS = 0.5
_OUT_OF_ROOM = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)


class StartupError(RuntimeError):
    """The daemon cannot do its job with this configuration; it exits non-zero."""


class FlasherDaemon:
    def __init__(
        self,
        flasher: Flasher,
        watch_path: Path,
        socket_path: Path | None = None,
        socket_group: int | None = None,
        request_limits: RequestLimits | None = None,
    ) -> None:
        self.flasher = flasher
        self.watch_path = Path(os.path.abspath(watch_path))
        self.socket_path = socket_path
        self.socket_group = socket_group
        self.request_limits = request_limits
        self._pending: Job | None = None
        self._wakeup = asyncio.Event()
        self._supersede: asyncio.Event | None = None  # belongs to the job being flashed
        self._flashing_sha256: str | None = None
        self._stop = asyncio.Event()
        self._watcher: FileWatcher | None = None
        self.outcomes: list[Outcome] = []  # for tests and the bench (most recent last)
        self.flashing = False
        self._log = RateLimitedLog(log)

    # --- start-up -----------------------------------------------------------------------------
    def check_configuration(self) -> None:
        """Everything that would make every flash fail is a start-up error."""
        settings = self.flasher.settings
        try:
            self.flasher.state.prepare()
        except OSError as error:
            raise StartupError(f"state directory {settings.state_dir} is not usable: {error}") from error
        program = settings.openocd.program
        if shutil.which(program) is None:
            raise StartupError(f"openocd program {program!r} not found or not executable")
        missing = settings.openocd.missing_files()
        if missing:
            raise StartupError(f"openocd config file(s) missing: {', '.join(missing)}")
        try:
            settings.openocd.argv(self.flasher.state.spool_file("probe.elf"))
        except ValueError as error:
            raise StartupError(f"state directory {settings.state_dir} is not usable: {error}") from error
        try:
            settings.lock_path.parent.mkdir(parents=True, exist_ok=True)
            os.close(open_private_lock(settings.lock_path))
        except OSError as error:
            raise StartupError(f"H7 lock {settings.lock_path} cannot be opened: {error}") from error

    def _record_settings(self) -> None:
        settings = self.flasher.settings
        self.flasher.state.write_settings(
            DaemonSettings(
                pid=os.getpid(),
                watch=str(self.watch_path),
                openocd=settings.openocd.program,
                config_dir=str(settings.openocd.config_dir),
                adapter_config=settings.openocd.adapter_config,
                target_config=settings.openocd.target_config,
                status=str(self.flasher.state.status_path),
                lock=str(settings.lock_path),
                timeout=settings.attempt_timeout,
                retries=settings.retries,
                socket=str(self.socket_path) if self.socket_path else None,
            )
        )

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; raises StartupError before readiness if something is wrong."""
        self.check_configuration()
        self._record_settings()
        self._watcher = FileWatcher(self.watch_path, self._on_change)
        try:
            self._watcher.start()
        except InotifyError as error:
            raise StartupError(f"cannot watch {self.watch_path}: {error}") from error
        requests = None
        if self.socket_path is not None:
            requests = RequestServer(
                self.flasher, self.socket_path, group=self.socket_group, limits=self.request_limits
            )
            requests.on_outcome = self._request_done
            try:
                await requests.start()
            except OSError as error:
                self._watcher.close()
                raise StartupError(f"cannot serve requests on {self.socket_path}: {error}") from error
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        worker = asyncio.create_task(self._worker())
        notify_ready(f"watching {self.watch_path}")
        log.info("ready: watching %s", self.watch_path)
        try:
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({worker, stop}, return_when=asyncio.FIRST_COMPLETED)
            if worker in done:
                worker.result()  # a crashed worker is a crashed daemon
            notify_stopping()
            log.info("stopping")
            self.flasher.stopping = True
            self._watcher.close()
            if self.flashing:
                log.info("letting the running flash finish (bounded by its time limit)")
            if self._pending is not None:
                # Still at the upload path and not recorded as handled: the next start flashes it.
                self._pending.spool_path.unlink(missing_ok=True)
                self._pending = None
            if self._supersede is not None:
                self._supersede.set()  # a run still connecting is stopped; one that writes finishes
            self._wakeup.set()
            if requests is not None:
                await requests.close()
            await worker
        finally:
            self._watcher.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    # --- intake -------------------------------------------------------------------------------
    def _on_change(self, reason: str) -> None:
        try:
            data = self.flasher.snapshot(self.watch_path)
        except UnsafeFile as error:
            # A symlink, FIFO, terminal, hard link...: never opened for reading, said in the status.
            log.warning("upload path %s refused (%s): %s", self.watch_path, reason, error.strerror)
            self._replace_pending(None)
            self._record_refusal(error)
            return
        except OSError as error:
            if self._retry_later(error, "read", reason):
                return
            # Gone again (or unreadable) before we looked: a later event will bring the next version.
            log.warning("upload at %s could not be read (%s): %s", self.watch_path, reason, error)
            return
        log.debug("upload seen (%s): %d bytes", reason, len(data))
        self._admit(data, reason)

    def _retry_later(self, error: OSError, what: str, reason: str) -> bool:
        """Out of descriptors or memory for a moment (a flood of connections): the upload is there
        and no later event may come, so look at it again shortly rather than lose it."""
        if error.errno not in _OUT_OF_ROOM:
            return False
        self._log.warning(
            "upload-retry",
            "upload at %s cannot be %s yet (%s): trying again",
            self.watch_path,
            what,
            error.strerror,
        )
        asyncio.get_running_loop().call_later(UPLOAD_RETRY_SECONDS, self._on_change, reason)
        return True

    def _admit(self, data: bytes, reason: str) -> None:
        try:
            job = self.flasher.admit(data, source="upload", origin=str(self.watch_path))
        except SketchRejected as error:
            self._replace_pending(None)
            outcome = self.flasher.reject(data, error, source="upload", origin=str(self.watch_path))
            self._handled(outcome, hashlib.sha256(data).hexdigest())
            return
        except OSError as error:
            if self._retry_later(error, "spooled", reason):
                return
            log.error("could not spool the upload from %s: %s", self.watch_path, error)
            self._replace_pending(None)
            outcome = self.flasher.spool_failed(data, error, source="upload", origin=str(self.watch_path))
            self._handled(outcome, hashlib.sha256(data).hexdigest())
            return
        if job.info.sha256 == self._flashing_sha256 and not self._superseding():
            # What is being flashed is this very sketch: stopping that run would write it again.
            job.spool_path.unlink(missing_ok=True)
            log.info("upload %s (%s) is the sketch being flashed already", job.info.sha256[:12], reason)
            return
        log.info(
            "upload %s accepted (%s): %s",
            job.info.sha256[:12],
            reason,
            job.info.describe(),
            extra={"journal": {"SKETCH_SHA256": job.info.sha256}},
        )
        self._replace_pending(job)
        if self._supersede is not None:
            self._supersede.set()
        self._wakeup.set()

    def _superseding(self) -> bool:
        """The running flash was already told to stop for a newer upload."""
        return self._supersede is not None and self._supersede.is_set()

    def _request_done(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        del self.outcomes[:-100]
        notify_status(f"request {outcome.record.sketch.short}: {outcome.result.value}")

    def _record_refusal(self, error: UnsafeFile) -> None:
        try:
            outcome = self.flasher.refuse_path(error, source="upload", origin=str(self.watch_path))
        except OSError as failure:
            log.error("could not record the refusal of %s: %s", self.watch_path, failure)
            return
        self.outcomes.append(outcome)
        del self.outcomes[:-100]
        notify_status(f"upload path refused: {outcome.reason}")

    def _replace_pending(self, job: Job | None) -> None:
        old, self._pending = self._pending, job
        if old is not None:
            old.spool_path.unlink(missing_ok=True)
            log.info("upload %s replaced by a newer one before it was flashed", old.info.sha256[:12])

    def _handled(self, outcome: Outcome, sha256: str) -> None:
        self.outcomes.append(outcome)
        del self.outcomes[:-100]
        if outcome.result is not FlashResult.SUPERSEDED:
            try:
                self.flasher.state.update_status(
                    lambda status: status.__setitem__("last_upload_sha256", sha256)
                )
            except OSError as error:
                # Only costs a second flash of the same upload after a restart.
                log.error("could not note upload %s as handled: %s", sha256[:12], error)
        notify_status(f"last sketch {sha256[:12]}: {outcome.result.value}")

    def _rescan_at_start(self) -> None:
        """An upload that arrived while the daemon was down is flashed now, not forgotten."""
        if not os.path.lexists(self.watch_path):
            return
        try:
            data = self.flasher.snapshot(self.watch_path)
            status = self.flasher.state.status()
        except UnsafeFile as error:
            log.warning("upload path %s refused at start-up: %s", self.watch_path, error.strerror)
            self._record_refusal(error)
            return
        except (OSError, ValueError) as error:
            log.warning("cannot look at %s at start-up: %s", self.watch_path, error)
            return
        if status.last_upload_sha256 == hashlib.sha256(data).hexdigest():
            return
        log.info("%s changed while the flasher was not running", self.watch_path)
        self._admit(data, "present-at-start")

    # --- the one flashing worker ----------------------------------------------------------------
    async def _worker(self) -> None:
        marker = self.flasher.state.read_marker()
        try:
            outcome = await self.flasher.recover()
        except LockTimeout as error:
            # Someone else keeps the H7; the next flash recovers first (every flash checks).
            log.error("could not check for an interrupted flash: %s", error)
            outcome = None
        if outcome is not None:
            notify_status(f"recovered interrupted flash: {outcome.result.value}")
            interrupted_sha = marker.record.sketch.sha256 if marker is not None else ""
            if marker is not None and marker.record.source == "upload" and interrupted_sha:
                # Recovery dealt with that upload; the rescan below must not flash it a second time.
                self.flasher.state.update_status(
                    lambda status: status.__setitem__("last_upload_sha256", interrupted_sha)
                )
        self.flasher.sweep_spool()
        self._rescan_at_start()
        while not self._stop.is_set():
            await self._wakeup.wait()
            self._wakeup.clear()
            job, self._pending = self._pending, None
            if job is None or self._stop.is_set():
                continue
            self._supersede = asyncio.Event()
            self._flashing_sha256 = job.info.sha256
            self.flashing = True
            notify_status(f"flashing sketch {job.info.sha256[:12]}")
            try:
                outcome = await self.flasher.flash(job, supersede=self._supersede)
            except OSError as error:
                # The state directory failed under us (disk full, read-only): say so, keep serving.
                log.error(
                    "flashing sketch %s failed in the flasher itself: %s",
                    job.info.sha256[:12],
                    error,
                    extra={"journal": {"SKETCH_SHA256": job.info.sha256, "FLASH_RESULT": "error"}},
                )
                continue
            finally:
                self.flashing = False
                self._supersede = None
                self._flashing_sha256 = None
            self._handled(outcome, job.info.sha256)
            if self._pending is not None:
                self._wakeup.set()
