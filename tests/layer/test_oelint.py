"""oelint-adv, the recipe linter, on every recipe, bbappend, include and class of the layer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import LAYER_ROOT, append_files, class_files, include_files, recipe_files

pytestmark = pytest.mark.layer

# homepageping needs the network, which CI lacks.
OELINT_ARGS = ["--suppress", "oelint.vars.homepageping", "--quiet", "--jobs", "1"]


# Each release our LAYERSERIES_COMPAT names.
@pytest.mark.parametrize("release", ["scarthgap", "wrynose"])
def test_oelint_adv_is_clean(release: str) -> None:
    files = [str(path) for path in recipe_files() + append_files() + include_files() + class_files()]
    assert len(files) >= 6
    result = subprocess.run(
        [sys.executable, "-m", "oelint_adv", "--release", release, *OELINT_ARGS, *files],
        cwd=LAYER_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and findings == "", f"oelint-adv findings:\n{findings}"
