"""python3-arduino-router-bridge: Arduino's Bridge client from its PyPI sdist, built with the
setuptools PEP 517 backend its pyproject.toml names, its MPL-2.0 license file checksummed; the
same file as in the wheel this venv installed from PyPI."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path

import bb.data_smart
import pytest

from .conftest import LAYER_ROOT, parse_recipe

pytestmark = pytest.mark.layer

RECIPE = LAYER_ROOT / "recipes-python/python3-arduino-router-bridge/python3-arduino-router-bridge_0.5.1.bb"


def test_recipe(bb_datastore: bb.data_smart.DataSmart) -> None:
    d = parse_recipe(bb_datastore, RECIPE)
    assert d.getVar("LICENSE") == "MPL-2.0"
    assert d.getVar("PYPI_PACKAGE") == "arduino_router_bridge"  # the sdist's PEP 625 name
    assert re.fullmatch(r"[0-9a-f]{64}", d.getVarFlag("SRC_URI", "sha256sum") or "")
    assert "python3-msgpack" in d.getVar("RDEPENDS:python3-arduino-router-bridge").split()
    inherits = [line.split()[1:] for line in RECIPE.read_text().splitlines() if line.startswith("inherit ")]
    # pyproject.toml: build-backend = "setuptools.build_meta".
    assert inherits == [["pypi", "python_setuptools_build_meta"]]


def test_license_checksum_is_the_distributions_license_file(bb_datastore: bb.data_smart.DataSmart) -> None:
    d = parse_recipe(bb_datastore, RECIPE)
    name, _, md5 = d.getVar("LIC_FILES_CHKSUM").removeprefix("file://").partition(";md5=")
    dist = importlib.metadata.distribution("arduino-router-bridge")
    assert dist.version == d.getVar("PV")
    [license_file] = [f for f in dist.files or [] if Path(str(f)).name == name]
    assert hashlib.md5(Path(str(dist.locate_file(license_file))).read_bytes()).hexdigest() == md5
    assert dist.metadata["License-Expression"] == "MPL-2.0"


def test_patches_say_their_upstream_status() -> None:
    patches = sorted(RECIPE.parent.glob("files/*.patch"))
    assert patches
    for patch in patches:
        assert re.search(r"^Upstream-Status: (Pending|Submitted|Backport|Denied|Inappropriate \[.+\])",
                         patch.read_text(), re.M), patch
