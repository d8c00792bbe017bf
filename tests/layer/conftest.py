"""Shared helpers for the layer checks: BitBake's own parser (the `bb` library that the PyPI
package bitbake-setup ships) applied to this layer's metadata without openembedded-core.

Without oe-core there is no bitbake.conf and none of its classes. The recipes are therefore
evaluated on top of `SCARTHGAP_BASE`, the few directory variables of oe-core scarthgap's
bitbake.conf (with usrmerge, as LmP sets it) that our recipes use, or of wrynose's
(`SERIES_BASE`: from styhead on sources unpack into UNPACKDIR and S is under it), and every class
we inherit from oe-core is an empty stand-in file, so the recipe's own statements are what gets
evaluated.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest


def _standin_hashserv() -> None:
    """bitbake-setup ships BitBake's `bb` but not its `hashserv` package (the client of the
    hash-equivalence server), which bb.siggen imports at module level. Parsing never talks to a
    hash server, so empty stand-in modules satisfy the import."""
    if "hashserv" in sys.modules:
        return
    try:
        import hashserv  # noqa: F401, PLC0415  (a real BitBake checkout on sys.path has it)
    except ImportError:
        package = types.ModuleType("hashserv", "stand-in: parsing needs no hash-equivalence client")
        package.__path__ = []
        client = types.ModuleType("hashserv.client", "stand-in, see hashserv")
        package.client = client  # type: ignore[attr-defined]
        sys.modules["hashserv"] = package
        sys.modules["hashserv.client"] = client


_standin_hashserv()

import bb.data  # noqa: E402
import bb.parse  # noqa: E402
import bb.siggen  # noqa: E402

LAYER_ROOT = Path(__file__).resolve().parents[2]

# Values as oe-core scarthgap's meta/conf/bitbake.conf sets them with DISTRO_FEATURES usrmerge.
SCARTHGAP_BASE = {
    "prefix": "/usr",
    "exec_prefix": "/usr",
    "base_prefix": "",
    "bindir": "${exec_prefix}/bin",
    "sysconfdir": "/etc",
    "datadir": "${prefix}/share",
    "libdir": "${exec_prefix}/lib",
    "nonarch_base_libdir": "${exec_prefix}/lib",
    "nonarch_libdir": "${exec_prefix}/lib",
    "systemd_unitdir": "${nonarch_base_libdir}/systemd",
    "systemd_system_unitdir": "${systemd_unitdir}/system",
    "PYTHON_SITEPACKAGES_DIR": "${libdir}/python3.12/site-packages",
    "WORKDIR": "/build/work",
    "BP": "${BPN}-${PV}",
    "S": "${WORKDIR}/${BP}",
    "D": "/build/image",
    "THISDIR": "${@os.path.dirname(d.getVar('FILE'))}",
    "PACKAGES": "${PN}-src ${PN}-dbg ${PN}-staticdev ${PN}-dev ${PN}-doc ${PN}-locale "
    "${PACKAGE_BEFORE_PN} ${PN}",
    # bitbake.conf's default, cut to the directories a Python package can install into, plus
    # what setuptools3-base.bbclass (inherited via python_setuptools_build_meta) adds.
    "FILES:${PN}": "${bindir}/* ${sysconfdir} ${PYTHON_SITEPACKAGES_DIR}",
    "FILESEXTRAPATHS": "__default:",
}

# The LAYERSERIES_COMPAT series and where each one's bitbake.conf unpacks sources and puts S.
SERIES_BASE = {
    "scarthgap": SCARTHGAP_BASE,
    # oe-core wrynose meta/conf/bitbake.conf: UNPACKDIR ??= "${WORKDIR}/sources", S = "${UNPACKDIR}/${BP}".
    "wrynose": {**SCARTHGAP_BASE, "UNPACKDIR": "${WORKDIR}/sources", "S": "${UNPACKDIR}/${BP}"},
}


def copy_python_project(target: Path) -> Path:
    """The Python project of this checkout (pyproject.toml, README.md, LICENSE, src/) copied to
    target as a clean checkout has it: without an editable install's egg-info or bytecode."""
    leftovers = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(LAYER_ROOT / "src", target / "src", ignore=leftovers)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(LAYER_ROOT / name, target / name)
    return target


