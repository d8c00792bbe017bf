"""The flasher's records, typed: one flash, the last good sketch, the daemon's settings, the status.

On disk they are JSON objects (``status.json``, ``last-good.json``, ``daemon.json``,
``in-progress.json``); their keys are the field names here, so ``m4-flasher status --json`` and
the files keep the shape they always had. Reading back is tolerant: a missing or mistyped key
takes its default rather than failing, because a status written by an older flasher must still
show.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AWAITING_HEALTH",
    "WRITING",
    "DaemonSettings",
    "FlashRecord",
    "InProgress",
    "LastGood",
    "SketchRef",
    "Status",
]

# The phases of an in-progress flash (``InProgress.phase``).
WRITING = "writing"  # openocd may be writing the chip: its content is unknown
AWAITING_HEALTH = "health"  # written and verified; the health check has not given its verdict

JsonObject = dict[str, Any]


def _typed(value: Any, kind: type | tuple[type, ...], default: Any) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        return default
    return value if isinstance(value, kind) else default


@dataclass(frozen=True)
class SketchRef:
    """Which sketch a record is about (empty for a path that was never read)."""

    sha256: str = ""
    size: int | None = None
    flash_bytes: int | None = None
    entry: str | None = None

    def to_json(self) -> JsonObject:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_json(cls, raw: Any) -> SketchRef:
        raw = raw if isinstance(raw, dict) else {}
        return cls(
            sha256=_typed(raw.get("sha256"), str, ""),
            size=_typed(raw.get("size"), int, None),
            flash_bytes=_typed(raw.get("flash_bytes"), int, None),
            entry=_typed(raw.get("entry"), str, None),
        )

    @property
    def short(self) -> str:
        return self.sha256[:12] if self.sha256 else "?"


@dataclass
class FlashRecord:
    """One outcome: what was asked (source, origin, sketch), what happened (result, reason, openocd)."""

    result: str = ""
    reason: str = ""
    source: str = ""
    origin: str = ""
    sketch: SketchRef = field(default_factory=SketchRef)
    received_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    openocd_exit: int | None = None
    openocd_log_tail: list[str] = field(default_factory=list)
    openocd_seconds: float | None = None
    openocd_spawned_at: float | None = None
    last_good_saved: bool | None = None  # False: flashed, but the previous last good sketch stays
    health: JsonObject | None = None  # the request API's health check, when one ran

    _OPTIONAL = ("received_at", "openocd_seconds", "openocd_spawned_at", "last_good_saved", "health")

    def to_json(self) -> JsonObject:
        document = dataclasses.asdict(self)
        document["sketch"] = self.sketch.to_json()
        for key in self._OPTIONAL:
            if document[key] is None:
                del document[key]
        return document

    @classmethod
    def from_json(cls, raw: Any) -> FlashRecord:
        raw = raw if isinstance(raw, dict) else {}
        tail = raw.get("openocd_log_tail")
        return cls(
            result=_typed(raw.get("result"), str, ""),
            reason=_typed(raw.get("reason"), str, ""),
            source=_typed(raw.get("source"), str, ""),
            origin=_typed(raw.get("origin"), str, ""),
            sketch=SketchRef.from_json(raw.get("sketch")),
            received_at=_typed(raw.get("received_at"), str, None),
            started_at=_typed(raw.get("started_at"), str, None),
            finished_at=_typed(raw.get("finished_at"), str, None),
            attempts=_typed(raw.get("attempts"), int, 0),
            openocd_exit=_typed(raw.get("openocd_exit"), int, None),
            openocd_log_tail=[str(line) for line in tail] if isinstance(tail, list) else [],
            openocd_seconds=_typed(raw.get("openocd_seconds"), (int, float), None),
            openocd_spawned_at=_typed(raw.get("openocd_spawned_at"), (int, float), None),
            last_good_saved=_typed(raw.get("last_good_saved"), bool, None),
            health=_typed(raw.get("health"), dict, None),
        )


@dataclass(frozen=True)
class LastGood:
    """The last sketch that flashed and verified (``last-good.json``, beside ``last-good.elf``)."""

    sha256: str
    size: int | None = None
    flashed_at: str | None = None
    origin: str | None = None

    def to_json(self) -> JsonObject:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> LastGood | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("sha256"), str):
            return None
        return cls(
            sha256=raw["sha256"],
            size=_typed(raw.get("size"), int, None),
            flashed_at=_typed(raw.get("flashed_at"), str, None),
            origin=_typed(raw.get("origin"), str, None),
        )


@dataclass(frozen=True)
class InProgress:
    """``in-progress.json``: present exactly while openocd may be writing the chip (phase
    ``writing``), or while a sketch written and verified waits for its health verdict (phase
    ``health``): whoever finds it left behind finishes that transaction first."""

    record: FlashRecord
    spool_path: str = ""
    pid: int | None = None
    recovery_attempts: int = 0
    openocd_pid: int | None = None
    damaged: bool = False  # the file was there but unreadable: "interrupted, unknown sketch"
    phase: str = WRITING

    @property
    def awaiting_health(self) -> bool:
        return self.phase == AWAITING_HEALTH

    def to_json(self) -> JsonObject:
        document = self.record.to_json()
        document.update(spool_path=self.spool_path, pid=self.pid, recovery_attempts=self.recovery_attempts)
        document["phase"] = self.phase
        if self.openocd_pid is not None:
            document["openocd_pid"] = self.openocd_pid
        if self.damaged:
            document["damaged"] = True
        return document

    @classmethod
    def from_json(cls, raw: Any) -> InProgress:
        raw = raw if isinstance(raw, dict) else {}
        return cls(
            record=FlashRecord.from_json(raw),
            spool_path=_typed(raw.get("spool_path"), str, ""),
            pid=_typed(raw.get("pid"), int, None),
            recovery_attempts=_typed(raw.get("recovery_attempts"), int, 0),
            openocd_pid=_typed(raw.get("openocd_pid"), int, None),
            damaged=bool(raw.get("damaged")),
            phase=AWAITING_HEALTH if raw.get("phase") == AWAITING_HEALTH else WRITING,
        )


@dataclass(frozen=True)
class DaemonSettings:
    """``daemon.json``: the running daemon's settings, which ``flash``/``rollback``/``status`` inherit."""

    pid: int | None = None
    watch: str | None = None
    openocd: str | None = None
    config_dir: str | None = None
    adapter_config: str | None = None
    target_config: str | None = None
    status: str | None = None
    lock: str | None = None
    timeout: float | None = None
    retries: int | None = None
    socket: str | None = None  # the request API's socket

    def to_json(self) -> JsonObject:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> DaemonSettings:
        raw = raw if isinstance(raw, dict) else {}
        return cls(
            pid=_typed(raw.get("pid"), int, None),
            watch=_typed(raw.get("watch"), str, None),
            openocd=_typed(raw.get("openocd"), str, None),
            config_dir=_typed(raw.get("config_dir"), str, None),
            adapter_config=_typed(raw.get("adapter_config"), str, None),
            target_config=_typed(raw.get("target_config"), str, None),
            status=_typed(raw.get("status"), str, None),
            lock=_typed(raw.get("lock"), str, None),
            timeout=_typed(raw.get("timeout"), (int, float), None),
            retries=_typed(raw.get("retries"), int, None),
            socket=_typed(raw.get("socket"), str, None),
        )


