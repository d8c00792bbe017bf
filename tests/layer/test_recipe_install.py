"""The recipe's install, replayed on the host: the files SRC_URI names are unpacked as the
fetcher would, the recipe's own do_configure and do_install:append shell code runs, and
`pip install` stands in for python_pep517's wheel build + installer (both are PEP 517 builds of
the same pyproject.toml). Then every installed file must land in the package its FILES give,
every console script must be claimed explicitly, and every third-party import must be in the
RDEPENDS of the package that ships the importing module."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import bb.data_smart
import pytest

from x8manager.apps.scaffold import ROUTER_GROUP_GID
from x8manager.apps.schema import SYSTEM_SCHEMA
from x8manager.flasher.client import DEFAULT_SOCKET
from x8manager.flasher.lock import DEFAULT_LOCK_PATH
from x8manager.flasher.settings import DEFAULT_SOCKET_PATH

from .conftest import LAYER_ROOT, new_datastore, parse_recipe

pytestmark = pytest.mark.layer

RECIPE = LAYER_ROOT / "recipes-python" / "x8-manager" / "x8-manager_0.1.0.bb"
# Applied when meta-arduino-nxp (Arduino's stm32h7-program.service) is in the build.
ARDUINO_APPEND = (
    LAYER_ROOT / "dynamic-layers/meta-arduino-nxp/recipes-python/x8-manager" / "x8-manager_%.bbappend"
)
# Third-party Python modules -> the scarthgap recipes (oe-core / meta-python) that provide them.
MODULE_RECIPES = {
    "msgpack": "python3-msgpack",
    "yaml": "python3-pyyaml",
    "jsonschema": "python3-jsonschema",
}
HOST_SITE = f"${{libdir}}/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
# The parsed recipe, the image directory (${D}) and the files each package gets.
Installed = tuple[bb.data_smart.DataSmart, Path, dict[str, set[str]]]


def unpack(d: bb.data_smart.DataSmart, workdir: Path, recipe: Path = RECIPE) -> None:
    """file:// entries of SRC_URI copied to WORKDIR/<subdir>/<path as written> (UNPACKDIR from
    styhead on), searched like FILESPATH does (BitBake's unpack recreates an entry's intermediate
    directories)."""
    workdir = Path(d.getVar("UNPACKDIR") or workdir)
    search = [Path(p) for p in (d.getVar("FILESEXTRAPATHS") or "").split(":") if p and p != "__default"]
    search.append(recipe.parent / "files")
    for entry in d.getVar("SRC_URI").split():
        name, *params = entry.removeprefix("file://").split(";")
        subdir = dict(param.split("=", 1) for param in params).get("subdir", "")
        source = next(base / name for base in search if (base / name).exists())
        target = workdir / subdir / name
        assert not target.exists(), f"{entry}: two SRC_URI entries unpack to {target}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)


def run_shell_task(d: bb.data_smart.DataSmart, task: str) -> None:
    body = d.getVar(task)
    subprocess.run(["bash", "-euo", "pipefail", "-c", body], check=True, timeout=60)


def claim(files: list[str], patterns: list[str], root: Path) -> set[str]:
    """package.bbclass semantics, simplified: a FILES entry is a glob; a directory takes its tree."""
    claimed: set[str] = set()
    for pattern in patterns:
        for path in files:
            if fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
                claimed.add(path)
    return claimed


def install_recipe(tmp: Path, standin_dir: Path, appends: list[Path]) -> Installed:
    d = new_datastore(standin_dir)
    d.setVar("PYTHON_SITEPACKAGES_DIR", HOST_SITE)
    d.setVar("WORKDIR", str(tmp / "work"))
    d.setVar("D", str(tmp / "image"))
    d = parse_recipe(d, RECIPE, appends)

    unpack(d, Path(d.getVar("WORKDIR")))
    source = Path(d.getVar("S"))
    run_shell_task(d, "do_configure")
    image = Path(d.getVar("D"))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    subprocess.run(
        # --ignore-installed: without it pip would first uninstall the project's own (editable)
        # installation from the running venv, although the target is another root.
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-compile",
            "--ignore-installed",
            "--root",
            str(image),
            "--prefix",
            d.getVar("prefix"),
            str(source),
        ],
        check=True,
        timeout=180,
        env=env,
    )
    run_shell_task(d, "do_install")

    files = sorted("/" + str(path.relative_to(image)) for path in image.rglob("*") if not path.is_dir())
    packages: dict[str, set[str]] = {}
    remaining = list(files)
    for package in d.getVar("PACKAGES").split():
        patterns = (d.getVar(f"FILES:{package}") or "").split()
        packages[package] = claim(remaining, patterns, image)
        remaining = [path for path in remaining if path not in packages[package]]
    packages["<not packaged>"] = set(remaining)
    return d, image, packages


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, oe_core_standin_dir: Path) -> Installed:
    """Installed as in a build with meta-arduino-nxp (a superset of one without it)."""
    return install_recipe(tmp_path_factory.mktemp("recipe-install"), oe_core_standin_dir, [ARDUINO_APPEND])


@pytest.fixture(scope="module")
def installed_without_arduino(
    tmp_path_factory: pytest.TempPathFactory, oe_core_standin_dir: Path
) -> Installed:
    return install_recipe(tmp_path_factory.mktemp("recipe-install-plain"), oe_core_standin_dir, [])


@pytest.mark.parametrize("build", ["installed", "installed_without_arduino"])
def test_every_installed_file_is_packaged(build: str, request: pytest.FixtureRequest) -> None:
    _, _, packages = request.getfixturevalue(build)
    # bitbake's installed-vs-shipped QA check would fail the build on any of these.
    assert packages["<not packaged>"] == set()


def test_the_qemu_harness_is_no_device_payload(installed: Installed) -> None:
    d, _, packages = installed
    harness = f"{d.getVar('PYTHON_SITEPACKAGES_DIR')}/x8manager/qemu/"
    assert not any(path.startswith(harness) for files in packages.values() for path in files)
    assert (LAYER_ROOT / "src/x8manager/qemu/__init__.py").is_file()  # it stays in the pip package


def test_console_scripts_go_to_their_service_package(installed: Installed) -> None:
    d, _, packages = installed
    # x8 and x8-monitor are the laptop's (x8manager.host): the recipe leaves them out.
    scripts = set(tomllib.loads((LAYER_ROOT / "pyproject.toml").read_text())["project"]["scripts"]) - {
        "x8", "x8-monitor"}
    bindir = d.getVar("bindir")
    installed_scripts = {
        Path(path).name for files in packages.values() for path in files if path.startswith(bindir)
    }
    assert installed_scripts == scripts
    expected = {
        "m4-proxy": "x8-manager-proxy",
        "m4-flasher": "x8-manager-flasher",
        "x8-apps": "x8-manager-apps",
        "m4-sim": "x8-manager-sim",
        "x8-doctor": "x8-manager-doctor",
        "x8-trace": "x8-manager-doctor",
    }
    for script in scripts:
        assert script in expected, (
            f"new console script {script}: give it a package and an explicit FILES entry"
        )
        assert f"{bindir}/{script}" in packages[expected[script]]
        assert f"{bindir}/{script}" in d.getVar(f"FILES:{expected[script]}").split()


def test_units_and_config_are_installed_with_real_paths(installed: Installed) -> None:
    d, image, packages = installed
    unitdir = d.getVar("systemd_system_unitdir")
    for package, unit, program in (
        ("x8-manager-proxy", "m4-proxy.service", "m4-proxy"),
        ("x8-manager-flasher", "m4-flasher.service", "m4-flasher"),
    ):
        assert f"{unitdir}/{unit}" in packages[package]
        text = (image / unitdir.lstrip("/") / unit).read_text()
        assert "@BINDIR@" not in text and "@SYSCONFDIR@" not in text
        assert f"ExecStart={d.getVar('bindir')}/{program}" in text
        assert "EnvironmentFile=-/etc/default/" in text
        assert "After=stm32h7-program.service" in text
        assert unit in d.getVar(f"SYSTEMD_SERVICE:{package}").split()


def test_the_router_socket_unit_is_installed_and_enabled_with_the_proxy(installed: Installed) -> None:
    """m4-proxy.socket holds the router socket across proxy restarts (socket activation)."""
    d, image, packages = installed
    unit = f"{d.getVar('systemd_system_unitdir')}/m4-proxy.socket"
    assert unit in packages["x8-manager-proxy"]
    assert unit in d.getVar("FILES:x8-manager-proxy").split()
    assert d.getVar("SYSTEMD_SERVICE:x8-manager-proxy").split() == ["m4-proxy.socket", "m4-proxy.service"]
    lines = (image / unit.lstrip("/")).read_text().splitlines()
    for setting in ("ListenStream=/run/arduino-router.sock", "FileDescriptorName=router", "SocketUser=root",
                    "SocketGroup=arduino-router", "SocketMode=0660", "RemoveOnStop=no",
                    "WantedBy=sockets.target"):
        assert setting in lines
    service = (image / unit.lstrip("/")).with_name("m4-proxy.service").read_text().splitlines()
    assert "Wants=m4-proxy.socket" in service and "After=m4-proxy.socket" in service
    # The group the socket unit names is the one the package's sysusers.d file creates.
    sysusers = image / d.getVar("nonarch_libdir").lstrip("/") / "sysusers.d/x8-manager-proxy.conf"
    assert "g arduino-router 871" in sysusers.read_text()


def test_the_flasher_unit_makes_the_request_sockets_directory(installed: Installed) -> None:
    """systemd makes /run/m4-flasher (root, 0755) for the request socket, and keeps it across a
    stop: sketch containers bind-mount that directory, so it must stay the same directory."""
    d, image, _ = installed
    unit = (image / d.getVar("systemd_system_unitdir").lstrip("/") / "m4-flasher.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if line.startswith("RuntimeDirectory")
    )
    assert settings == {
        "RuntimeDirectory": DEFAULT_SOCKET_PATH.parent.name,
        "RuntimeDirectoryMode": "0755",
        "RuntimeDirectoryPreserve": "yes",
    }
    assert DEFAULT_SOCKET_PATH.parent == Path("/run") / settings["RuntimeDirectory"] == DEFAULT_SOCKET.parent


def test_flasher_brings_the_h7_lock_drop_in_for_arduinos_programmer(installed: Installed) -> None:
    """Arduino's stm32h7-program.service runs openocd on the same SWD pins as m4-flasher: the
    flasher package wraps that unit's ExecStart (Arduino's own command) in flock on the H7 lock."""
    d, image, packages = installed
    drop_in = f"{d.getVar('systemd_system_unitdir')}/stm32h7-program.service.d/x8-manager-swd-lock.conf"
    assert drop_in in packages["x8-manager-flasher"]
    assert drop_in in d.getVar("FILES:x8-manager-flasher").split()
    text = (image / drop_in.lstrip("/")).read_text()
    lock = "/run/lock/x8-h7-swd.lock"
    assert str(DEFAULT_LOCK_PATH) == lock
    assert "\nExecStart=\n" in text
    assert f"\nExecStart=flock {lock} /bin/sh /usr/arduino/extra/program-h7.sh\n" in text
    assert "util-linux-flock" in d.getVar("RDEPENDS:x8-manager-flasher").split()


def test_without_meta_arduino_no_drop_in_for_a_unit_that_is_not_there(
    installed_without_arduino: Installed,
) -> None:
    d, _, packages = installed_without_arduino
    shipped = {path for files in packages.values() for path in files}
    assert not any("stm32h7-program" in path for path in shipped)
    assert "stm32h7-program" not in d.getVar("SRC_URI")
    assert "util-linux-flock" not in d.getVar("RDEPENDS:x8-manager-flasher").split()


def test_package_data_lands_with_its_service(installed: Installed) -> None:
    d, _, packages = installed
    site = d.getVar("PYTHON_SITEPACKAGES_DIR")
    for package, subpackage in (
        ("x8-manager-proxy", "proxy"),
        ("x8-manager-flasher", "flasher"),
        ("x8-manager-apps", "apps"),
        ("x8-manager-sim", "m4sim"),
    ):
        prefix = f"{site}/x8manager/{subpackage}/"
        shipped = {path for files in packages.values() for path in files if path.startswith(prefix)}
        assert shipped and shipped <= packages[package], package
    library = packages["x8-manager"]
    assert f"{site}/x8manager/__init__.py" in library
    assert any(path.startswith(f"{site}/x8manager/rpc/") for path in library)
    assert any(path.endswith(".dist-info/METADATA") for path in library)


def third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "x8manager"}


def test_third_party_imports_are_rdepends(installed: Installed) -> None:
    d, image, packages = installed
    library_rdepends = set(d.getVar("RDEPENDS:x8-manager").split())
    for package, files in packages.items():
        rdepends = set((d.getVar(f"RDEPENDS:{package}") or "").split())
        if "x8-manager" in rdepends:
            rdepends |= library_rdepends
        for path in files:
            if not path.endswith(".py"):
                continue
            for module in third_party_imports(image / path.lstrip("/")):
                assert module in MODULE_RECIPES, (
                    f"{path} imports {module}: add its recipe to {package}'s RDEPENDS and to MODULE_RECIPES"
                )
                assert MODULE_RECIPES[module] in rdepends, (
                    f"{path} imports {module}: {package} lacks its RDEPENDS"
                )


def test_sysconfig_scheme_matches_the_recipe_layout() -> None:
    """pip's --prefix layout is the one the recipe's PYTHON_SITEPACKAGES_DIR describes."""
    purelib = sysconfig.get_path("purelib", "posix_prefix", {"base": "/usr", "platbase": "/usr"})
    assert purelib == f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


SCHEMA_RECIPE = LAYER_ROOT / "recipes-support" / "compose-spec-schema" / "compose-spec-schema_git.bb"


def test_compose_spec_schema_lands_where_x8_apps_looks(tmp_path: Path, oe_core_standin_dir: Path) -> None:
    """The schema recipe's do_install, replayed on a stand-in of its git checkout, installs the
    file x8-apps lint reads on a device, in the package x8-manager-apps recommends."""
    d = new_datastore(oe_core_standin_dir)
    d.setVar("WORKDIR", str(tmp_path / "work"))
    d.setVar("D", str(tmp_path / "image"))
    d = parse_recipe(d, SCHEMA_RECIPE)
    assert d.getVar("SRCREV") and "AUTOREV" not in d.getVar("SRCREV", False)
    checkout = Path(d.getVar("S"))
    (checkout / "schema").mkdir(parents=True)
    (checkout / "schema" / "compose-spec.json").write_text('{"type": "object"}')
    run_shell_task(d, "do_install")
    installed = [path for path in (tmp_path / "image").rglob("*") if path.is_file()]
    assert installed == [tmp_path / "image" / str(SYSTEM_SCHEMA).lstrip("/")]
    assert str(SYSTEM_SCHEMA) in d.getVar("FILES:compose-spec-schema").split()

    x8 = parse_recipe(new_datastore(oe_core_standin_dir), RECIPE)
    assert "compose-spec-schema" in x8.getVar("RRECOMMENDS:x8-manager-apps").split()


def test_proxy_brings_the_router_socket_group(installed: Installed) -> None:
    """m4-proxy's router socket is root:arduino-router 0660; the group comes from sysusers.d at a
    fixed GID, the one Bridge apps scaffolded by x8-apps join."""
    _, image, packages = installed
    sysusers = "/usr/lib/sysusers.d/x8-manager-proxy.conf"
    assert sysusers in packages["x8-manager-proxy"]
    lines = [line for line in (image / sysusers.lstrip("/")).read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == f"g arduino-router {ROUTER_GROUP_GID}"


def test_proxy_brings_its_user_and_the_m4_devices_group(installed: Installed) -> None:
    """m4-proxy.service runs as m4-proxy (sysusers.d, no static id table needed), and the package's
    udev rule gives that user's group the M4 device, so the proxy needs no root."""
    d, image, packages = installed
    sysusers = (image / "usr/lib/sysusers.d/x8-manager-proxy.conf").read_text().splitlines()
    assert any(line.split()[:2] == ["u", "m4-proxy"] for line in sysusers if line and line[0] != "#")
    rule = f"{d.getVar('nonarch_base_libdir')}/udev/rules.d/60-x8-manager-proxy.rules"
    assert rule in packages["x8-manager-proxy"]
    text = (image / rule.lstrip("/")).read_text()
    assert 'KERNEL=="x8h7_ui"' in text and 'GROUP="m4-proxy"' in text and 'MODE="0660"' in text
    service = (image / d.getVar("systemd_system_unitdir").lstrip("/") / "m4-proxy.service").read_text()
    assert "User=m4-proxy" in service.splitlines()


