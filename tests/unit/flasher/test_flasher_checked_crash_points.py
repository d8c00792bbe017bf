"""Every step of a health-checked transaction is a place the flasher may die: it is SIGKILLed (a real
process, killing itself) before each write to its state directory in turn, from the first marker to
the last status line, for a sketch that passes its check and for one that fails it. Whatever step it
died at, once the next holder of the H7 lock has recovered:

- the M4 runs the last good sketch, verified (the stand-in's chip), and last-good.json names it;
- the checked sketch B is the last good one only if its check passed, and then its newest record
  says "success" with a healthy check; otherwise A is, and no record of B says "success" (its
  write is "written", its end "interrupted" or "unhealthy").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flasher_unit_support import ELF_DIR, STANDIN, make_flasher

GOOD = (ELF_DIR / "sketch-ok.elf").read_bytes()
CHECKED = (ELF_DIR / "sketch-ok-2.elf").read_bytes()

# The child: the transaction of flash_checked with the health check's verdict fixed, SIGKILLed right
# before its KILL_AT-th write to the state directory (atomic writes, renames, the marker's removal).
CHILD = r"""
import asyncio, os, signal, sys
from pathlib import Path
from x8manager.flasher import pipeline, state
from x8manager.flasher.health import HealthResult
from x8manager.flasher.openocd import OpenocdCommand
from x8manager.flasher.records import HealthCheck

root, standin, sketch, verdict, kill_at = sys.argv[1:6]
steps = 0

def step():
    global steps
    steps += 1
    if steps == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

def before(function):
    def wrapped(*args, **kwargs):
        step()
        return function(*args, **kwargs)
    return wrapped

state.atomic_write = before(state.atomic_write)
state.os.replace = before(state.os.replace)
state.StateDir.clear_marker = before(state.StateDir.clear_marker)

async def check(_check):
    return HealthResult(verdict == "healthy", f"fixed verdict: {verdict}", 0.0)

pipeline.run_health_check = check
settings = pipeline.FlasherSettings(
    state_dir=Path(root) / "state", openocd=OpenocdCommand(program=standin),
    lock_path=Path(root) / "h7.lock", retry_delay=0.0, lock_timeout=20.0,
)
flasher = pipeline.Flasher(settings)
job = flasher.admit(Path(sketch).read_bytes(), source="request", origin="test")
outcome = asyncio.run(flasher.flash_checked(job, HealthCheck(method="ping"), lambda *a, **k: None))
print(outcome.result.value)
"""


def _point_the_probe_at(monkeypatch: pytest.MonkeyPatch, probe: Path) -> Path:
    monkeypatch.setenv("OPENOCD_STANDIN_DIR", str(probe))
    monkeypatch.setenv("OPENOCD_STANDIN_MODE_FILE", str(probe / "mode"))
    return probe


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _die_at(root: Path, verdict: str, kill_at: int) -> bool:
    """Run the checked transaction of B in a child killed at step *kill_at*; False if it finished."""
    sketch = root / "b.elf"
    sketch.write_bytes(CHECKED)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(STANDIN), str(sketch), verdict, str(kill_at)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode == 0:
        return False
    assert done.returncode == -9, done.stderr
    return True


@pytest.mark.parametrize("verdict", ["healthy", "unhealthy"])
def test_a_checked_flash_killed_at_any_step_never_keeps_an_unchecked_sketch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verdict: str
) -> None:
    monkeypatch.setenv("OPENOCD_STANDIN_CONNECT_SECONDS", "0")
    monkeypatch.setenv("OPENOCD_STANDIN_PROGRAM_SECONDS", "0")
    _point_the_probe_at(monkeypatch, tmp_path / "a" / "probe")
    flasher = make_flasher(tmp_path / "a")  # A flashed once, its state and chip copied for each kill
    assert asyncio.run(flasher.flash(flasher.admit(GOOD, source="manual", origin="A"))).ok
    kill_at = 0
    while True:
        kill_at += 1
        root = tmp_path / f"kill-{kill_at}"
        shutil.copytree(tmp_path / "a", root, symlinks=True)
        probe = _point_the_probe_at(monkeypatch, root / "probe")
        flasher = make_flasher(root)
        if not _die_at(root, verdict, kill_at):
            break  # every step has been a kill point
        asyncio.run(flasher.recover())
        last_good = flasher.state.last_good()
        assert last_good is not None, f"killed at step {kill_at}: no last good sketch"
        chip = json.loads((probe / "chip.json").read_text())
        where = f"killed at step {kill_at}: chip {chip}, last good {last_good}"
        assert chip["state"] == "programmed" and chip["sha256"] == last_good.sha256, where
        assert flasher.state.last_good_elf.read_bytes() == (
            CHECKED if last_good.sha256 == sha(CHECKED) else GOOD
        )
        assert flasher.state.read_marker() is None, where
        elfs = {path.name for path in flasher.state.root.glob("last-good*.elf")}
        assert elfs == {flasher.state.last_good_elf.name}, (where, elfs)  # no half-saved one left
        history = flasher.state.status().history
        about_b = [record for record in history if record.sketch.sha256 == sha(CHECKED)]
        if last_good.sha256 == sha(CHECKED):
            assert verdict == "healthy", where
            assert about_b[0].result == "success" and (about_b[0].health or {}).get("healthy"), where
        else:
            assert last_good.sha256 == sha(GOOD), where
            assert not about_b or about_b[0].result in ("interrupted", "unhealthy"), (where, about_b[0])
            assert all(record.result != "success" for record in about_b), (where, about_b)
    assert kill_at > 8, "the transaction wrote less than expected: are the kill points still wired?"
