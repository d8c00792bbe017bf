"""The kas files: valid against kas's own JSON schema, every repository pinned to a full commit,
a distro set, this layer and the opt-in switch present in every buildable configuration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kas.configschema import CONFIGSCHEMA

from .conftest import LAYER_ROOT

pytestmark = pytest.mark.layer

KAS_FILES = sorted((LAYER_ROOT / "kas").glob("*.yml"))
BUILDABLE = [path for path in KAS_FILES if path.stem != "lmp-scarthgap"]
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
# The highest format every kas 5.x reads (kas 5.0 and 5.1 stop at 20).
KAS_5_FORMAT = 20


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), path
    return data


def merged(path: Path) -> dict[str, Any]:
    """The configuration after kas's include merge (includes first, the file itself last)."""

    def merge(base: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
        result = dict(base)
        for key, value in upper.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merge(result[key], value)
            else:
                result[key] = value
        return result

    data = load(path)
    config: dict[str, Any] = {}
    for include in data.get("header", {}).get("includes", []):
        config = merge(config, merged(LAYER_ROOT / include))
    return merge(config, data)


def test_there_are_the_three_configurations() -> None:
    assert {path.stem for path in KAS_FILES} >= {"lmp-scarthgap", "portenta-x8", "qemuarm64-secureboot"}


@pytest.mark.parametrize("path", KAS_FILES, ids=lambda path: path.name)
def test_validates_against_kas_schema(path: Path) -> None:
    data = load(path)
    jsonschema.validate(data, CONFIGSCHEMA)
    assert data["header"]["version"] <= KAS_5_FORMAT
    for include in data["header"].get("includes", []):
        assert (LAYER_ROOT / include).is_file(), f"{path.name}: include {include} (paths are repo-relative)"


@pytest.mark.parametrize("path", BUILDABLE, ids=lambda path: path.name)
def test_buildable_configuration(path: Path) -> None:
    config = merged(path)
    jsonschema.validate(config, CONFIGSCHEMA)
    assert config.get("distro", "").startswith("lmp")
    assert config.get("machine") not in (None, "unset")
    repos = config["repos"]
    assert repos["meta-x8-manager"] is None or "url" not in repos["meta-x8-manager"], (
        "this layer is the local repo"
    )
    for name, repo in repos.items():
        if repo and repo.get("url"):
            assert FULL_SHA.match(repo.get("commit", "")), f"{path.name}: {name} is not pinned to a full SHA"
    local_conf = "\n".join(config["local_conf_header"].values())
    assert 'DISTRO_FEATURES:append = " x8-manager"' in local_conf
    assert "packagegroup-x8-manager" in local_conf
    # kas needs exactly one repository with oe-init-build-env, and bitbake beside it.
    assert repos["openembedded-core"]["path"].rsplit("/", 1)[0] == repos["bitbake"]["path"].rsplit("/", 1)[0]


def test_portenta_x8_follows_arduinos_manifest() -> None:
    repos = merged(LAYER_ROOT / "kas" / "portenta-x8.yml")["repos"]
    assert repos["meta-arduino"]["commit"] == "70a86b2938eed7c574b1912c6ce654d9ec016d19"
    assert set(repos["meta-arduino"]["layers"]) == {
        "meta-arduino-common",
        "meta-arduino-nxp",
        "meta-arduino-lmp",
    }
    assert repos["meta-lmp"]["commit"] == "aa75703d6c459ae57b35882057e21ecf8a78f69d"
    assert "meta-freescale" in repos
