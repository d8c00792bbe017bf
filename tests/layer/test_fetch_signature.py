"""x8-manager's do_fetch signature depends on the package's sources only, not on what a developer's
host leaves beside them: the file list BitBake checksums for do_fetch (base.bbclass's
do_fetch[file-checksums], computed by bb.fetch2 from SRC_URI) is the same for a clean checkout and
for one with an editable install's egg-info, bytecode and editor files, and it follows a source
file being added. The same list from a real build environment is scripts/check-layer's
fetch-checksums.txt."""

from __future__ import annotations

import shutil
from pathlib import Path

import bb.data_smart
import bb.fetch2
import bb.parse
import pytest

from .conftest import LAYER_ROOT, copy_python_project, new_datastore, parse_recipe

pytestmark = pytest.mark.layer

RECIPE = Path("recipes-python/x8-manager/x8-manager_0.1.0.bb")
HOST_LEFTOVERS = {
    "src/x8manager.egg-info/PKG-INFO": "Metadata-Version: 2.1\n",
    "src/x8manager.egg-info/SOURCES.txt": "src/x8manager/__init__.py\n",
    "src/x8manager/__pycache__/__init__.cpython-311.pyc": "\x00bytecode",
    "src/x8manager/rpc/__pycache__/framing.cpython-312.pyc": "\x00bytecode",
    "src/x8manager/proxy/.cli.py.swp": "vim swap",
    "src/x8manager/proxy/cli.py~": "editor backup",
}


def copy_layer(target: Path) -> Path:
    """The recipe and the Python project, as a clean checkout has them."""
    shutil.copytree(LAYER_ROOT / RECIPE.parent, target / RECIPE.parent)
    return copy_python_project(target)


def fetch_checksums(standin_dir: Path, layer: Path) -> tuple[list[tuple[str, str]], bb.data_smart.DataSmart]:
    """(path relative to the layer, checksum) of every file do_fetch's signature covers."""
    bb.parse.clear_cache()
    d = new_datastore(standin_dir)
    recipe = layer / RECIPE
    d = parse_recipe(d, recipe)
    # bitbake.conf's FILESPATH reduced to what this recipe uses: FILESEXTRAPATHS and files/.
    extra = [p for p in d.getVar("FILESEXTRAPATHS").split(":") if p and p != "__default"]
    d.setVar("FILESPATH", ":".join([*extra, str(recipe.parent / "files")]))
    file_list = bb.fetch2.get_checksum_file_list(d)
    checksums = bb.fetch2.get_file_checksums(file_list, d.getVar("PN"), [".git"])
    return sorted((str(Path(path).resolve().relative_to(layer)), checksum) for path, checksum in checksums), d


def test_fetch_checksums_ignore_host_leftovers(tmp_path: Path, oe_core_standin_dir: Path) -> None:
    layer = copy_layer(tmp_path / "layer")
    clean, _ = fetch_checksums(oe_core_standin_dir, layer)
    sources = {path for path, _ in clean}
    assert "src/x8manager/__init__.py" in sources
    assert "src/x8manager/py.typed" in sources
    assert "pyproject.toml" in sources

    for name, text in HOST_LEFTOVERS.items():
        (layer / name).parent.mkdir(parents=True, exist_ok=True)
        (layer / name).write_text(text)
    with_leftovers, _ = fetch_checksums(oe_core_standin_dir, layer)
    assert with_leftovers == clean


def test_fetch_checksums_follow_the_sources(tmp_path: Path, oe_core_standin_dir: Path) -> None:
    layer = copy_layer(tmp_path / "layer")
    before, d = fetch_checksums(oe_core_standin_dir, layer)
    # Every directory listed is a parse dependency: a file added there makes BitBake re-parse.
    depends = {Path(path) for path, _mtime in d.getVar("__depends", False) or []}
    assert {layer / "src", layer / "src/x8manager", layer / "src/x8manager/proxy"} <= depends
    assert not any("__pycache__" in path.parts for path in depends)

    (layer / "src/x8manager/proxy/new_module.py").write_text("VALUE = 1\n")
    (layer / "src/x8manager/rpc/framing.py").write_text("# edited\n")
    after, _ = fetch_checksums(oe_core_standin_dir, layer)
    changed = {path for path, checksum in set(after) ^ set(before)}
    assert changed == {"src/x8manager/proxy/new_module.py", "src/x8manager/rpc/framing.py"}
