"""One flash end to end through the SWD-probe stand-in: results, retries, records, recovery."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from flasher_unit_support import ELF_DIR

from x8manager.flasher import pipeline
from x8manager.flasher.elfcheck import SketchRejected
from x8manager.flasher.lock import h7_lock
from x8manager.flasher.pipeline import Flasher, FlashResult, Outcome
from x8manager.flasher.records import FlashRecord, HealthCheck, InProgress, SketchRef

GOOD = (ELF_DIR / "sketch-ok.elf").read_bytes()
GOOD_2 = (ELF_DIR / "sketch-ok-2.elf").read_bytes()


def _flash(flasher: Flasher, data: bytes, source: str = "manual") -> Outcome:
    job = flasher.admit(data, source=source, origin="test")
    return asyncio.run(flasher.flash(job))


def _chip(probe: Path) -> dict[str, object]:
    return dict(json.loads((probe / "chip.json").read_text()))


def _runs(probe: Path) -> int:
    path = probe / "invocations.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_success_records_status_last_good_and_cleans_up(flasher: Flasher, standin_env: Path) -> None:
    outcome = _flash(flasher, GOOD)
    assert outcome.ok, outcome.reason
    status = json.loads(flasher.state.status_path.read_text())
    assert status["result"] == "success" and status["state"] == "idle"
    assert status["sketch"]["sha256"] == outcome.record.sketch.sha256 == _chip(standin_env)["sha256"]
    assert status["last_good"]["sha256"] == status["sketch"]["sha256"]
    assert any("Verified OK" in line for line in status["openocd_log_tail"])
    assert status["started_at"] <= status["finished_at"]
    assert flasher.state.last_good_elf.read_bytes() == GOOD
    assert not flasher.state.marker_path.exists()
    assert list(flasher.state.spool.iterdir()) == []


def test_rejected_file_never_reaches_the_probe(flasher: Flasher, standin_env: Path) -> None:
    data = (ELF_DIR / "m7-region.elf").read_bytes()
    with pytest.raises(SketchRejected) as caught:
        flasher.admit(data, source="upload", origin="test")
    outcome = flasher.reject(data, caught.value, source="upload", origin="test")
    assert outcome.result is FlashResult.REJECTED
    status = json.loads(flasher.state.status_path.read_text())
    assert "would overwrite the M7 firmware" in status["reason"]
    assert _runs(standin_env) == 0


def test_transient_probe_error_is_retried(flasher: Flasher, standin_env: Path) -> None:
    standin_env.mkdir(parents=True, exist_ok=True)
    (standin_env / "mode").write_text("flaky 2\n")
    outcome = _flash(flasher, GOOD)
    assert outcome.ok
    assert outcome.record.attempts == 3
    assert _runs(standin_env) == 3


def test_retries_are_bounded(flasher: Flasher, standin_env: Path) -> None:
    standin_env.mkdir(parents=True, exist_ok=True)
    (standin_env / "mode").write_text("transient\n")
    outcome = _flash(flasher, GOOD)
    assert outcome.result is FlashResult.FAILED
    assert "probe/link error" in outcome.reason and "cannot read IDR" in outcome.reason
    assert _runs(standin_env) == 3  # 1 + 2 retries
    assert flasher.state.last_good() is None


@pytest.mark.parametrize(
    ("mode", "words"), [("fail", "Programming Failed"), ("verify-fail", "Verify Failed")]
)
def test_permanent_failure_is_not_retried(flasher: Flasher, standin_env: Path, mode: str, words: str) -> None:
    standin_env.mkdir(parents=True, exist_ok=True)
    (standin_env / "mode").write_text(mode)
    outcome = _flash(flasher, GOOD)
    assert outcome.result is FlashResult.FAILED
    assert _runs(standin_env) == 1
    assert any(words in line for line in outcome.record.openocd_log_tail)


def test_hung_programming_times_out(flasher: Flasher, standin_env: Path) -> None:
    standin_env.mkdir(parents=True, exist_ok=True)
    (standin_env / "mode").write_text("hang-programming")
    object.__setattr__(flasher.settings, "attempt_timeout", 3.0)  # room for a loaded CI machine
    outcome = _flash(flasher, GOOD)
    assert outcome.result is FlashResult.TIMEOUT
    assert "while programming" in outcome.reason
    assert _runs(standin_env) == 1
    assert not flasher.state.marker_path.exists()


def _leave_interrupted_flash(flasher: Flasher, data: bytes) -> None:
    """What a SIGKILL mid-flash leaves: the spooled sketch and the in-progress marker."""
    job = flasher.admit(data, source="upload", origin="test")
    spool = job.spool_path.with_name(job.spool_path.name.replace(job.spool_path.name.split("-")[1], "999999"))
    job.spool_path.rename(spool)  # owned by a process that no longer exists
    flasher.state.write_marker(
        InProgress(
            record=FlashRecord(
                sketch=SketchRef(sha256=job.info.sha256, size=job.info.size),
                source="upload",
                origin="test",
                started_at="2026-01-01T00:00:00Z",
            ),
            spool_path=str(spool),
            pid=999999,
        )
    )


def test_recovery_reflashes_the_interrupted_sketch(flasher: Flasher, standin_env: Path) -> None:
    assert _flash(flasher, GOOD).ok
    _leave_interrupted_flash(flasher, GOOD_2)
    outcome = asyncio.run(flasher.recover())
    assert outcome is not None and outcome.ok
    assert outcome.record.source == "recovery"
    assert _chip(standin_env)["state"] == "programmed"
    assert flasher.state.last_good_elf.read_bytes() == GOOD_2
    history = json.loads(flasher.state.status_path.read_text())["history"]
    assert [entry["result"] for entry in history[:2]] == ["success", "interrupted"]
    assert not flasher.state.marker_path.exists()
    assert list(flasher.state.spool.iterdir()) == []


def test_recovery_falls_back_to_the_last_good_sketch(flasher: Flasher, standin_env: Path) -> None:
    assert _flash(flasher, GOOD).ok
    _leave_interrupted_flash(flasher, GOOD_2)
    marker = json.loads(flasher.state.marker_path.read_text())
    Path(marker["spool_path"]).unlink()  # the interrupted sketch is gone
    outcome = asyncio.run(flasher.recover())
    assert outcome is not None and outcome.ok
    assert "last good" in outcome.record.origin
    assert _chip(standin_env)["sha256"] == json.loads(flasher.state.last_good_json.read_text())["sha256"]


def test_recovery_without_anything_to_restore_says_so(flasher: Flasher, standin_env: Path) -> None:
    flasher.state.write_marker(InProgress(record=FlashRecord(), damaged=True))
    outcome = asyncio.run(flasher.recover())
    assert outcome is not None and outcome.result is FlashResult.FAILED
    assert "content is unknown" in outcome.reason
    assert not flasher.state.marker_path.exists()


def _flash_awaiting_health(flasher: Flasher, data: bytes) -> Outcome:
    """The write of a flash a health check follows, the process then gone before the verdict."""
    job = flasher.admit(data, source="request", origin="test")

    async def locked() -> Outcome:
        async with h7_lock(flasher.settings.lock_path, "test", wait_limit=10):
            return await flasher._flash_locked(
                job, None, check=HealthCheck(method="ping"), previous=flasher.state.last_good()
            )

    return asyncio.run(locked())


def test_a_flash_awaiting_its_health_check_keeps_the_transaction_open(
    flasher: Flasher, standin_env: Path
) -> None:
    assert _flash(flasher, GOOD).ok
    assert _flash_awaiting_health(flasher, GOOD_2).result is FlashResult.WRITTEN
    marker = flasher.state.read_marker()
    assert marker is not None and marker.awaiting_health and marker.openocd_pid is None
    assert json.loads(flasher.state.marker_path.read_text())["phase"] == "health"
    assert _chip(standin_env)["sha256"] == hashlib.sha256(GOOD_2).hexdigest()
    assert flasher.state.last_good_elf.read_bytes() == GOOD  # not promoted without a verdict
    # Nobody recorded a verdict: the next one to take the lock puts the last good sketch back.
    outcome = asyncio.run(flasher.recover())
    assert outcome is not None and outcome.ok and "last good" in outcome.record.origin
    assert _chip(standin_env)["sha256"] == hashlib.sha256(GOOD).hexdigest() and _runs(standin_env) == 3
    history = json.loads(flasher.state.status_path.read_text())["history"]
    assert [entry["result"] for entry in history[:2]] == ["success", "interrupted"]
    assert "stopped during its health check" in history[1]["reason"]
    assert flasher.state.last_good_elf.read_bytes() == GOOD
    assert not flasher.state.marker_path.exists()


def test_a_health_check_left_open_without_a_last_good_sketch_says_what_runs(
    flasher: Flasher, standin_env: Path
) -> None:
    assert _flash_awaiting_health(flasher, GOOD_2).result is FlashResult.WRITTEN
    outcome = asyncio.run(flasher.recover())
    assert outcome is not None and outcome.result is FlashResult.FAILED
    assert f"the M4 runs sketch {hashlib.sha256(GOOD_2).hexdigest()[:12]}" in outcome.reason
    assert _runs(standin_env) == 1  # the unchecked sketch is not written again, nor made last good
    assert not flasher.state.marker_path.exists() and not flasher.state.last_good_elf.exists()


def test_nothing_to_recover_is_a_no_op(flasher: Flasher, standin_env: Path) -> None:
    assert asyncio.run(flasher.recover()) is None
    assert _runs(standin_env) == 0


def test_outcomes_carry_journal_fields(
    flasher: Flasher, standin_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    outcome = _flash(flasher, GOOD)
    fields = [getattr(record, "journal", {}) for record in caplog.records]
    final = next(f for f in fields if "FLASH_RESULT" in f)
    assert final["FLASH_RESULT"] == "success"
    assert final["SKETCH_SHA256"] == outcome.record.sketch.sha256
    assert final["OPENOCD_EXIT"] == 0 and final["FLASH_ATTEMPTS"] == 1 and final["FLASH_SOURCE"] == "manual"


def test_a_health_check_that_cannot_run_is_a_failed_check_and_the_last_good_sketch_goes_back(
    flasher: Flasher, standin_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _flash(flasher, GOOD).ok

    async def broken(_check: HealthCheck) -> None:
        raise OverflowError("getsockaddrarg: port must be 0-65535.")

    monkeypatch.setattr(pipeline, "run_health_check", broken)
    events: list[str] = []
    job = flasher.admit(GOOD_2, source="request", origin="test")
    check = HealthCheck(method="ping")
    outcome = asyncio.run(flasher.flash_checked(job, check, lambda event, **_: events.append(event)))
    assert outcome.result is FlashResult.UNHEALTHY and "could not run" in outcome.reason, outcome.reason
    assert events == ["flashing", "health", "rollback"]
    assert _chip(standin_env)["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert flasher.state.last_good_elf.read_bytes() == GOOD
    assert not flasher.state.marker_path.exists() and list(flasher.state.spool.iterdir()) == []
