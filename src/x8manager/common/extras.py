"""Optional dependencies (pip extras) and what a console script says when one is missing.

`pip install x8manager` installs the core: msgpack, all that x8manager.rpc, m4-proxy and m4-sim
need (apps in containers import x8manager.rpc and want nothing more). A service with more
dependencies has its extra, named like the Yocto package that brings the same modules on a device:
x8-apps needs ``x8manager[apps]``, the QEMU harness (a host tool) ``x8manager[qemu]``; m4-flasher
needs only the core (its ELF check reads the file itself, as openocd does). Without the extra a
console script names it instead of dying with a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.util import find_spec

__all__ = ["EXIT_MISSING_EXTRA", "EXTRAS", "extra_providing", "install_hint", "missing", "run_console_script"]

# extra -> {top-level module: PyPI distribution}; the same distributions as pyproject.toml's
# [project.optional-dependencies] (tests/layer/test_pip_install.py checks both ways).
EXTRAS: dict[str, dict[str, str]] = {
    "apps": {"yaml": "PyYAML", "jsonschema": "jsonschema"},
    "qemu": {"pexpect": "pexpect", "pytest": "pytest"},
}
# Where the same modules come from on a Yocto image.
YOCTO_PACKAGES = {"apps": "x8-manager-apps"}
# A usage/installation error, like the services' other start-up errors.
EXIT_MISSING_EXTRA = 2


def extra_providing(module: str) -> str | None:
    """The extra whose distributions provide the (dotted) module, if any."""
    top = module.partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing(extra: str) -> list[str]:
    """The distributions of the extra whose modules cannot be imported."""
    return [dist for module, dist in EXTRAS[extra].items() if find_spec(module) is None]


def install_hint(extra: str) -> str:
    hint = f"pip install 'x8manager[{extra}]'"
    if extra in YOCTO_PACKAGES:
        hint += f" (on a Yocto image the package {YOCTO_PACKAGES[extra]} brings them)"
    return hint


def run_console_script(program: str, main: Callable[[], int]) -> int:
    """Runs a console script's main; a module of an extra that is not installed ends it with a
    message naming the extra and EXIT_MISSING_EXTRA, any other import error propagates."""
    try:
        return main()
    except ModuleNotFoundError as error:
        extra = extra_providing(error.name or "")
        if extra is None:
            raise
        absent = missing(extra) or [EXTRAS[extra][(error.name or "").partition(".")[0]]]
        print(
            f"{program}: {', '.join(absent)} not installed; {program} needs the '{extra}' extra: "
            f"{install_hint(extra)}",
            file=sys.stderr,
        )
        return EXIT_MISSING_EXTRA
