"""The H7 lock between processes, and the crash-safe state directory."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from x8manager.flasher.lock import LockCancelled, LockTimeout, h7_lock, lock_holder
from x8manager.flasher.records import FlashRecord, InProgress, LastGood, SketchRef
from x8manager.flasher.state import HISTORY_LENGTH, StateDir, atomic_write

HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"pid %d: stm32h7-program (test)\\n" % os.getpid())
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def other_holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    lock = tmp_path / "h7.lock"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield lock
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)


def test_lock_held_by_another_process_times_out_with_the_holder_named(other_holder: Path) -> None:
    assert "stm32h7-program (test)" in (lock_holder(other_holder) or "")

    async def scenario() -> None:
        async with h7_lock(other_holder, "test", wait_limit=0.2):
            pytest.fail("lock should be taken")

    with pytest.raises(LockTimeout, match="stm32h7-program"):
        asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs util-linux flock(1)")
def test_a_flock_1_holder_is_named_from_proc_locks(tmp_path: Path) -> None:
    """The drop-in for Arduino's stm32h7-program.service holds the lock with flock(1), which
    writes nothing into the file: the holder is found in /proc/locks instead."""
    lock = tmp_path / "h7.lock"
    lock.touch()
    process = subprocess.Popen(
        ["flock", str(lock), sys.executable, "-c", "print('held', flush=True); import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        assert lock_holder(lock) == f"pid {process.pid}: flock" or (lock_holder(lock) or "").startswith(
            f"pid {process.pid}: flock ("
        )

        async def scenario() -> None:
            async with h7_lock(lock, "test", wait_limit=0.2):
                pytest.fail("lock should be taken")

        with pytest.raises(LockTimeout, match=f"held by pid {process.pid}: flock"):
            asyncio.run(scenario())
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)
    assert lock_holder(lock) is None


def test_waiting_for_the_lock_can_be_abandoned(other_holder: Path) -> None:
    async def scenario() -> None:
        cancel = asyncio.Event()
        cancel.set()
        async with h7_lock(other_holder, "test", wait_limit=30, cancel=cancel):
            pytest.fail("lock should be taken")

    with pytest.raises(LockCancelled):
        asyncio.run(scenario())


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    lock = tmp_path / "run" / "lock" / "h7.lock"

    async def scenario() -> None:
        async with h7_lock(lock, "first", wait_limit=1):
            assert "first" in (lock_holder(lock) or "")
            with pytest.raises(LockTimeout):
                async with h7_lock(lock, "second", wait_limit=0.1):
                    pass
        assert lock_holder(lock) is None
        async with h7_lock(lock, "third", wait_limit=1):
            pass

    asyncio.run(scenario())


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_status_keeps_latest_outcome_and_a_bounded_history(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.prepare()
    for number in range(HISTORY_LENGTH + 3):
        state.record_outcome(FlashRecord(result="success", reason=str(number)))
    status = json.loads(state.status_path.read_text())
    assert status["reason"] == str(HISTORY_LENGTH + 2)
    assert len(status["history"]) == HISTORY_LENGTH
    assert status["state"] == "idle" and status["schema"] == 1


def test_damaged_status_file_is_rebuilt(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state", tmp_path / "elsewhere" / "status.json")
    state.prepare()
    state.status_path.write_text("{not json")
    state.record_outcome(FlashRecord(result="rejected", reason="x"))
    assert json.loads(state.status_path.read_text())["result"] == "rejected"


def test_marker_round_trip_and_damaged_marker_still_counts(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    assert state.read_marker() is None
    marker = InProgress(record=FlashRecord(sketch=SketchRef(sha256="ab")), spool_path="/spool/x.elf", pid=1)
    state.write_marker(marker)
    assert state.read_marker() == marker
    state.marker_path.write_text("garbage")
    damaged = state.read_marker()
    assert damaged is not None and damaged.damaged
    state.clear_marker()
    assert state.read_marker() is None


def test_last_good_needs_both_files(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    elf = tmp_path / "a.elf"
    elf.write_bytes(b"\x7fELF")
    state.save_last_good(elf, LastGood(sha256="x"))
    assert state.last_good() == LastGood(sha256="x", elf="last-good-x.elf")
    state.last_good_elf.unlink()
    assert state.last_good() is None


def test_a_last_good_save_cut_before_its_one_rename_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    old, new = tmp_path / "a.elf", tmp_path / "b.elf"
    old.write_bytes(b"\x7fELF old")
    new.write_bytes(b"\x7fELF new")
    state.save_last_good(old, LastGood(sha256="a" * 64))
    # A save of "b" that stopped after its ELF was in place, before last-good.json was renamed in:
    (tmp_path / f"last-good-{'b' * 64}.elf").write_bytes(new.read_bytes())
    good = state.last_good()
    assert good is not None and good.sha256 == "a" * 64
    assert state.last_good_elf.read_bytes() == b"\x7fELF old"
    state.prepare()  # the next start removes the ELF no record names
    assert [path.name for path in tmp_path.glob("last-good*.elf")] == [f"last-good-{'a' * 64}.elf"]
    state.save_last_good(new, LastGood(sha256="b" * 64))  # one rename switches both together
    assert state.last_good_elf.read_bytes() == b"\x7fELF new"
    assert [path.name for path in tmp_path.glob("last-good*.elf")] == [f"last-good-{'b' * 64}.elf"]


def test_a_last_good_record_of_an_older_flasher_still_names_last_good_elf(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    (tmp_path / "last-good.elf").write_bytes(b"\x7fELF legacy")
    (tmp_path / "last-good.json").write_text('{"sha256": "' + "c" * 64 + '"}')
    state.prepare()
    assert state.last_good() is not None and state.last_good_elf.read_bytes() == b"\x7fELF legacy"
