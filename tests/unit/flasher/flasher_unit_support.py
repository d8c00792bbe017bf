"""Shared set-up of the flasher unit tests: fixture ELFs, the SWD-probe stand-in, settings.

A uniquely named module (not conftest.py): test directories here are not packages, so two
conftest modules would shadow each other when tests import names from them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from x8manager.flasher.openocd import OpenocdCommand
from x8manager.flasher.pipeline import Flasher, FlasherSettings

ROOT = Path(__file__).resolve().parents[3]
ELF_DIR = ROOT / "tests" / "fixtures" / "elf"
STANDIN = ROOT / "tests" / "standins" / "openocd-standin"


@pytest.fixture
def standin_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the stand-in's state (chip, invocation log, mode) into the test's directory."""
    directory = tmp_path / "probe"
    monkeypatch.setenv("OPENOCD_STANDIN_DIR", str(directory))
    monkeypatch.setenv("OPENOCD_STANDIN_MODE_FILE", str(directory / "mode"))
    monkeypatch.setenv("OPENOCD_STANDIN_CONNECT_SECONDS", "0.01")
    monkeypatch.setenv("OPENOCD_STANDIN_PROGRAM_SECONDS", "0.01")
    monkeypatch.delenv("OPENOCD_STANDIN_MODE", raising=False)
    yield directory


def make_flasher(root: Path) -> Flasher:
    """A Flasher on the stand-in with its state directory and lock under *root*, prepared."""
    settings = FlasherSettings(
        state_dir=root / "state",
        openocd=OpenocdCommand(program=str(STANDIN)),
        lock_path=root / "h7.lock",
        attempt_timeout=20.0,
        retries=2,
        retry_delay=0.0,
        lock_timeout=20.0,
    )
    instance = Flasher(settings)
    instance.state.prepare()
    return instance


@pytest.fixture
def flasher(tmp_path: Path, standin_env: Path) -> Flasher:
    return make_flasher(tmp_path)