@dataclass(frozen=True)
class Status:
    """``status.json`` read back: the latest outcome, what runs now, the history, the last good sketch."""

    latest: FlashRecord | None
    state: str = "idle"
    in_progress: FlashRecord | None = None
    history: tuple[FlashRecord, ...] = ()
    last_good: LastGood | None = None
    last_upload_sha256: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Status:
        raw = raw if isinstance(raw, dict) else {}
        history = raw.get("history")
        in_progress = raw.get("in_progress")
        return cls(
            latest=FlashRecord.from_json(raw) if "result" in raw else None,
            state=_typed(raw.get("state"), str, "idle"),
            in_progress=FlashRecord.from_json(in_progress) if isinstance(in_progress, dict) else None,
            history=tuple(FlashRecord.from_json(e) for e in history) if isinstance(history, list) else (),
            last_good=LastGood.from_json(raw.get("last_good")),
            last_upload_sha256=_typed(raw.get("last_upload_sha256"), str, None),
        )

    def running_sha256(self) -> str | None:
        """The sketch the M4 runs, verified: the newest record that wrote the chip, if it succeeded.

        Records without an openocd run (rejections, "unchanged", health verdicts) say nothing
        about the chip and are skipped; an interrupted or failed write means "unknown".
        """
        for record in self.history:
            if record.result == "interrupted":
                return None
            if record.attempts == 0:
                continue
            return record.sketch.sha256 if record.result == "success" and record.sketch.sha256 else None
        return None
