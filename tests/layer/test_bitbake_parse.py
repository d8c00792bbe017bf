"""Every recipe, bbappend, class and conf file of the layer through BitBake's own parser, as far
as that goes without openembedded-core (see conftest.py). The full parse with oe-core, meta-oe,
meta-lmp and meta-arduino is scripts/check-layer."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import bb.data
import bb.parse
import pytest

from .conftest import (
    LAYER_ROOT,
    append_files,
    class_files,
    include_files,
    layer_files,
    parse_recipe,
    recipe_files,
)

pytestmark = pytest.mark.layer

ALL_METADATA = recipe_files() + append_files() + class_files() + include_files() + layer_files("conf/*.conf")


def parse_layer_conf(d: bb.data_smart.DataSmart) -> bb.data_smart.DataSmart:
    d.setVar("LAYERDIR", str(LAYER_ROOT))
    d.setVar("BBFILES", "")
    d.setVar("BBFILES_DYNAMIC", "")
    bb.parse.handle(str(LAYER_ROOT / "conf" / "layer.conf"), d, True)
    # As BitBake's cooker does after each layer.conf: freeze ${LAYERDIR} in what was set.
    d.expandVarref("LAYERDIR")
    d.delVar("LAYERDIR")
    return d


def test_the_layer_has_metadata() -> None:
    names = {path.name for path in ALL_METADATA}
    assert {"layer.conf", "x8-manager_0.1.0.bb", "packagegroup-x8-manager.bb"} <= names


@pytest.mark.parametrize("path", ALL_METADATA, ids=lambda path: str(path.relative_to(LAYER_ROOT)))
def test_bitbake_reads_every_statement(path: Path) -> None:
    """The parser turns every line into statements: no syntax BitBake would reject."""
    bb.parse.parse_py.BBHandler.cached_statements.clear()
    if path.suffix == ".conf":
        bb.parse.parse_py.ConfHandler.init(bb.data.init())
        d = bb.data.init()
        d.setVar("LAYERDIR", str(LAYER_ROOT))
        bb.parse.handle(str(path), d, True)
    else:
        statements = bb.parse.parse_py.BBHandler.get_statements(str(path), str(path), path.name)
        assert len(statements) > 0


def test_layer_conf(bb_datastore: bb.data_smart.DataSmart) -> None:
    d = parse_layer_conf(bb_datastore)
    assert d.getVar("BBFILE_COLLECTIONS").split() == ["x8-manager"]
    # Yocto 5.0 (LmP v95-v97, Arduino's X8 images) and 6.0 (LmP main), from one branch.
    assert d.getVar("LAYERSERIES_COMPAT_x8-manager").split() == ["scarthgap", "wrynose"]
    assert set(d.getVar("LAYERDEPENDS_x8-manager").split()) == {"core", "meta-python", "openembedded-layer"}
    assert d.getVar("BBFILE_PRIORITY_x8-manager").isdigit()
    assert (LAYER_ROOT / "README.md").is_file()


def test_the_checkout_holds_one_layer() -> None:
    """yocto-check-layer tests every conf/layer.conf it finds under the layer it is given: a
    second one (a test fixture, a template) is a second layer, which fails its run."""
    # What check-layer exports: the files git tracks or would track.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=LAYER_ROOT, check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    found = [name for name in listed if name == "conf/layer.conf" or name.endswith("/conf/layer.conf")]
    assert found == ["conf/layer.conf"]


def test_layer_conf_changes_no_other_recipe(bb_datastore: bb.data_smart.DataSmart) -> None:
    """Only the layer's own bookkeeping and the sanity class: nothing that reaches other recipes'
    signatures or images (yocto-check-layer's test_signatures)."""
    for name in ("BBFILES", "BBFILES_DYNAMIC", "BBFILE_COLLECTIONS", "INHERIT"):
        bb_datastore.setVar(name, "")
    before = {name: bb_datastore.getVar(name, False) for name in bb_datastore if not name.startswith("__")}
    d = parse_layer_conf(bb_datastore)
    after = {name: d.getVar(name, False) for name in d if not name.startswith("__")}
    touched = {name for name in after if before.get(name) != after[name]} - {"FILE"}
    own = {name for name in touched if name.endswith("_x8-manager")}
    assert touched - own == {"BBPATH", "BBFILES", "BBFILES_DYNAMIC", "BBFILE_COLLECTIONS", "INHERIT"}
    assert d.getVar("INHERIT").split() == ["sanity_meta_x8_manager"]


def test_bbfiles_patterns_find_every_recipe_and_dynamic_append(bb_datastore: bb.data_smart.DataSmart) -> None:
    d = parse_layer_conf(bb_datastore)
    patterns = d.getVar("BBFILES").split()
    for path in recipe_files() + layer_files("recipes-*/*/*.bbappend"):
        assert any(fnmatch.fnmatch(str(path), pattern) for pattern in patterns), (path, patterns)
    dynamic = dict(entry.split(":", 1)[::-1] for entry in d.getVar("BBFILES_DYNAMIC").split())
    for path in layer_files("dynamic-layers/*/*/*/*.bbappend"):
        matching = [
            collection for pattern, collection in dynamic.items() if fnmatch.fnmatch(str(path), pattern)
        ]
        # dynamic-layers/<collection>/...: keyed on the collection the append's recipe lives in.
        assert matching == [path.relative_to(LAYER_ROOT).parts[1]], path


def test_sanity_class_parses(bb_datastore: bb.data_smart.DataSmart) -> None:
    bb.parse.handle(str(LAYER_ROOT / "classes-global" / "sanity_meta_x8_manager.bbclass"), bb_datastore, True)
    assert "x8_manager_feature_check" in (bb_datastore.getVar("__BBHANDLERS", False) or [])


def test_x8_manager_recipe(bb_datastore: bb.data_smart.DataSmart) -> None:
    d = parse_recipe(bb_datastore, LAYER_ROOT / "recipes-python/x8-manager/x8-manager_0.1.0.bb")
    assert not d.getVar("__SKIPPED")
    packages = d.getVar("PACKAGES").split()
    assert packages[:5] == [
        "x8-manager-proxy",
        "x8-manager-flasher",
        "x8-manager-apps",
        "x8-manager-doctor",
        "x8-manager-sim",
    ]
    # The QEMU harness is a host tool (pip extra "qemu"), not device payload.
    assert not any("qemu" in package for package in packages)
    assert d.getVar("SYSTEMD_SERVICE:x8-manager-proxy") == "m4-proxy.socket m4-proxy.service"
    assert d.getVar("SYSTEMD_SERVICE:x8-manager-flasher") == "m4-flasher.service"
    assert "openocd" in d.getVar("RDEPENDS:x8-manager-flasher").split()
    assert "python3-msgpack" in d.getVar("RDEPENDS:x8-manager").split()
    # Not opted in: nothing stands in for Arduino's package name, but the two never coexist.
    assert d.getVar("RPROVIDES:x8-manager-proxy") == ""
    assert d.getVar("RCONFLICTS:x8-manager-proxy") == "m4-proxy"
    assert "AUTOREV" not in (d.getVar("SRCREV", False) or "")
    install = d.getVar("do_install")
    assert "@BINDIR@" in install and "${bindir}" not in install  # expanded: sed gets the real path
    assert "s|@BINDIR@|/usr/bin|g" in install


def test_x8_manager_recipe_opted_in(bb_datastore: bb.data_smart.DataSmart) -> None:
    bb_datastore.setVar("DISTRO_FEATURES", "systemd usrmerge x8-manager")
    d = parse_recipe(bb_datastore, LAYER_ROOT / "recipes-python/x8-manager/x8-manager_0.1.0.bb")
    assert d.getVar("RPROVIDES:x8-manager-proxy") == "m4-proxy"


def test_src_uri_names_only_files_of_this_checkout(bb_datastore: bb.data_smart.DataSmart) -> None:
    """Every file:// entry resolves inside the layer (FILESEXTRAPATHS + the recipe's files/), so
    the fetcher checksums our own tree and never goes to the network."""
    recipe = LAYER_ROOT / "recipes-python/x8-manager/x8-manager_0.1.0.bb"
    d = parse_recipe(bb_datastore, recipe)
    search = [Path(p) for p in d.getVar("FILESEXTRAPATHS").split(":") if p and p != "__default"]
    search.append(recipe.parent / "files")
    for entry in d.getVar("SRC_URI").split():
        scheme, _, rest = entry.partition("://")
        assert scheme == "file", entry
        name = rest.split(";")[0]
        assert any((base / name).exists() for base in search), f"{name} not found in {search}"
    assert "file://src" in d.getVar("SRC_URI")


def test_packagegroup(bb_datastore: bb.data_smart.DataSmart) -> None:
    d = parse_recipe(bb_datastore, LAYER_ROOT / "recipes-core/packagegroups/packagegroup-x8-manager.bb")
    assert set(d.getVar("RDEPENDS:packagegroup-x8-manager").split()) == {
        "x8-manager-conf",
        "x8-manager-proxy",
        "x8-manager-flasher",
        "x8-manager-apps",
        "x8-manager-doctor",
    }


def test_the_source_listing_is_a_class_not_recipe_python(bb_datastore: bb.data_smart.DataSmart) -> None:
    """The inline Python that lists src/ lives in classes-recipe/x8_manager_sources.bbclass."""
    recipe = LAYER_ROOT / "recipes-python/x8-manager/x8-manager_0.1.0.bb"
    assert not re.search(r"^def ", recipe.read_text(), re.MULTILINE)
    d = parse_recipe(bb_datastore, recipe)
    assert str(LAYER_ROOT / "classes-recipe/x8_manager_sources.bbclass") in d.getVar("BBINCLUDED").split()
    assert "file://src/x8manager/__init__.py;subdir=x8-manager-0.1.0" in d.getVar("SRC_URI").split()


def test_the_service_configuration_is_a_recipe_of_its_own(bb_datastore: bb.data_smart.DataSmart) -> None:
    """/etc/default/m4-proxy and m4-flasher come from x8-manager-conf (as meta-rauc's rauc-conf),
    not from the Python package: an integrator's M4_PROXY_ARGS rebuild only the small recipe."""
    python = parse_recipe(
        bb.data.createCopy(bb_datastore), LAYER_ROOT / "recipes-python/x8-manager/x8-manager_0.1.0.bb"
    )
    assert "/etc/default" not in " ".join(
        python.getVar(f"FILES:{package}") or "" for package in python.getVar("PACKAGES").split()
    )
    assert "M4_PROXY_ARGS" not in python.getVar("do_install")
    for package in ("x8-manager-proxy", "x8-manager-flasher"):
        assert "x8-manager-conf" in python.getVar(f"RRECOMMENDS:{package}").split()
    d = parse_recipe(bb_datastore, LAYER_ROOT / "recipes-python/x8-manager/x8-manager-conf_1.0.bb")
    assert d.getVar("CONFFILES:x8-manager-conf").split() == [
        "/etc/default/m4-proxy",
        "/etc/default/m4-flasher",
    ]
    assert d.getVar("M4_PROXY_ARGS") == "" and d.getVar("M4_FLASHER_ARGS") == ""


APPENDS = {
    "m4-proxy": LAYER_ROOT
    / "dynamic-layers/meta-arduino-common/recipes-connectivity/m4-proxy/m4-proxy.bbappend",
    "linux-firmware-arduino-portenta-x8-stm32h7": LAYER_ROOT
    / (
        "dynamic-layers/meta-arduino-nxp/recipes-kernel/linux-firmware/"
        "linux-firmware-arduino-portenta-x8-stm32h7_%.bbappend"
    ),
}


def apply_append(
    d: bb.data_smart.DataSmart,
    pn: str,
    distro_features: str,
    machine: str = "portenta-x8",
    with_append: bool = True,
) -> bb.data_smart.DataSmart:
    """The bbappend applied to an otherwise empty recipe named like its target, then finalised
    (anonymous python runs), as the cooker does after the target recipe's own statements."""
    d.setVar("PN", pn)
    d.setVar("BPN", pn)
    d.setVar("DISTRO_FEATURES", distro_features)
    d.setVar("OVERRIDES", machine)
    d.setVar("FILE", str(APPENDS[pn].with_suffix(".bb")))
    if with_append:
        bb.parse.parse_py.BBHandler.handle(str(APPENDS[pn]), d, True)
    try:
        bb.parse.ast.finalize(str(APPENDS[pn]), d)
    except bb.parse.SkipRecipe as skipped:
        d.setVar("__SKIPPED", str(skipped))
    return d


def public_values(d: bb.data_smart.DataSmart) -> dict[str, object]:
    return {name: d.getVar(name, False) for name in d if not name.startswith("__")}


@pytest.mark.parametrize("pn", sorted(APPENDS))
def test_appends_are_inert_without_the_switch(bb_datastore: bb.data_smart.DataSmart, pn: str) -> None:
    without = public_values(
        apply_append(bb.data.createCopy(bb_datastore), pn, "systemd usrmerge", with_append=False)
    )
    d = apply_append(bb_datastore, pn, "systemd usrmerge")
    assert not d.getVar("__SKIPPED")
    with_append = public_values(d)
    changed = {
        name for name in with_append.keys() | without.keys() if with_append.get(name) != without.get(name)
    }
    assert changed <= {"BBINCLUDED"}


def test_m4_proxy_is_skipped_when_opted_in(bb_datastore: bb.data_smart.DataSmart) -> None:
    d = apply_append(bb_datastore, "m4-proxy", "systemd usrmerge x8-manager")
    assert "replaced by x8-manager-proxy" in (d.getVar("__SKIPPED") or "")


def test_stm32h7_drops_monitor_units_when_opted_in(bb_datastore: bb.data_smart.DataSmart) -> None:
    pn = "linux-firmware-arduino-portenta-x8-stm32h7"
    bb_datastore.setVar(
        f"SYSTEMD_SERVICE:{pn}",
        "stm32h7-program.service m4-led-forwarder.service "
        "monitor-m4-elf-file.path monitor-m4-elf-file.service",
    )
    bb_datastore.setVar("do_install", "    :\n")
    bb_datastore.setVarFlag("do_install", "func", "1")
    d = apply_append(bb_datastore, pn, "systemd usrmerge x8-manager")
    assert d.getVar(f"SYSTEMD_SERVICE:{pn}").split() == [
        "stm32h7-program.service",
        "m4-led-forwarder.service",
    ]
    assert "monitor-m4-elf-file.service" in d.getVar("do_install")
    assert "x8-manager-flasher" in d.getVar(f"RRECOMMENDS:{pn}")


def test_readme_and_security_policy_as_yocto_check_layer_wants() -> None:
    """yocto-check-layer's test_readme (maintainer, patch, an e-mail address) and, from walnascar
    on, test_security (a non-empty SECURITY.md)."""
    readme = (LAYER_ROOT / "README.md").read_text()
    assert "maintainer" in readme.lower(), "README.md: name the maintainer(s)"
    assert "patch" in readme.lower(), "README.md: say how to send patches"
    assert re.search(r"[\w.+-]+@[\w-]+\.[\w.-]+", readme), "README.md: give an e-mail address"
    assert (LAYER_ROOT / "SECURITY.md").read_text().strip()
