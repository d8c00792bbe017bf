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
    "HEALTHY",
    "WRITING",
    "DaemonSettings",
    "FlashRecord",
    "HealthCheck",
    "InProgress",
    "LastGood",
    "SketchRef",
    "Status",
]

# The phases of an in-progress flash (``InProgress.phase``).
WRITING = "writing"  # openocd may be writing the chip: its content is unknown
AWAITING_HEALTH = "health"  # written and verified; the health check has not given its verdict
HEALTHY = "healthy"  # the health check passed: what is left is making it the last good sketch
_PHASES = (WRITING, AWAITING_HEALTH, HEALTHY)

# Bounds of a health check request (the request socket takes it from any client of the socket).
MAX_HEALTH_SECONDS = 600.0
MAX_HEALTH_NAMES = 32
MAX_NAME_BYTES = 255
MAX_HOST_BYTES = 253

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


def _seconds(value: Any) -> Any:
    """JSON numbers as float; anything else as is, for the check to refuse by name."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _procedure_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{what} must be a procedure name of 1 to {MAX_NAME_BYTES} bytes")
    if not value.isprintable():
        raise ValueError(f"{what} must be a procedure name without control characters")
    return value


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_HOST_BYTES:
        raise ValueError(f"the health check's host must be a name or address of 1 to {MAX_HOST_BYTES} bytes")
    if not value.isprintable() or any(char.isspace() for char in value):
        raise ValueError("the health check's host must not hold spaces, NUL or control characters")
    return value


@dataclass(frozen=True)
class HealthCheck:
    """What to ask the sketch after a flash (``timeout`` seconds in all), through the proxy's call
    port at ``host``:``port``. Built only through :meth:`checked`, so a check that could never run
    (port 70000, a NUL in the host) is refused before anything is flashed."""

    method: str | None = None
    bound: tuple[str, ...] = ()
    timeout: float = 10.0
    host: str = "127.0.0.1"
    port: int = 5001

    def __post_init__(self) -> None:
        if self.method is not None:
            _procedure_name(self.method, "the health check's method")
        if len(self.bound) > MAX_HEALTH_NAMES:
            raise ValueError(f"the health check names more than {MAX_HEALTH_NAMES} bound procedures")
        for name in self.bound:
            _procedure_name(name, "each bound name")
        timeout = self.timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_HEALTH_SECONDS
        ):
            raise ValueError(
                f"the health check's timeout must be seconds, more than 0 and at most {MAX_HEALTH_SECONDS:g}"
            )
        _host(self.host)
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"the health check's port must be a TCP port from 1 to 65535, not {self.port!r}")

    def describe(self) -> str:
        parts = []
        if self.method:
            parts.append(f"{self.method}() answers")
        if self.bound:
            parts.append(f"binds {', '.join(self.bound)}")
        return " and ".join(parts) or "RPC answers"

    def to_json(self) -> JsonObject:
        return {
            "method": self.method,
            "bound": list(self.bound),
            "timeout": self.timeout,
            "host": self.host,
            "port": self.port,
        }

    @classmethod
    def from_json(cls, raw: Any) -> HealthCheck:
        """The request's (or the marker's) ``health`` object; ValueError says what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError('"health" must be an object or null')
        bound = raw.get("bound") or []
        if not isinstance(bound, list):
            raise ValueError('"health.bound" must be a list of procedure names')
        method = raw.get("method")
        return cls(
            method=method if method is None else _procedure_name(method, '"health.method"'),
            bound=tuple(_procedure_name(name, '"health.bound" entries') for name in bound),
            timeout=_seconds(raw.get("timeout", 10.0)),
            host=_or_default(raw.get("host"), "127.0.0.1"),
            port=_or_default(raw.get("port"), 5001),
        )


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
    """The last sketch that flashed, verified (and passed its health check, when one was asked).

    ``last-good.json``; ``elf`` names its ELF in the state directory, written under a name made of
    its sha256 before this record: renaming this record in is the one step that changes the last
    good sketch. Records of older flashers have no ``elf``: theirs is ``last-good.elf``.
    """

    sha256: str
    size: int | None = None
    flashed_at: str | None = None
    origin: str | None = None
    elf: str | None = None

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
            elf=_typed(raw.get("elf"), str, None),
        )


@dataclass(frozen=True)
class InProgress:
    """``in-progress.json``: present exactly while a flash transaction is open: openocd may be
    writing the chip (phase ``writing``), a sketch written and verified waits for its health
    verdict (``health``), or passed it and is being made the last good sketch (``healthy``).
    Whoever finds it left behind finishes that transaction first, from what it says here:

    - ``check``: the health check this sketch still owes (None: a plain flash). A checked sketch
      is never made the last good one by recovery unless ``phase`` says it passed;
    - ``previous_last_good``: the last good sketch when the transaction began (what goes back);
    - ``verdict``: set on a rollback's own flash, the unhealthy sketch's verdict, recorded when the
      rollback is done (by recovery, if the flasher stops during it).
    """

    record: FlashRecord
    spool_path: str = ""
    pid: int | None = None
    recovery_attempts: int = 0
    openocd_pid: int | None = None
    damaged: bool = False  # the file was there but unreadable: "interrupted, unknown sketch"
    phase: str = WRITING
    check: HealthCheck | None = None
    previous_last_good: LastGood | None = None
    verdict: FlashRecord | None = None

    @property
    def awaiting_health(self) -> bool:
        return self.phase == AWAITING_HEALTH

    @property
    def unchecked(self) -> bool:
        """The sketch owes a health check it has not passed: recovery must not keep it."""
        return self.check is not None and self.phase != HEALTHY

    def to_json(self) -> JsonObject:
        document = self.record.to_json()
        document.update(spool_path=self.spool_path, pid=self.pid, recovery_attempts=self.recovery_attempts)
        document["phase"] = self.phase
        if self.openocd_pid is not None:
            document["openocd_pid"] = self.openocd_pid
        if self.damaged:
            document["damaged"] = True
        if self.check is not None:
            document["check"] = self.check.to_json()
        if self.previous_last_good is not None:
            document["previous_last_good"] = self.previous_last_good.to_json()
        if self.verdict is not None:
            document["verdict"] = self.verdict.to_json()
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
            phase=raw["phase"] if raw.get("phase") in _PHASES else WRITING,
            check=_check_or_none(raw.get("check")),
            previous_last_good=LastGood.from_json(raw.get("previous_last_good")),
            verdict=FlashRecord.from_json(raw["verdict"]) if isinstance(raw.get("verdict"), dict) else None,
        )


def _check_or_none(raw: Any) -> HealthCheck | None:
    """A marker's check; one that no longer reads as valid still counts as owed (never kept)."""
    if raw is None:
        return None
    try:
        return HealthCheck.from_json(raw)
    except ValueError:
        return HealthCheck()


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
            verified = record.result in ("success", "written")  # written: verified, check pending
            return record.sketch.sha256 if verified and record.sketch.sha256 else None
        return None
