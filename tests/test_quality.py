"""The house rules the code is held to: ruff clean everywhere, mypy --strict clean on src/ and the
Python scripts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean_on_src_and_scripts() -> None:
    result = run_tool("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


def python_scripts() -> set[str]:
    """The scripts of scripts/ (and their helpers below it) that are Python, by shebang or suffix."""
    found = set()
    for path in (ROOT / "scripts").rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        first = path.read_bytes()[:100].split(b"\n", 1)[0]
        if path.suffix == ".py" or (first.startswith(b"#!") and b"python" in first):
            found.add(str(path.relative_to(ROOT)))
    return found


def test_every_python_script_is_under_ruff_and_mypy() -> None:
    """mypy --strict and ruff hold scripts/ to the rules of src/; a new script must be listed."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy_files = config["tool"]["mypy"]["files"]
    scripts = python_scripts()
    assert scripts, "no Python scripts found"
    for script in sorted(scripts):
        assert any(script == entry or script.startswith(entry.rstrip("/") + "/") for entry in mypy_files), (
            f"{script}: add it to [tool.mypy] files in pyproject.toml"
        )
    shown = run_tool("ruff", "check", "--no-cache", "--show-files", ".")
    checked = {str(Path(line).relative_to(ROOT)) for line in shown.stdout.split() if line.startswith("/")}
    missing = sorted(scripts - checked)
    assert not missing, f"ruff does not check {missing}: add them to extend-include in pyproject.toml"