def test_the_library_recommends_arduinos_bridge(installed: Installed) -> None:
    d, _, _ = installed
    assert "python3-arduino-router-bridge" in d.getVar("RRECOMMENDS:x8-manager").split()


CONF_RECIPE = LAYER_ROOT / "recipes-python" / "x8-manager" / "x8-manager-conf_1.0.bb"


def install_conf(
    tmp: Path, standin_dir: Path, series: str, appends: list[Path]
) -> tuple[Path, dict[str, str]]:
    """x8-manager-conf unpacked and installed as the series' bitbake.conf lays the work
    directory out; returns the image directory and the text of each installed file."""
    d = new_datastore(standin_dir, series)
    d.setVar("WORKDIR", str(tmp / "work"))
    d.setVar("D", str(tmp / "image"))
    d = parse_recipe(d, CONF_RECIPE, appends)
    unpack(d, Path(d.getVar("WORKDIR")), CONF_RECIPE)
    run_shell_task(d, "do_install")
    image = Path(d.getVar("D"))
    files = {"/" + str(p.relative_to(image)): p.read_text() for p in image.rglob("*") if p.is_file()}
    claimed = claim(sorted(files), d.getVar("FILES:x8-manager-conf").split(), image)
    assert claimed == set(files)
    assert set(d.getVar("CONFFILES:x8-manager-conf").split()) == set(files)
    return image, files


