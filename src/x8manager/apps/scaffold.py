"""``x8-apps new``: write an app folder in containers.git layout from a packaged template.

The folder holds ``docker-compose.yml``, ``Dockerfile``, ``docker-build.conf``, ``main.py`` and
``vendor/``: a copy of the app's client library - this project's ``x8manager.rpc`` (legacy ports
5000/5001), or for ``bridge-app`` Arduino's ``arduino-router-bridge`` (``arduino.router_bridge``,
MPL-2.0, copied with its license from the installed distribution), both pure Python on top of
msgpack - so that FoundriesFactory and an offline ``docker build`` need nothing but the folder and
a base image with python3 (and msgpack, else pip installs it).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import x8manager

__all__ = [
    "BRIDGE_DISTRIBUTION",
    "DEFAULT_TEMPLATE",
    "ROUTER_GROUP_GID",
    "TEMPLATES",
    "ScaffoldError",
    "Template",
    "add_parser",
    "create_app",
    "vendor_bridge",
]

DEFAULT_IMAGE_PREFIX = "hub.foundries.io/${FACTORY}"
# Subpackages of x8manager copied into the app: the client library and what it may import.
VENDORED_PACKAGES = ("rpc", "common")
# Apps that ship a sketch also get the flasher's request client (standard library only).
VENDORED_SKETCH_CLIENT = ("flasher", "client.py")
# Where a template's files go when not at the app folder's top (NAME is the app's name).
_PLACED = {"sketch.ino": "sketch/{name}.ino"}
# Arduino's client library for the router front; its import package is arduino.router_bridge.
BRIDGE_DISTRIBUTION = "arduino-router-bridge"
# The group of m4-proxy's router socket (/var/run/arduino-router.sock, mode 0660), created with this
# GID by the recipe's x8-manager-proxy package (X8_ROUTER_GID); Bridge apps join it (group_add).
ROUTER_GROUP_GID = 871
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # fullmatch: "$" would match before a "\n"
_TOKEN = re.compile(r"@@[A-Z_]+@@")


class ScaffoldError(Exception):
    """The app cannot be created (bad name/port, folder exists, unwritable)."""


@dataclass(frozen=True)
class Template:
    name: str
    package: str
    summary: str
    default_port: int | None
    user: str
    # The client library copied into vendor/: "x8manager" (x8manager.rpc) or BRIDGE_DISTRIBUTION.
    library: str = "x8manager"
    # Template packages whose files come first (this template's own files replace theirs).
    based_on: tuple[str, ...] = ()
    # The app ships its M4 sketch: sketch/NAME.ino, sketch/NAME.elf (--sketch) and the sidecar.
    ships_sketch: bool = False


TEMPLATES: dict[str, Template] = {
    template.name: template
    for template in (
        Template("m4-service", "m4_service", "Linux procedures the M4 calls (RpcService)", 5005,
                 "65534:65534"),
        Template("m4-client", "m4_client", "a Linux client that calls the M4 (M4Client)", None,
                 "65534:65534"),
        Template("serial-forwarder", "serial_forwarder",
                 "the M4's Serial (tty) output to the console or a file", 5002, "65534:65534"),
        Template("m4-sketch", "m4_sketch",
                 "Linux procedures the M4 calls, and the M4 sketch itself, flashed with a health check "
                 "whenever the app starts (the Factory updates both)", 5005, "65534:65534",
                 based_on=("m4_service",), ships_sketch=True),
        Template("bridge-app", "bridge_app",
                 "calls the M4 and answers it with Arduino's arduino-router-bridge (same code as on an "
                 "UNO Q)", None, "65534:65534", library=BRIDGE_DISTRIBUTION),
    )
}


# `x8-apps new NAME` without --template: the common case, a service facing the M4.
DEFAULT_TEMPLATE = "m4-service"


def _template_dir(package: str) -> Traversable:
    return resources.files("x8manager.apps.templates").joinpath(package)


def _render(text: str, values: dict[str, str], origin: str) -> str:
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    leftover = _TOKEN.search(text)
    if leftover:
        raise ScaffoldError(f"template {origin} uses the unknown placeholder {leftover.group(0)}")
    return text


def _vendor_library(target: Path, *, sketch_client: bool = False) -> None:
    """Copy x8manager's client library (pure Python) into *target*/x8manager, and with
    *sketch_client* the flasher's request client (x8manager.flasher.client) the sidecar runs."""
    package_root = Path(x8manager.__file__).parent
    destination = target / "x8manager"
    destination.mkdir(parents=True)
    shutil.copy2(package_root / "__init__.py", destination / "__init__.py")
    for name in VENDORED_PACKAGES:
        source = package_root / name
        if source.is_dir():
            shutil.copytree(source, destination / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmpl"))
    if sketch_client:
        package, module = VENDORED_SKETCH_CLIENT
        (destination / package).mkdir()
        (destination / package / "__init__.py").write_text(
            '"""Only the flasher\'s request client, copied by x8-apps new."""\n', encoding="utf-8")
        shutil.copy2(package_root / package / module, destination / package / module)


def vendor_bridge(target: Path, *, as_installed: bool = False) -> None:
    """Copy the installed arduino-router-bridge (package arduino.router_bridge and its license)
    into *target*: the app then builds offline from any base with python3 and msgpack.

    *as_installed* also copies its ``.dist-info`` (the license stays in it), so *target* holds the
    distribution as pip installed it (a site-packages folder: the test image's, for one)."""
    try:
        dist = importlib.metadata.distribution(BRIDGE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise ScaffoldError(
            f"template bridge-app copies Arduino's {BRIDGE_DISTRIBUTION} into the app, and it is not "
            "installed: pip install 'x8manager[apps]' (on a Yocto image: python3-arduino-router-bridge)"
        ) from error
    copied = 0
    for file in dist.files or []:
        parts = Path(str(file)).parts
        source = Path(str(dist.locate_file(file)))
        if parts[:2] == ("arduino", "router_bridge") and "__pycache__" not in parts:
            destination = target.joinpath(*parts)
            copied += 1
        elif parts[0].endswith(".dist-info") and as_installed:
            destination = target.joinpath(*parts)
        elif parts[0].endswith(".dist-info") and "LICENSE" in parts[-1].upper():
            destination = target / f"LICENSE-{BRIDGE_DISTRIBUTION}-{dist.version}.txt"
        else:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    if not copied:
        raise ScaffoldError(f"the installed {BRIDGE_DISTRIBUTION} {dist.version} lacks arduino/router_bridge")


def _validate(name: str, template: Template, port: int | None) -> int | None:
    if not _NAME.fullmatch(name):
        raise ScaffoldError(
            f"app name {name!r}: use lower-case letters, digits, '-' and '_' (it becomes the folder, "
            "the compose service and the image name)"
        )
    if port is not None and template.default_port is None:
        raise ScaffoldError(f"template {template.name} serves no procedures, so it takes no --port")
    chosen = port if port is not None else template.default_port
    if chosen is not None and not 1024 <= chosen <= 65535:
        raise ScaffoldError(f"--port {chosen}: use a port from 1024 to 65535 (5002-5020 is the custom)")
    if chosen in (5000, 5001):
        raise ScaffoldError(f"--port {chosen} is m4-proxy's own port; use another (5002-5020 is the custom)")
    return chosen


def create_app(name: str, template_name: str, root: Path, *, port: int | None = None,
               image_prefix: str = DEFAULT_IMAGE_PREFIX, sketch: Path | None = None) -> Path:
    """Create ``root/name`` from *template_name*; return the folder. Never overwrites anything.

    *sketch* (templates that ship one) is the built ELF copied to ``sketch/NAME.elf``; without it
    the app has the sketch's source and lint says the ELF is still to be built."""
    if template_name not in TEMPLATES:
        raise ScaffoldError(f"unknown template {template_name!r}; choose from {', '.join(TEMPLATES)}")
    template = TEMPLATES[template_name]
    chosen_port = _validate(name, template, port)
    if sketch is not None and not template.ships_sketch:
        raise ScaffoldError(f"template {template.name} ships no sketch, so it takes no --sketch")
    app = root / name
    if app.exists():
        raise ScaffoldError(f"{app} already exists; choose another name or remove it first")
    image = f"{image_prefix.rstrip('/')}/{name}:latest"
    values = {
        "NAME": name,
        "IMAGE": image,
        "IMAGE_EXAMPLE": image.replace("${FACTORY}", "<factory>"),
        "PORT": str(chosen_port or ""),
        "USER": template.user,
        "ROUTER_GID": str(ROUTER_GROUP_GID),
    }
    staging = root / f".{name}.x8-apps-new"
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        layers = ("common", *template.based_on, template.package)
        for directory in (_template_dir(layer) for layer in layers):
            for entry in directory.iterdir():
                if not entry.name.endswith(".tmpl"):
                    continue
                plain = entry.name.removesuffix(".tmpl")
                target = staging / _PLACED.get(plain, plain).format(name=name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(_render(entry.read_text(encoding="utf-8"), values, entry.name),
                                  encoding="utf-8")
        if sketch is not None:
            shutil.copyfile(sketch, staging / "sketch" / f"{name}.elf")
        if template.library == BRIDGE_DISTRIBUTION:
            vendor_bridge(staging / "vendor")
        else:
            _vendor_library(staging / "vendor", sketch_client=template.ships_sketch)
        # Rename last, so an interrupted run leaves no half-made app behind under the real name.
        staging.rename(app)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ScaffoldError(f"cannot create {app}: {error}") from error
    except ScaffoldError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return app


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = "; ".join(f"{t.name}: {t.summary}" for t in TEMPLATES.values())
    parser = commands.add_parser("new", help="create an app folder (containers.git layout)",
                                 description=f"Create NAME/ with a compose file, Dockerfile and app code. "
                                 f"Templates: {listing}.")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--template", "-t", default=DEFAULT_TEMPLATE, choices=sorted(TEMPLATES),
                        help=f"what the app does (default {DEFAULT_TEMPLATE})")
    parser.add_argument("--dir", type=Path, default=Path("."),
                        help="the containers.git checkout to create the app in (default: .)")
    parser.add_argument("--port", type=int, help="the port the app serves its procedures on")
    parser.add_argument("--sketch", type=Path, metavar="ELF",
                        help="m4-sketch: the built sketch, copied to sketch/NAME.elf")
    parser.add_argument("--factory-image-prefix", default=DEFAULT_IMAGE_PREFIX,
                        help=f"registry and repository before /NAME:latest (default {DEFAULT_IMAGE_PREFIX})")
    parser.set_defaults(handler=_run_new)


def _run_new(args: argparse.Namespace) -> int:
    try:
        app = create_app(args.name, args.template, args.dir, port=args.port,
                         image_prefix=args.factory_image_prefix, sketch=args.sketch)
    except ScaffoldError as error:
        print(f"x8-apps new: {error}", file=sys.stderr)
        return 2
    print(f"created {app} from template {args.template}")
    print(f"  check it:   x8-apps lint {app}")
    image = f"{args.factory_image_prefix.rstrip('/')}/{args.name}:latest".replace("${FACTORY}", "dev")
    print(f"  build it:   docker build -t {image} {app}")
    print(f"  run it:     FACTORY=dev docker compose -f {app}/docker-compose.yml up -d")
    print("  ship it:    commit the folder to your Factory's containers.git")
    return 0
