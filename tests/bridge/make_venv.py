"""Create (or reuse) the Bridge venv: arduino-router-bridge 0.5.1 from PyPI, unchanged.

Usage: python3 tests/bridge/make_venv.py [DEST]   (default: out/bridge-venv at the repo root)

Rebuilt only when requirements.txt or the Python version change (a stamp file written last
holds their hash, so an interrupted build is redone); CI may cache it under out/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # also run as a script, outside pytest

from tests.support.venvs import cached_venv, fresh_venv  # noqa: E402 - after the path set-up

DEFAULT_DEST = ROOT / "out" / "bridge-venv"
REQUIREMENTS = HERE / "requirements.txt"
STAMP = "x8manager-bridge.stamp"
EXPECTED_VERSION = "0.5.1"


def _build(dest: Path) -> None:
    python = fresh_venv(dest)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(REQUIREMENTS)], check=True)
    probe = subprocess.run(
        [python, "-c", "import importlib.metadata as m, arduino.router_bridge; "
                       "print(m.version('arduino-router-bridge'))"],
        check=True, capture_output=True, text=True)
    if probe.stdout.strip() != EXPECTED_VERSION:
        raise RuntimeError(f"bridge venv {dest}: arduino-router-bridge {probe.stdout.strip()}, "
                           f"expected {EXPECTED_VERSION}")


def ensure_venv(dest: Path = DEFAULT_DEST) -> Path:
    """Return the Bridge venv's python, (re)building the venv first if it is missing or stale."""
    return cached_venv(dest, [REQUIREMENTS], _build, STAMP)


if __name__ == "__main__":
    print(ensure_venv(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_DEST))
