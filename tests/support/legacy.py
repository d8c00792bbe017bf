"""Old X8 container code (msgpack-rpc-python 0.4.1) run unchanged in its own venv, and the live
m4-sim and m4-proxy it talks to, as the legacy-client tests see them.

The fixtures that build these live in ``tests/integration/legacy/conftest.py``; tests import the
types from here (``from tests.support.legacy import Legacy``), never from a conftest: which
``conftest`` module a bare ``import conftest`` finds depends on the other test paths pytest was given.
"""

from __future__ import annotations

import os
import select
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.venvs import venv_from_script
from x8manager.m4sim import ControlClient

__all__ = ["LEGACY", "Legacy", "Proxy", "Sim", "legacy_python", "read_fd"]

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / "tests" / "legacy"


def legacy_python() -> Path:
    """The legacy venv's python (built once, cached under out/legacy-venv)."""
    return venv_from_script(LEGACY / "make_venv.py")


def read_fd(fd: int, within: float = 10.0) -> bytes:
    """One read from a (non-blocking) descriptor, waiting at most *within* seconds for data."""
    ready, _, _ = select.select([fd], [], [], within)
    assert ready, f"nothing to read within {within} s"
    return os.read(fd, 1024)


@dataclass
class Sim:
    """m4-sim on a pty, with a client of its control surface."""

    pty: str
    control: ControlClient
    log: Path


@dataclass
class Proxy:
    """The real m4-proxy daemon's loopback ports."""

    register_port: int
    call_port: int
    log: Path


@dataclass
class Legacy:
    """Runs the tests/legacy scripts with the legacy venv's python."""

    python: Path
    tmp: Path

    def run(self, script: str, *args: str | int, timeout: float = 60, **env: str) -> list[str]:
        """Run a tests/legacy script to completion in the legacy venv; return its stdout lines."""
        done = subprocess.run(
            [str(self.python), str(LEGACY / script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **env),
        )
        assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done.stdout.splitlines()

    def start(self, script: str, *args: str | int) -> subprocess.Popen[str]:
        """Start a long-running tests/legacy script; its stderr goes to a log file."""
        log = open(self.tmp / f"{script}.log", "w")  # noqa: SIM115 - closed with the process below
        process = subprocess.Popen(
            [str(self.python), str(LEGACY / script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        return process
