"""Cached virtual environments for clients that must run unchanged (Arduino's libraries).

``cached_venv(dest, inputs, build)`` returns *dest*'s python, calling ``build(dest)`` first when
the venv is missing or was made from other *inputs* or another Python: a stamp file written last
holds their hash, so an interrupted build is redone, and a lock keeps two test runs from building
over each other. CI may cache such venvs under out/.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["cached_venv", "fresh_venv", "python_of", "venv_from_script"]


def python_of(dest: Path) -> Path:
    return dest / "bin" / "python"


def fresh_venv(dest: Path) -> str:
    """An empty venv at *dest* (whatever was there goes); returns its python."""
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run([sys.executable, "-m", "venv", str(dest)], check=True)
    return str(python_of(dest))


def cached_venv(dest: Path, inputs: Sequence[Path], build: Callable[[Path], None], stamp: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(sys.version.encode())
    for path in inputs:
        digest.update(path.read_bytes())
    fingerprint = digest.hexdigest()
    stamp_file = dest / stamp
    with open(dest.parent / (dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp_file.exists() and stamp_file.read_text() == fingerprint and python_of(dest).exists()):
            build(dest)
            stamp_file.write_text(fingerprint)
    return python_of(dest)


def venv_from_script(make_venv: Path) -> Path:
    """The python of the venv a ``make_venv.py`` script builds (its ``ensure_venv()``), built if need be.

    The scripts also run on their own (outside pytest), so they are loaded from their path, not
    imported as part of a package.
    """
    spec = importlib.util.spec_from_file_location(f"make_venv_{make_venv.parent.name}", make_venv)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    python: Path = module.ensure_venv()
    return python
