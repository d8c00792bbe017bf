"""The m4-proxy executable keeps OpenSSL out of the process unless uvloop needs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from x8manager.proxy.daemon import needs_ssl

SRC = Path(__file__).resolve().parents[3] / "src"

# Starts the executable's entry the way the console script does (parsing stops at --help) and
# reports whether ssl and asyncio got loaded.
PROBE = """
import sys
from x8manager.proxy import daemon
try:
    daemon.main(sys.argv[1:])
except SystemExit:
    pass
print(sys.modules.get("ssl") is not None, "asyncio" in sys.modules)
"""


@pytest.mark.parametrize(("argv", "expected"), [
    ([], False),
    (["--event-loop", "asyncio"], False),
    (["--event-loop=asyncio", "-v"], False),
    (["--event-loop", "uvloop"], True),
    (["--event-loop=auto"], True),
    (["--device", "/dev/x8h7_ui", "--event-loop", "uvloop"], True),
])
def test_needs_ssl_only_for_uvloop(argv: list[str], expected: bool) -> None:
    assert needs_ssl(argv) is expected


def _probe(*argv: str) -> str:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                          check=True, timeout=60)
    return done.stdout.strip().splitlines()[-1]


def test_the_executable_loads_asyncio_without_ssl() -> None:
    assert _probe("--help") == "False True"


def test_uvloop_keeps_ssl() -> None:
    assert _probe("--event-loop", "uvloop", "--help") == "True True"