@pytest.mark.parametrize("series", ["scarthgap", "wrynose"])
def test_the_service_defaults_come_from_x8_manager_conf(
    series: str, tmp_path: Path, oe_core_standin_dir: Path
) -> None:
    """The /etc/default files m4-proxy.service and m4-flasher.service read (EnvironmentFile=-),
    from their own recipe, unpacked into S on both series (WORKDIR up to scarthgap, UNPACKDIR
    from styhead on); the same files the offline twin image installs."""
    _, files = install_conf(tmp_path, oe_core_standin_dir, series, [])
    assert set(files) == {"/etc/default/m4-proxy", "/etc/default/m4-flasher"}
    for program in ("m4-proxy", "m4-flasher"):
        default = RECIPE.parent / "files" / f"{program}.default"
        assert files[f"/etc/default/{program}"] == default.read_text()


def test_an_integrator_sets_m4_proxy_args_in_a_bbappend(tmp_path: Path, oe_core_standin_dir: Path) -> None:
    """M4_PROXY_ARGS in x8-manager-conf.bbappend lands in /etc/default/m4-proxy; the Python
    package's recipe does not read it, so it is not rebuilt."""
    append = tmp_path / "x8-manager-conf_%.bbappend"
    append.write_text('M4_PROXY_ARGS = "--call-timeout 5 --log-level debug"\n')
    _, files = install_conf(tmp_path, oe_core_standin_dir, "wrynose", [append])
    lines = files["/etc/default/m4-proxy"].splitlines()
    assert lines[-1] == 'M4_PROXY_ARGS="--call-timeout 5 --log-level debug"'
    assert "M4_FLASHER_ARGS=" not in files["/etc/default/m4-flasher"].replace("#M4_FLASHER_ARGS=", "")
    python = parse_recipe(new_datastore(oe_core_standin_dir), RECIPE)
    assert not any("M4_PROXY_ARGS" in (python.getVar(name) or "") for name in ("do_install", "do_configure"))


