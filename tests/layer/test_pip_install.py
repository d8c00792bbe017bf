"""`pip install x8manager` without extras: a fresh virtual environment holding the project's wheel
and only its core dependencies (pyproject's [project.dependencies], offline: the very installs of
this venv, made visible by a .pth file). Every console script either works or names the extra to
install, with no traceback; the extras in pyproject.toml and x8manager.common.extras agree."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from x8manager.common.extras import EXIT_MISSING_EXTRA, EXTRAS

from .conftest import LAYER_ROOT, copy_python_project

pytestmark = pytest.mark.layer

PROJECT = tomllib.loads((LAYER_ROOT / "pyproject.toml").read_text())["project"]
# Distributions an extra carries that no console script needs to start (lint finds its schema
# elsewhere too and says so when none is found).
OPTIONAL_IN_EXTRA = {"apps": {"check-jsonschema", "arduino-router-bridge"}}
SKETCH = LAYER_ROOT / "tests" / "fixtures" / "elf" / "sketch-ok-2.elf"


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return match.group(0)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_extras_name_the_distributions_of_pyproject() -> None:
    declared = PROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        names = {canonical(requirement_name(r)) for r in declared[extra]}
        expected = {canonical(dist) for dist in modules.values()}
        assert names - expected == {canonical(n) for n in OPTIONAL_IN_EXTRA.get(extra, set())}, extra
        assert expected <= names, extra


def expose_installed(dist_name: str, target: Path) -> None:
    """Symlinks the top-level files of an installed distribution (and its metadata) into target."""
    dist = importlib.metadata.distribution(dist_name)
    site = Path(str(dist.locate_file("")))
    for entry in {Path(str(f)).parts[0] for f in dist.files or []}:
        if entry.endswith(".pth") or entry in ("..", "__pycache__"):
            continue
        link = target / entry
        if not link.exists():
            link.symlink_to(site / entry)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bare-install")
    # The wheel, built from a clean copy (a build in the checkout would leave build/ there).
    source = copy_python_project(tmp / "source")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheels"), str(source)],
        check=True,
        timeout=180,
        env=env,
    )
    wheel = next((tmp / "wheels").glob("x8manager-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=180,
        env=env,
    )
    core = tmp / "core-dependencies"
    core.mkdir()
    for requirement in PROJECT["dependencies"]:
        expose_installed(requirement_name(requirement), core)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "x8-test-core-dependencies.pth").write_text(f"{core}\n")
    return venv


def run(venv: Path, *command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The venv's bin first; no PYTHONPATH from the test run leaks the full dependencies in.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


def test_only_the_core_is_importable(bare_venv: Path) -> None:
    optional = sorted(module for modules in EXTRAS.values() for module in modules)
    probe = f"import importlib.util as u; print([m for m in {optional!r} if u.find_spec(m)])"
    result = run(bare_venv, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # The library apps import, and the services on core dependencies only.
    result = run(bare_venv, "python", "-c", "import x8manager.rpc, x8manager.proxy.cli, x8manager.m4sim.cli")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ["m4-proxy", "m4-sim", "m4-flasher", "x8-doctor", "x8-trace", "x8",
                                    "x8-monitor"])
def test_core_console_scripts_work(bare_venv: Path, script: str) -> None:
    result = run(bare_venv, script, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "Traceback" not in result.stderr


def test_every_console_script_is_exercised() -> None:
    assert set(PROJECT["scripts"]) == {
        "m4-proxy", "m4-sim", "m4-flasher", "x8-apps", "x8-doctor", "x8-trace", "x8", "x8-monitor"}


def assert_names_extra(result: subprocess.CompletedProcess[str], program: str, extra: str) -> None:
    assert result.returncode == EXIT_MISSING_EXTRA, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert f"pip install 'x8manager[{extra}]'" in result.stderr, result.stderr
    assert result.stderr.startswith(f"{program}:") or f"{program}:" in result.stderr


@pytest.mark.parametrize("arguments", [["--help"], ["list"], ["new", "demo"], ["lint", "."]])
def test_x8_apps_names_the_apps_extra(bare_venv: Path, tmp_path: Path, arguments: list[str]) -> None:
    result = run(bare_venv, "x8-apps", *arguments, cwd=tmp_path)
    assert_names_extra(result, "x8-apps", "apps")
    assert "PyYAML" in result.stderr and "jsonschema" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_m4_flasher_status_works_on_the_core(bare_venv: Path, tmp_path: Path) -> None:
    result = run(bare_venv, "m4-flasher", "status", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no flash recorded yet" in result.stdout


def test_m4_flasher_checks_a_sketch_on_the_core(bare_venv: Path, tmp_path: Path) -> None:
    # The ELF check reads program headers itself (as openocd does): no extra is needed to flash.
    common = ["--state-dir", str(tmp_path / "state"), "--lock", str(tmp_path / "lock"), "--openocd", "false"]
    result = run(bare_venv, "m4-flasher", "flash", *common, str(SKETCH))
    assert "Traceback" not in result.stderr
    assert "extra" not in result.stderr
    assert result.returncode == 1, result.stdout + result.stderr  # checked, then 'false' failed as openocd
