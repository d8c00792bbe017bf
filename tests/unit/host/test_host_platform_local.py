"""The platform.local.txt snippet of docs/tools.md: its upload pattern, expanded as the IDE expands it,
runs x8 upload, and the IDE gets x8's exit code (3 for a sketch the flasher's check refuses)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from x8manager.common.net import free_local_port

ROOT = Path(__file__).resolve().parents[3]
SNIPPET = ROOT / "docs" / "platform.local.txt"
ELF_FIXTURES = ROOT / "tests" / "fixtures" / "elf"


def properties() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in SNIPPET.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def expand(pattern: str, values: dict[str, str]) -> str:
    """Arduino's {name} substitution, repeated until nothing changes (properties refer to properties)."""
    while True:
        expanded = re.sub(r"\{([^{}]+)\}", lambda m: values.get(m[1], m[0]), pattern)
        if expanded == pattern:
            return expanded
        pattern = expanded


def upload_command(build_path: Path, project: str) -> list[str]:
    props = properties()
    tool = props["upload.tool.default"]
    values = {key.removeprefix(f"tools.{tool}."): value for key, value in props.items()
              if key.startswith(f"tools.{tool}.")}
    values.update({"build.path": str(build_path), "build.project_name": project})
    return shlex.split(expand(props[f"tools.{tool}.upload.pattern"], values))


def test_the_docs_show_the_tested_snippet() -> None:
    page = (ROOT / "docs" / "tools.md").read_text()
    for line in SNIPPET.read_text().splitlines():
        assert f"\n{line}\n" in page, line


def run_as_the_ide(tmp_path: Path, elf: str) -> subprocess.CompletedProcess[str]:
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy(ELF_FIXTURES / elf, build / "Blink.ino.elf")
    argv = upload_command(build, "Blink.ino")
    assert argv == ["x8", "upload", str(build / "Blink.ino.elf")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "X8_DEVICE": f"ssh://fio@127.0.0.1:{free_local_port()}"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_pattern_runs_x8_upload_and_a_refused_sketch_exits_3(tmp_path: Path) -> None:
    if shutil.which("x8", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("x8 console script not installed in this environment (pip install -e .)")
    result = run_as_the_ide(tmp_path, "truncated.elf")
    assert result.returncode == 3 and result.stdout.startswith("rejected: ")


def test_a_good_sketch_and_no_device_exits_1_with_the_reason(tmp_path: Path) -> None:
    if shutil.which("x8", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("x8 console script not installed in this environment (pip install -e .)")
    result = run_as_the_ide(tmp_path, "sketch-ok.elf")
    assert result.returncode == 1 and "x8: ssh://fio@127.0.0.1:" in result.stderr
