"""Create (or reuse) the legacy client virtual environment: msgpack-rpc-python 0.4.1 and friends.

Usage: python3 tests/legacy/make_venv.py [DEST]   (default: out/legacy-venv at the repo root)

The venv is rebuilt only when requirements.txt, sitecustomize.py or the Python version change
(a stamp file written last holds their hash, so an interrupted build is redone), which lets CI
cache it under out/. Packages come from PyPI only. msgpack-python 0.5.6 has no wheel for current
Pythons; MSGPACK_PUREPYTHON=1 builds its pure-Python fallback without a compiler (and
TORNADO_EXTENSION=0 skips tornado's optional C speedups).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # also run as a script, outside pytest

from tests.support.venvs import cached_venv, fresh_venv  # noqa: E402 - after the path set-up

DEFAULT_DEST = ROOT / "out" / "legacy-venv"
INPUTS = (HERE / "requirements.txt", HERE / "sitecustomize.py")
STAMP = "x8manager-legacy.stamp"
EXPECTED_MSGPACK = "(0, 5, 6)"


def _build(dest: Path) -> None:
    python = fresh_venv(dest)
    # Pure-Python builds of both (msgpack's fallback, no tornado.speedups): no compiler needed
    # on a fresh CI machine, and nothing differs on the wire.
    env = dict(os.environ, MSGPACK_PUREPYTHON="1", TORNADO_EXTENSION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-r", str(HERE / "requirements.txt")], check=True, env=env
    )
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shutil.copy(HERE / "sitecustomize.py", Path(purelib) / "sitecustomize.py")
    probe = subprocess.run(
        [python, "-c", "import msgpackrpc, msgpack, tornado.httputil; print(msgpack.version)"],
        check=True,
        capture_output=True,
        text=True,
    )
    if probe.stdout.strip() != EXPECTED_MSGPACK:
        raise RuntimeError(f"legacy venv {dest}: msgpack {probe.stdout.strip()}, expected {EXPECTED_MSGPACK}")


def ensure_venv(dest: Path = DEFAULT_DEST) -> Path:
    """Return the legacy venv's python, (re)building the venv first if it is missing or stale."""
    return cached_venv(dest, INPUTS, _build, STAMP)


if __name__ == "__main__":
    target = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_DEST
    print(ensure_venv(target))
