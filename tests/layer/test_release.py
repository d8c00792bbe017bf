"""The release: one version, an sdist and a wheel that hold what a user needs and nothing else,
twine's check, and the workflow that publishes them on a version tag.

The sdist and the wheel are built here by ``python -m build`` (without isolation: the venv's
setuptools, offline) from a clean copy of the checkout; the release workflow runs this file on the
very files it publishes instead (``X8_RELEASE_DIST=dist``).
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import bb.data_smart
import pytest
import yaml

import x8manager

from .conftest import LAYER_ROOT, copy_python_project, parse_recipe

pytestmark = pytest.mark.layer

PYPROJECT = tomllib.loads((LAYER_ROOT / "pyproject.toml").read_text())
UNITS = Path("recipes-python/x8-manager/files")
RECIPES = LAYER_ROOT / "recipes-python" / "x8-manager"
# What the sdist holds besides src/ and the units (PKG-INFO and setup.cfg are written by setuptools).
SDIST_TOP = {"LICENSE", "MANIFEST.in", "PKG-INFO", "README.md", "pyproject.toml", "setup.cfg", "src",
             "recipes-python"}
LEFTOVERS = ("__pycache__", ".egg-info", ".pyc")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(sdist, wheel, the src/ folder they were built from)."""
    given = os.environ.get("X8_RELEASE_DIST")
    if given:
        folder, source = Path(given), LAYER_ROOT
    else:
        tmp = tmp_path_factory.mktemp("release")
        source = copy_python_project(tmp / "source")
        shutil.copy2(LAYER_ROOT / "MANIFEST.in", source / "MANIFEST.in")
        shutil.copytree(LAYER_ROOT / UNITS, source / UNITS)
        folder = tmp / "dist"
        build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(folder), str(source)]
        subprocess.run(build, check=True, timeout=300, capture_output=True)
    [sdist] = folder.glob("x8manager-*.tar.gz")
    [wheel] = folder.glob("x8manager-*-py3-none-any.whl")
    return sdist, wheel, source / "src"


def package_files(src: Path) -> set[str]:
    """Every file of the package tree, relative to src/, as a clean checkout has it."""
    return {path.relative_to(src).as_posix() for path in (src / "x8manager").rglob("*")
            if path.is_file() and not any(part.endswith(LEFTOVERS) for part in path.parts)}


def test_the_version_lives_in_one_place() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "x8manager.__version__"}


def test_the_recipe_s_pv_is_the_package_s_version(bb_datastore: bb.data_smart.DataSmart) -> None:
    # The recipe's dist-info path (x8manager-${PV}.dist-info) and the packages' versions follow PV.
    [recipe] = RECIPES.glob("x8-manager_*.bb")
    assert parse_recipe(bb_datastore, recipe).getVar("PV") == x8manager.__version__, \
        "rename the recipe to x8-manager_<x8manager.__version__>.bb"


def test_the_wheel_holds_the_package_and_its_data_and_nothing_else(dist: tuple[Path, Path, Path]) -> None:
    _, wheel, src = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.parser.Parser().parsestr(
            archive.read(f"x8manager-{x8manager.__version__}.dist-info/METADATA").decode())
        entry_points = archive.read(f"x8manager-{x8manager.__version__}.dist-info/entry_points.txt").decode()
    package = {name for name in names if not name.startswith("x8manager-")}
    assert package == package_files(src)
    # What a user needs beside the code: the templates x8-apps new writes, the flasher's openocd
    # configurations, the type marker; the license in the metadata.
    assert "x8manager/py.typed" in package
    assert {"x8manager/apps/templates/m4_sketch/sketch.ino.tmpl",
            "x8manager/apps/templates/common/Dockerfile.tmpl"} <= package
    assert any(name.startswith("x8manager/flasher/") and name.endswith(".cfg") for name in package)
    assert any(name.endswith(".dist-info/LICENSE") or name.endswith(".dist-info/licenses/LICENSE")
               for name in names)
    assert not any(part in ("tests", "test") for name in names for part in name.split("/"))
    assert not any(name.endswith((".service", ".socket", ".pyc")) for name in names)
    assert metadata["Name"] == "x8manager" and metadata["Version"] == x8manager.__version__
    assert metadata["Requires-Python"] == ">=3.11"
    assert {"host", "apps", "flasher", "qemu"} <= set(metadata.get_all("Provides-Extra") or [])
    for script in PYPROJECT["project"]["scripts"]:
        assert f"\n{script} = " in entry_points


def test_the_sdist_builds_the_wheel_and_carries_the_units(dist: tuple[Path, Path, Path]) -> None:
    sdist, _, src = dist
    top = f"x8manager-{x8manager.__version__}"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{top}/") for name in archive.getnames() if name != top}
    assert {name.split("/")[0] for name in names} == SDIST_TOP
    assert {f"src/{name}" for name in package_files(src)} <= names
    units = {path.relative_to(LAYER_ROOT).as_posix() for path in (LAYER_ROOT / UNITS).iterdir()}
    assert units and units <= names
    assert not any(part in ("tests", "test") for name in names for part in name.split("/"))


def test_twine_check_passes(dist: tuple[Path, Path, Path]) -> None:
    sdist, wheel, _ = dist
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def release_workflow() -> dict[Any, Any]:
    data = yaml.safe_load((LAYER_ROOT / ".github" / "workflows" / "release.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_a_version_tag_builds_checks_attaches_and_publishes() -> None:
    workflow = release_workflow()
    assert workflow[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads the key "on" as True
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    script = "\n".join(step.get("run", "") for step in jobs["build"]["steps"])
    for command in ("scripts/bootstrap", "python -m build", "twine check --strict dist/*",
                    "X8_RELEASE_DIST=dist .venv/bin/python -m pytest -q tests/layer/test_release.py"):
        assert command in script
    assert jobs["github-release"]["permissions"] == {"contents": "write"}
    assert "gh release create" in "\n".join(step.get("run", "") for step in jobs["github-release"]["steps"])
    pypi = jobs["pypi"]
    assert pypi["environment"]["name"] == "pypi" and pypi["permissions"] == {"id-token": "write"}
    assert [step["uses"] for step in pypi["steps"] if "pypi-publish" in step.get("uses", "")] == [
        "pypa/gh-action-pypi-publish@release/v1"]
    assert "build" in pypi["needs"] and "github-release" in pypi["needs"]