@pytest.mark.parametrize("series", ["scarthgap", "wrynose"])
def test_sources_unpack_into_s_on_both_series(series: str, oe_core_standin_dir: Path) -> None:
    """Every file:// entry of our recipes unpacks below S on both series, so no recipe needs
    S, WORKDIR or UNPACKDIR (S = "${WORKDIR}" is an error from styhead on). Nor does a recipe set
    UNPACKDIR as a scarthgap fallback: BitBake lets a recipe's `UNPACKDIR ??= "${WORKDIR}"` (or
    `?=`) override bitbake.conf's own weak default, so wrynose would unpack into WORKDIR again."""
    for recipe in (RECIPE, CONF_RECIPE):
        d = parse_recipe(new_datastore(oe_core_standin_dir, series), recipe)
        unpackdir = d.getVar("UNPACKDIR") or d.getVar("WORKDIR")
        source = d.getVar("S")
        assert source != d.getVar("WORKDIR")
        for entry in d.getVar("SRC_URI").split():
            params = dict(param.split("=", 1) for param in entry.split(";")[1:])
            assert f"{unpackdir}/{params.get('subdir', '')}".startswith(source), (recipe.name, entry)
        lines = recipe.read_text().splitlines()
        text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        assert "${WORKDIR}" not in text and not re.search(r"^(S|UNPACKDIR)\s*\S*=", text, re.MULTILINE)
