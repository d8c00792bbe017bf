"""The documented "Add it to a FoundriesFactory" steps, read the way scripts/check-layer applies
them to a Factory-shaped checkout (check-layer.d/factory.py): each step names the file and the
exact line it adds, and together they add the layer, its bblayers entry and the opt-in switch."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from .conftest import LAYER_ROOT

pytestmark = pytest.mark.layer


def load_helper(name: str) -> ModuleType:
    path = LAYER_ROOT / "scripts" / "check-layer.d" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_steps_name_each_file_and_line_check_layer_applies() -> None:
    load_helper("pins")
    factory = load_helper("factory")
    _, steps = factory.step_text()
    assert len(steps) == 3
    applied = [(edit.context, edit.path, edit.text) for edit in factory.edits(steps)]
    assert applied == [
        ("lmp-manifest", "<factory>.xml", '<remote name="x8-manager" fetch="https://github.com/meta-x8-manager"/>'),
        (
            "lmp-manifest",
            "<factory>.xml",
            '<project name="meta-x8-manager" path="layers/meta-x8-manager" remote="x8-manager" '
            'revision="<commit SHA>"/>',
        ),
        ("lmp-manifest", "conf/bblayers-factory.inc", 'BASELAYERS += "${OEROOT}/layers/meta-x8-manager"'),
        (
            "meta-subscriber-overrides",
            "conf/machine/include/lmp-factory-custom.inc",
            'DISTRO_FEATURES:append = " x8-manager"',
        ),
        (
            "meta-subscriber-overrides",
            "recipes-samples/images/lmp-factory-image.bb",
            'CORE_IMAGE_BASE_INSTALL += "packagegroup-x8-manager"',
        ),
    ]


def test_the_factories_cover_both_series() -> None:
    load_helper("pins")
    factory = load_helper("factory")
    assert {f.series for f in factory.FACTORIES.values()} == {"scarthgap", "wrynose"}
    for config in factory.FACTORIES.values():
        assert (LAYER_ROOT / config.kas).is_file()
