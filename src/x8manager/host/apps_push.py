"""``x8 apps push``: a compose app from this machine onto the device, built there, started, its logs shown.

The app goes to the device's development root (``~/x8-apps/APP``, which ``x8-apps --dev-root`` knows and
aktualizr-lite never manages). Its compose file is Factory-style (``image: hub.foundries.io/${FACTORY}/
app:latest``): the images that name ``${FACTORY}`` are the ones a Factory would build from this folder,
so they are built on the device from the app's Dockerfile with ``FACTORY`` set here (``--factory``,
``$FACTORY``, default ``local``), and ``x8-apps start`` runs compose with the same value. Docker's
build cache makes a second push rebuild only the layers whose files changed, and compose recreates
only the containers whose image changed.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .transport import Transport, TransportError

__all__ = ["AppError", "PushPlan", "factory_images", "interpolate", "plan_push"]

DEV_ROOT_NAME = "x8-apps"
DEFAULT_FACTORY = "local"
COMPOSE_NAMES = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}|"
                       r"(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))")


class AppError(ValueError):
    """The app folder cannot be pushed as it is (no compose file, nothing to build); the message says why."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation for image names: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        name = match["braced"] or match["bare"]
        value = env.get(name, "")
        if not value and match["default"] is not None:
            return match["default"]
        return value

    return _VARIABLE.sub(replace, text)


def factory_images(compose: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The images of *compose* a Factory builds from the app folder (those naming ``FACTORY``), resolved."""
    services = compose.get("services")
    if not isinstance(services, dict):
        raise AppError("the compose file has no services")
    images: list[str] = []
    for service in services.values():
        image = service.get("image") if isinstance(service, dict) else None
        if isinstance(image, str) and "FACTORY" in image:
            resolved = interpolate(image, env)
            if resolved not in images:
                images.append(resolved)
    return images


@dataclass(frozen=True)
class PushPlan:
    name: str
    local_dir: Path
    images: list[str]
    factory: str


def plan_push(app_dir: Path, factory: str | None = None) -> PushPlan:
    try:
        # The device tools' bounded loader (PyYAML; the host extra installs it): an alias bomb in a
        # compose file is refused, not expanded for minutes into gigabytes.
        from x8manager.apps.yamlsource import YamlLoadError, load_compose_file  # noqa: PLC0415
    except ImportError as error:
        raise AppError("x8 apps push reads the compose file with PyYAML: pip install 'x8manager[host]'") \
            from error
    if not app_dir.is_dir():
        raise AppError(f"{app_dir} is not a folder")
    compose_file = next((app_dir / name for name in COMPOSE_NAMES if (app_dir / name).is_file()), None)
    if compose_file is None:
        raise AppError(f"{app_dir} has no compose file ({', '.join(COMPOSE_NAMES)})")
    try:
        compose = load_compose_file(compose_file).document
    except OSError as error:
        raise AppError(f"{compose_file}: cannot read: {error.strerror or error}") from error
    except YamlLoadError as error:
        where = f"{compose_file}:{error.line}" if error.line else str(compose_file)
        raise AppError(f"{where}: {error.message}") from error
    if not isinstance(compose, dict):
        raise AppError(f"{compose_file}: not a compose file (a mapping at the top)")
    factory = factory or os.environ.get("FACTORY") or DEFAULT_FACTORY
    images = factory_images(compose, {**os.environ, "FACTORY": factory})
    if images and not (app_dir / "Dockerfile").is_file():
        raise AppError(f"{app_dir}: the compose file names Factory images ({', '.join(images)}) "
                       "but the folder has no Dockerfile to build them from")
    return PushPlan(name=app_dir.resolve().name, local_dir=app_dir, images=images, factory=factory)


def device_home(transport: Transport) -> str:
    result = transport.run(["sh", "-c", 'printf %s "$HOME"'], timeout=60)
    home = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or not home.startswith("/"):
        raise TransportError(f"{transport.address}: cannot find the login user's home directory")
    return home


def push_app(transport: Transport, plan: PushPlan, build_args: list[str], follow: bool) -> int:
    """Copy, build, start; then the logs (followed until Ctrl-C with *follow*). The exit code."""
    dev_root = f"{device_home(transport)}/{DEV_ROOT_NAME}"
    remote_dir = f"{dev_root}/{plan.name}"
    print(f"x8 apps push: copying {plan.local_dir} to {transport.address}:{remote_dir}", flush=True)
    transport.push_tree(plan.local_dir, remote_dir)
    if plan.images:
        first, *others = plan.images
        print(f"x8 apps push: building {first} on the device (FACTORY={plan.factory})", flush=True)
        arguments = [item for value in build_args for item in ("--build-arg", value)]
        code = transport.run_attached(["docker", "build", *arguments, "-t", first, remote_dir])
        if code != 0:
            print(f"x8 apps push: docker build failed (exit {code})", flush=True)
            return 1
        for image in others:
            if transport.run_attached(["docker", "tag", first, image]) != 0:
                return 1
    x8_apps = ["env", f"FACTORY={plan.factory}", f"X8_APPS_DEV_ROOT={dev_root}", "x8-apps"]
    print(f"x8 apps push: starting {plan.name} (x8-apps start)", flush=True)
    code = transport.run_attached([*x8_apps, "start", plan.name])
    if code != 0:
        print(f"x8 apps push: x8-apps start failed (exit {code})", flush=True)
        return 1
    logs = [*x8_apps, "logs", plan.name, *(["--follow"] if follow else ["--tail", "50"])]
    with contextlib.suppress(KeyboardInterrupt):
        transport.run_attached(logs)
    return 0
