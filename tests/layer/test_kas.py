"""The kas files: valid against kas's own JSON schema, every repository pinned to a full commit,
a distro set, this layer and the opt-in switch present in every buildable configuration; one
series file per LAYERSERIES_COMPAT series, pinned to that series' lmp-manifest branch, and machine
files that take their pins from their series."""

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
# The shared part (kas/lmp.yml) and one file of pins per series; neither names a machine.
SHARED = LAYER_ROOT / "kas" / "lmp.yml"
# series -> (its foundriesio/lmp-manifest branch, the commit of that branch the pins come from)
SERIES = {
    "scarthgap": ("scarthgap", "542654a850c2984675515a8816110c2911d2df64"),
    "wrynose": ("main", "4c38e3363014c73df582f0d48e2ae0c8ff68e8e8"),
}
SERIES_FILES = {series: LAYER_ROOT / "kas" / f"lmp-{series}.yml" for series in SERIES}
# machine file -> the series whose pins it takes
MACHINE_FILES = {
    "qemuarm64-secureboot.yml": "scarthgap",
    "portenta-x8.yml": "scarthgap",
    "qemuarm64-secureboot-wrynose.yml": "wrynose",
}
BUILDABLE = [path for path in KAS_FILES if path.name in MACHINE_FILES]
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


def test_there_are_the_configurations_of_both_series() -> None:
    series_files = {path.name for path in SERIES_FILES.values()}
    assert {path.name for path in KAS_FILES} == {"lmp.yml", *series_files, *MACHINE_FILES}


def layer_series() -> list[str]:
    [line] = [
        line
        for line in (LAYER_ROOT / "conf" / "layer.conf").read_text().splitlines()
        if line.startswith("LAYERSERIES_COMPAT_x8-manager")
    ]
    return line.split("=", 1)[1].strip().strip('"').split()


def test_a_series_file_for_every_series_the_layer_declares() -> None:
    assert layer_series() == list(SERIES) == ["scarthgap", "wrynose"]
    for path in SERIES_FILES.values():
        assert load(path)["header"]["includes"] == ["kas/lmp.yml"], path.name


@pytest.mark.parametrize("series", SERIES)
def test_series_pins_come_from_the_series_lmp_manifest_branch(series: str) -> None:
    """The series file pins every repository the shared part names, and the lmp-manifest pin is
    the commit of the branch that tracks the series (scarthgap: branch scarthgap; wrynose: main)."""
    branch, commit = SERIES[series]
    path = SERIES_FILES[series]
    comments = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    assert f'foundriesio/lmp-manifest branch "{branch}" (commit {commit}' in comments, (
        f"{path.name}: say which lmp-manifest branch and commit the pins come from"
    )
    config = merged(path)
    assert config["repos"]["lmp-manifest"]["commit"] == commit
    shared = set(load(SHARED)["repos"])
    for name in shared - {"meta-x8-manager"}:
        assert FULL_SHA.match(config["repos"][name].get("commit", "")), f"{path.name}: {name} not pinned"
    assert not any(repo and "commit" in repo for repo in load(SHARED)["repos"].values()), "lmp.yml: no pins"


def test_the_series_pin_different_commits() -> None:
    scarthgap, wrynose = (merged(SERIES_FILES[series])["repos"] for series in SERIES)
    for name in ("bitbake", "openembedded-core", "meta-openembedded", "meta-lmp", "lmp-manifest"):
        assert scarthgap[name]["commit"] != wrynose[name]["commit"], name
    # LmP main dropped meta-clang and meta-parsec from its base layers.
    assert "meta-clang" in scarthgap and "meta-clang" not in wrynose
    assert "meta-parsec" in scarthgap["meta-security"]["layers"]
    assert "meta-parsec" not in wrynose["meta-security"]["layers"]


@pytest.mark.parametrize("name", sorted(MACHINE_FILES))
def test_machine_files_take_their_series_pins(name: str) -> None:
    """A machine file includes its series file and overrides none of the series' base pins except
    where it follows another manifest (portenta-x8: Arduino's)."""
    series = MACHINE_FILES[name]
    data = load(LAYER_ROOT / "kas" / name)
    assert data["header"]["includes"] == [f"kas/lmp-{series}.yml"]
    if name != "portenta-x8.yml":
        base = merged(SERIES_FILES[series])["repos"]
        config = merged(LAYER_ROOT / "kas" / name)["repos"]
        assert {key: config[key] for key in base} == base


def test_the_qemu_machine_files_of_both_series_differ_only_in_pins() -> None:
    scarthgap = merged(LAYER_ROOT / "kas" / "qemuarm64-secureboot.yml")
    wrynose = merged(LAYER_ROOT / "kas" / "qemuarm64-secureboot-wrynose.yml")
    for key in ("distro", "machine", "target", "local_conf_header"):
        assert scarthgap[key] == wrynose[key], key
    assert scarthgap["repos"]["meta-arm"]["layers"] == wrynose["repos"]["meta-arm"]["layers"]


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
