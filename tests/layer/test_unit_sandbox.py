"""The daemons' units stay sandboxed like well-kept daemons (issue 20, item 15).

`systemd-analyze security --offline=yes` scores the units as the recipe installs them (@BINDIR@ and
@SYSCONFDIR@ substituted). Each must stay at or below systemd-journald's score on the same systemd
(4.3 on Debian 12's systemd 252), and every check it still fails must be explained: named in a
comment block of the unit that says "Exception".
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import LAYER_ROOT

pytestmark = pytest.mark.layer

UNIT_DIR = LAYER_ROOT / "recipes-python" / "x8-manager" / "files"
SERVICES = ("m4-proxy.service", "m4-flasher.service")
# systemd-journald's overall exposure on Debian 12 (systemd 252): the target.
JOURNALD_SCORE = 4.3
JOURNALD_UNIT = Path("/lib/systemd/system/systemd-journald.service")
SCORE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d)")


def analyze() -> str:
    program = shutil.which("systemd-analyze")
    if program is None:
        pytest.fail("systemd-analyze is missing: scripts/bootstrap installs systemd (scripts/deps/apt.txt)")
    return program


@pytest.fixture(scope="module")
def installed_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service files as the recipe installs them, in a directory of their own."""
    directory = tmp_path_factory.mktemp("units")
    for name in SERVICES:
        text = (UNIT_DIR / name).read_text().replace("@BINDIR@", "/usr/bin").replace("@SYSCONFDIR@", "/etc")
        (directory / name).write_text(text)
    return directory


def security(directory: Path, *names: str,
             threshold: float | None = None) -> subprocess.CompletedProcess[str]:
    command = [analyze(), "security", "--offline=yes", "--no-pager"]
    if threshold is not None:
        command.append(f"--threshold={round(threshold * 10)}")  # the threshold is in tenths
    return subprocess.run([*command, *names], cwd=directory, capture_output=True, text=True, timeout=120,
                          check=False)


def failed_checks(output: str) -> list[str]:
    """The names of the checks a unit fails (the lines marked ✗)."""
    return [line.split()[1] for line in output.splitlines() if line.startswith("✗")]


def exception_blocks(unit_text: str) -> list[str]:
    """The unit's comment blocks (consecutive comment lines) that say "Exception"."""
    blocks: list[str] = []
    current: list[str] = []
    for line in [*unit_text.splitlines(), ""]:
        if line.startswith("#"):
            current.append(line.lstrip("# "))
            continue
        if current and "Exception" in " ".join(current):
            blocks.append(" ".join(current))
        current = []
    return blocks


def keys(check: str) -> list[str]:
    """The words a comment must use to explain a failed check.

    ``PrivateNetwork=`` -> PrivateNetwork; ``User=/DynamicUser=`` -> User, DynamicUser;
    ``CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)`` -> CAP_DAC_, CAP_FOWNER, CAP_IPC_OWNER;
    ``SystemCallFilter=~@privileged`` -> @privileged.
    """
    if "=~" not in check:
        return [part.rstrip("=") for part in check.split("/") if part]
    what = check.split("=~", 1)[1]
    group = re.fullmatch(r"(\w*)\((.*)\)", what)
    if group is None:
        return [what]
    return [group[1] + alternative.rstrip("*") for alternative in group[2].split("|")]


@pytest.mark.parametrize("name", SERVICES)
def test_the_unit_is_no_more_exposed_than_journald(installed_units: Path, name: str) -> None:
    done = security(installed_units, name, threshold=JOURNALD_SCORE)
    scores = dict(SCORE.findall(done.stdout))
    assert name in scores, done.stdout + done.stderr
    assert done.returncode == 0 and float(scores[name]) <= JOURNALD_SCORE, (
        f"{name}: exposure {scores[name]} above journald's {JOURNALD_SCORE}\n{done.stdout}")


@pytest.mark.parametrize("name", SERVICES)
def test_every_check_the_unit_fails_is_explained_in_the_unit(installed_units: Path, name: str) -> None:
    done = security(installed_units, name)
    failed = failed_checks(done.stdout)
    assert failed, f"no checks parsed from systemd-analyze:\n{done.stdout}{done.stderr}"
    blocks = exception_blocks((UNIT_DIR / name).read_text())
    unexplained = [check for check in failed
                   if not any(key in block for key in keys(check) for block in blocks)]
    assert not unexplained, (f"{name}: no '# Exception: ...' comment names {', '.join(unexplained)} "
                             "(say in the unit why the sandbox leaves it open)")


def test_the_target_is_journalds_score_on_this_systemd() -> None:
    """JOURNALD_SCORE is what this machine's systemd gives systemd-journald.service."""
    if not JOURNALD_UNIT.exists():
        pytest.skip(f"{JOURNALD_UNIT} is not installed here")
    done = security(JOURNALD_UNIT.parent, JOURNALD_UNIT.name)
    scores = dict(SCORE.findall(done.stdout))
    assert float(scores[JOURNALD_UNIT.name]) == JOURNALD_SCORE, done.stdout


def test_the_check_names_are_read_as_the_comments_use_them() -> None:
    assert keys("PrivateNetwork=") == ["PrivateNetwork"]
    assert keys("User=/DynamicUser=") == ["User", "DynamicUser"]
    assert keys("CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)") == ["CAP_DAC_", "CAP_FOWNER",
                                                                           "CAP_IPC_OWNER"]
    assert keys("RestrictAddressFamilies=~AF_(INET|INET6)") == ["AF_INET", "AF_INET6"]
    assert keys("SystemCallFilter=~@privileged") == ["@privileged"]