def layer_files(*patterns: str) -> list[Path]:
    """The layer's metadata files matching the glob patterns, relative to the layer root."""
    found: set[Path] = set()
    for pattern in patterns:
        found.update(LAYER_ROOT.glob(pattern))
    return sorted(found)


def recipe_files() -> list[Path]:
    return layer_files("recipes-*/*/*.bb")


def append_files() -> list[Path]:
    return layer_files("recipes-*/*/*.bbappend", "dynamic-layers/*/*/*/*.bbappend")


def class_files() -> list[Path]:
    return layer_files("classes*/*.bbclass")


def include_files() -> list[Path]:
    return layer_files("recipes-*/*/*.inc", "dynamic-layers/*/*/*/*.inc")


def oe_core_classes_inherited() -> set[str]:
    """Class names our recipes inherit that are not in this layer (so oe-core's)."""
    own = {path.stem for path in class_files()}
    names: set[str] = set()
    for path in recipe_files() + append_files() + include_files():
        for line in path.read_text().splitlines():
            if line.startswith("inherit "):
                names.update(line.split()[1:])
            elif line.startswith("BBCLASSEXTEND"):
                names.update(line.partition("=")[2].strip().strip('"').split())
    return names - own


@pytest.fixture(scope="session")
def oe_core_standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BBPATH entry holding an empty stand-in for every oe-core class our recipes inherit
    (and base.bbclass, which BitBake inherits into every recipe)."""
    root = tmp_path_factory.mktemp("oe-core-standin")
    classes = root / "classes-recipe"
    classes.mkdir()
    for name in oe_core_classes_inherited() | {"base"}:
        (classes / f"{name}.bbclass").write_text(f"# empty stand-in for oe-core's {name}.bbclass\n")
    return root


def new_datastore(standin_dir: Path, series: str = "scarthgap") -> bb.data_smart.DataSmart:
    """A fresh BitBake datastore with the stand-in classes and this layer on BBPATH, with the
    directory variables of the series' bitbake.conf."""
    logging.getLogger("BitBake").setLevel(logging.WARNING)
    d = bb.data.init()
    d.setVar("BBPATH", f"{standin_dir}:{LAYER_ROOT}")
    d.setVar("__bbclasstype", "recipe")
    d.setVar("DISTRO_FEATURES", "systemd usrmerge")
    d.setVar("OVERRIDES", "")
    for name, value in SERIES_BASE[series].items():
        d.setVar(name, value)
    # The cooker's signature generator; unconfigured it is BitBake's "noop" one.
    bb.parse.siggen = bb.siggen.init(d)  # type: ignore[attr-defined]
    return d


@pytest.fixture
def bb_datastore(oe_core_standin_dir: Path) -> Iterator[bb.data_smart.DataSmart]:
    cwd = os.getcwd()
    try:
        yield new_datastore(oe_core_standin_dir)
    finally:
        os.chdir(cwd)
        bb.parse.clear_cache()


def parse_recipe(
    d: bb.data_smart.DataSmart, recipe: Path, appends: list[Path] | None = None
) -> bb.data_smart.DataSmart:
    """Parses and finalises a recipe (plus bbappends) the way the cooker does; returns the data."""
    pn, pv, _pr = bb.parse.vars_from_file(str(recipe), d)
    d.setVar("PN", pn)
    d.setVar("BPN", pn)
    d.setVar("PV", pv or "1.0")
    d.setVar("__BBAPPEND", " ".join(str(path) for path in appends or []))
    datastores = bb.parse.handle(str(recipe), d)
    return datastores[""]
