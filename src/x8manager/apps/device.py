"""``x8-apps list|status|start|stop|logs``: the compose apps on a device, through ``docker compose``.

Apps live in the compose-apps root (aktualizr-lite's ``[pacman] compose_apps_root``, default
``/var/sota/compose-apps``) and optionally in a development root. An app in the compose-apps root is
*managed* when aktualizr-lite runs on the device (``/var/sota/sota.toml`` exists) and its
``[pacman] compose_apps`` list names it (or the list is absent, meaning every app of the Target).
Managed apps are aktualizr-lite's to start and stop: we refuse unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lint import compose_file_in
from .sketch import sketch_services

__all__ = [
    "App",
    "ComposeTool",
    "DockerUnavailable",
    "SotaConfig",
    "add_parsers",
    "discover_apps",
    "find_compose_tool",
    "parse_compose_ps",
    "read_sota_config",
]

DEFAULT_APPS_ROOT = Path("/var/sota/compose-apps")
# m4-flasher's status file (world-readable): the flashes of apps' sketch services are in its history.
FLASHER_STATUS = Path("/var/lib/m4-flasher/status.json")
SOTA_TOML = Path("/var/sota/sota.toml")
# aktualizr-lite reads these in this order; later files override earlier ones.
SOTA_CONFIG_DIRS = (Path("/usr/lib/sota/conf.d"), Path("/etc/sota/conf.d"))
PROBE_TIMEOUT = 20.0

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_DOCKER = 3
EXIT_MANAGED = 4


class DockerUnavailable(Exception):
    """No docker CLI, no compose, or no reachable engine; the message says which and what to do."""


@dataclass(frozen=True)
class SotaConfig:
    """What aktualizr-lite's configuration says about compose apps."""

    registered: bool
    apps_root: Path | None
    compose_apps: frozenset[str] | None  # None: every app of the Target
    sources: tuple[str, ...]

    def manages(self, app: str) -> bool:
        if not self.registered:
            return False
        return self.compose_apps is None or app in self.compose_apps


@dataclass(frozen=True)
class App:
    name: str
    folder: Path
    compose_file: Path
    in_apps_root: bool
    managed: bool


def read_sota_config(sota_toml: Path = SOTA_TOML,
                     config_dirs: Sequence[Path] = SOTA_CONFIG_DIRS) -> SotaConfig:
    """Merge aktualizr-lite's TOML files the way it does; unreadable files are skipped (and named)."""
    files: list[Path] = []
    if config_dirs:
        files.extend(sorted(config_dirs[0].glob("*.toml")) if config_dirs[0].is_dir() else [])
    files.append(sota_toml)
    for directory in config_dirs[1:]:
        files.extend(sorted(directory.glob("*.toml")) if directory.is_dir() else [])
    pacman: dict[str, Any] = {}
    sources: list[str] = []
    for file in files:
        try:
            with open(file, "rb") as stream:
                data = tomllib.load(stream)
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as error:
            print(f"x8-apps: ignoring unreadable aktualizr-lite config {file}: {error}", file=sys.stderr)
            continue
        sources.append(str(file))
        section = data.get("pacman")
        if isinstance(section, dict):
            pacman.update(section)
    apps_value = pacman.get("compose_apps")
    compose_apps: frozenset[str] | None = None
    if isinstance(apps_value, str):
        compose_apps = frozenset(part.strip() for part in apps_value.split(",") if part.strip())
    elif isinstance(apps_value, list):
        compose_apps = frozenset(str(part) for part in apps_value)
    root = pacman.get("compose_apps_root")
    return SotaConfig(
        registered=sota_toml.exists(),
        apps_root=Path(root) if isinstance(root, str) and root else None,
        compose_apps=compose_apps,
        sources=tuple(sources),
    )


def discover_apps(apps_root: Path, dev_root: Path | None, sota: SotaConfig) -> list[App]:
    """Every folder with a compose file under the roots (a missing root simply has no apps)."""
    apps: list[App] = []
    names: set[str] = set()
    for root, in_apps_root in ((apps_root, True), (dev_root, False)):
        if root is None or not root.is_dir():
            continue
        for folder in sorted(child for child in root.iterdir() if child.is_dir()):
            compose = compose_file_in(folder)
            if compose is None:
                continue
            if not in_apps_root and folder.name in names:
                # docker compose names the project after the folder: both would be one project.
                print(f"x8-apps: ignoring {folder}: an app of the same name is in {apps_root}, and "
                      "docker compose would treat both as one project; rename the folder",
                      file=sys.stderr)
                continue
            names.add(folder.name)
            managed = in_apps_root and sota.manages(folder.name)
            apps.append(App(folder.name, folder, compose, in_apps_root, managed))
    return apps


@dataclass(frozen=True)
class ComposeTool:
    """How to run compose here: ``docker compose`` (v2 plugin) or ``docker-compose`` (v1)."""

    command: tuple[str, ...]
    docker: str

    def run(self, app: App, arguments: Sequence[str], *, capture: bool = False
            ) -> subprocess.CompletedProcess[str]:
        # The app's folder as working directory: the project name is the folder name, exactly as
        # aktualizr-lite and compose-apps-early-start run it.
        return subprocess.run([*self.command, "-f", str(app.compose_file), *arguments],
                              cwd=app.folder, text=True, check=False,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)


def _probe(command: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


# Which compose to run: the docker CLI plugin (``docker compose``, v2, what LmP ships), the
# standalone ``docker-compose`` (v1 on Debian 12; v2 where installed so), or the plugin when present.
COMPOSE_CHOICES = ("auto", "plugin", "standalone")


def find_compose_tool(docker: str | None = None, compose: str = "auto") -> ComposeTool:
    """Find the docker CLI and compose, and check the engine answers; else raise DockerUnavailable."""
    if compose not in COMPOSE_CHOICES:
        raise DockerUnavailable(f"unknown compose choice {compose!r} (--compose or $X8_APPS_COMPOSE): "
                                f"use one of {', '.join(COMPOSE_CHOICES)}")
    docker_path = shutil.which(docker or os.environ.get("X8_APPS_DOCKER", "docker"))
    if docker_path is None:
        raise DockerUnavailable(
            f"the docker CLI ({docker or 'docker'}) is not installed or not on PATH; "
            "x8-apps runs apps through docker compose on the device")
    info = _probe([docker_path, "info", "--format", "{{.ServerVersion}}"])
    if info is None:
        raise DockerUnavailable(f"{docker_path} info did not finish in {PROBE_TIMEOUT:.0f} s")
    if info.returncode != 0 or not info.stdout.strip():
        detail = (info.stderr.strip() or info.stdout.strip()).splitlines()
        reason = detail[-1] if detail else f"exit status {info.returncode}"
        raise DockerUnavailable(
            f"no Docker engine is reachable ({reason}); start it with: systemctl start docker")
    if compose != "standalone":
        plugin = _probe([docker_path, "compose", "version"])
        if plugin is not None and plugin.returncode == 0:
            return ComposeTool((docker_path, "compose"), docker_path)
        if compose == "plugin":
            raise DockerUnavailable(
                "the Docker engine runs, but the 'docker compose' plugin is not installed")
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return ComposeTool((standalone,), docker_path)
    if compose == "standalone":
        raise DockerUnavailable("the Docker engine runs, but 'docker-compose' is not installed")
    raise DockerUnavailable(
        "the Docker engine runs, but neither 'docker compose' (plugin) nor 'docker-compose' is installed")


def parse_compose_ps(output: str) -> list[dict[str, Any]]:
    """``docker compose ps --format json``: a JSON array (compose < 2.21) or one object a line."""
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        parsed = json.loads(text)
        return [item for item in parsed if isinstance(item, dict)]
    return [item for line in text.splitlines() if line.strip()
            if isinstance(item := json.loads(line), dict)]


def _container_states(tool: ComposeTool, app: App) -> list[str]:
    """The state (running, exited, ...) of each of the app's containers; raise ValueError if unknown."""
    if tool.command[-1] == "compose":
        result = tool.run(app, ["ps", "--all", "--format", "json"], capture=True)
        if result.returncode != 0:
            raise ValueError((result.stderr or "").strip().splitlines()[-1:] or "docker compose ps failed")
        return [str(c.get("State", "")).lower() for c in parse_compose_ps(result.stdout)]
    # docker-compose v1 has no JSON output: ask the engine about the containers it lists.
    result = tool.run(app, ["ps", "-q"], capture=True)
    if result.returncode != 0:
        raise ValueError("docker-compose ps failed")
    ids = result.stdout.split()
    if not ids:
        return []
    inspect = subprocess.run([tool.docker, "inspect", "--format", "{{.State.Status}}", *ids],
                             capture_output=True, text=True, check=False)
    if inspect.returncode != 0:
        raise ValueError("docker inspect failed")
    return inspect.stdout.split()


def app_state(tool: ComposeTool, app: App) -> str:
    """``running 2/2``, ``stopped 0/1``, ``not created``, or why we could not tell."""
    try:
        states = _container_states(tool, app)
    except ValueError as error:
        return f"unknown ({error})"
    if not states:
        return "not created"
    running = states.count("running")
    return f"running {running}/{len(states)}" if running else f"stopped 0/{len(states)}"


# -- command line ---------------------------------------------------------------------------------

def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apps-root", type=Path,
                        default=Path(os.environ.get("X8_APPS_ROOT", str(DEFAULT_APPS_ROOT))),
                        help="aktualizr-lite's compose-apps root (default $X8_APPS_ROOT or "
                        f"{DEFAULT_APPS_ROOT})")
    parser.add_argument("--dev-root", type=Path, default=(
        Path(os.environ["X8_APPS_DEV_ROOT"]) if os.environ.get("X8_APPS_DEV_ROOT") else None),
        help="also a folder of apps you develop on the device, never managed by aktualizr-lite "
        "(default $X8_APPS_DEV_ROOT)")
    parser.add_argument("--sota-toml", type=Path, default=SOTA_TOML,
                        help="aktualizr-lite's main config, whose presence means it runs "
                        f"(default {SOTA_TOML})")
    parser.add_argument("--docker", default=None,
                        help="the docker CLI to use (default $X8_APPS_DOCKER or docker)")
    parser.add_argument("--compose", default=os.environ.get("X8_APPS_COMPOSE", "auto"),
                        choices=COMPOSE_CHOICES,
                        help="plugin ('docker compose', as on LmP), standalone ('docker-compose'), or "
                        "auto: the plugin when installed (default $X8_APPS_COMPOSE or auto)")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser("list", help="the apps on this device and their state")
    _add_common(listing)
    listing.add_argument("--format", choices=("text", "json"), default="text")
    listing.set_defaults(handler=_run_list)

    status = commands.add_parser("status", help="docker compose ps of one app or all")
    _add_common(status)
    status.add_argument("apps", metavar="APP", nargs="*")
    status.add_argument("--flasher-status", type=Path, default=FLASHER_STATUS,
                        help=f"m4-flasher's status file, for apps with a sketch (default {FLASHER_STATUS})")
    status.set_defaults(handler=_run_status)

    for verb, what in (("start", "start an app (docker compose up -d)"),
                       ("stop", "stop an app (docker compose stop)")):
        parser = commands.add_parser(verb, help=what)
        _add_common(parser)
        parser.add_argument("apps", metavar="APP", nargs="+")
        parser.add_argument("--force", action="store_true",
                            help="act on an app aktualizr-lite manages (it may undo this on its next run)")
        parser.set_defaults(handler=_run_start if verb == "start" else _run_stop)

    logs = commands.add_parser("logs", help="docker compose logs of an app")
    _add_common(logs)
    logs.add_argument("app", metavar="APP")
    logs.add_argument("service", metavar="SERVICE", nargs="?")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.add_argument("--tail", metavar="N", default="200", help="lines from the end (default 200, or all)")
    logs.set_defaults(handler=_run_logs)


def _context(args: argparse.Namespace) -> tuple[SotaConfig, list[App]]:
    sota = read_sota_config(args.sota_toml)
    apps_root = args.apps_root
    if sota.apps_root is not None and "X8_APPS_ROOT" not in os.environ and apps_root == DEFAULT_APPS_ROOT:
        apps_root = sota.apps_root
    return sota, discover_apps(apps_root, args.dev_root, sota)


def _select(apps: list[App], names: Sequence[str], args: argparse.Namespace) -> list[App] | None:
    by_name = {app.name: app for app in apps}
    missing = [name for name in names if name not in by_name]
    if missing:
        roots = str(args.apps_root) + (f" or {args.dev_root}" if args.dev_root else "")
        known = ", ".join(sorted(by_name)) or "none"
        print(f"x8-apps: no app {', '.join(missing)} in {roots} (apps there: {known})", file=sys.stderr)
        return None
    return [by_name[name] for name in names] if names else apps


def _tool(args: argparse.Namespace) -> ComposeTool | None:
    try:
        return find_compose_tool(args.docker, args.compose)
    except DockerUnavailable as error:
        print(f"x8-apps {args.command}: {error}", file=sys.stderr)
        return None


def _run_list(args: argparse.Namespace) -> int:
    sota, apps = _context(args)
    tool = _tool(args)
    rows = []
    for app in apps:
        state = app_state(tool, app) if tool else "unknown (no Docker engine)"
        rows.append({"name": app.name, "folder": str(app.folder), "managed": app.managed,
                     "root": "apps" if app.in_apps_root else "dev", "state": state})
    if args.format == "json":
        print(json.dumps({"aktualizr_lite": sota.registered, "apps": rows}, indent=2))
    else:
        if not rows:
            print(f"no apps in {args.apps_root}" + (f" or {args.dev_root}" if args.dev_root else ""))
        for row in rows:
            owner = "aktualizr-lite" if row["managed"] else "local"
            print(f"{row['name']:24} {owner:15} {row['state']:24} {row['folder']}")
    return 0 if tool else EXIT_NO_DOCKER


def _run_status(args: argparse.Namespace) -> int:
    _, apps = _context(args)
    chosen = _select(apps, args.apps, args)
    if chosen is None:
        return EXIT_USAGE
    tool = _tool(args)
    if tool is None:
        return EXIT_NO_DOCKER
    worst = 0
    for app in chosen:
        owner = "managed by aktualizr-lite" if app.managed else "local"
        print(f"== {app.name} ({owner}, {app.folder})", flush=True)
        worst = max(worst, tool.run(app, ["ps", "--all"]).returncode)
        for line in sketch_status_lines(app, args.flasher_status):
            print(line, flush=True)
    return EXIT_FAILED if worst else 0


def _flash_records(status_path: Path) -> list[dict[str, Any]]:
    """m4-flasher's records, newest first (the latest outcome heads its history)."""
    try:
        status = json.loads(status_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    history = status.get("history") if isinstance(status, dict) else None
    return [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []


def sketch_status_lines(app: App, status_path: Path) -> list[str]:
    """What ``x8-apps status`` says of an app's sketch: the newest flash its sketch service asked for."""
    compose = compose_file_in(app.folder)
    if compose is None:
        return []
    try:
        # lint's bounded loader (PyYAML, the apps extra): an alias bomb in an app's compose file
        # costs status a refusal, not minutes and gigabytes.
        from .yamlsource import YamlLoadError, load_compose_file  # noqa: PLC0415
    except ImportError:
        return []
    try:
        document = load_compose_file(compose).document
    except OSError:
        return []
    except YamlLoadError as error:  # lint says more; status says why it cannot tell
        return [f"   sketch: unknown, {compose.name} not read: {error.message}"]
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict) or not sketch_services(services):
        return []
    prefix = f"app {app.name}: "
    records = [r for r in _flash_records(status_path) if str(r.get("origin", "")).startswith(prefix)]
    if not records:
        return [f"   sketch: never flashed by this app (m4-flasher status: {status_path})"]
    latest = records[0]
    sketch = latest.get("sketch")
    sketch = sketch if isinstance(sketch, dict) else {}
    health = latest.get("health")
    verdict = "" if not isinstance(health, dict) else (
        ", health ok" if health.get("healthy") else f", health FAILED: {health.get('reason', '')}")
    return [f"   sketch: {latest.get('result', '?')} {str(sketch.get('sha256', ''))[:12]} "
            f"at {latest.get('finished_at') or latest.get('started_at') or '?'}{verdict}",
            f"           {latest.get('reason', '')}"]


def _refuse_managed(apps: list[App], args: argparse.Namespace) -> bool:
    managed = [app.name for app in apps if app.managed]
    if managed and not args.force:
        print(f"x8-apps {args.command}: {', '.join(managed)} managed by aktualizr-lite, which starts and "
              "stops it to match the device's Target; change the Target's apps (fioctl devices config "
              "updates --apps) or pass --force", file=sys.stderr)
        return True
    return False


def _run_verb(args: argparse.Namespace, arguments: list[str]) -> int:
    _, apps = _context(args)
    chosen = _select(apps, args.apps, args)
    if chosen is None:
        return EXIT_USAGE
    if _refuse_managed(chosen, args):
        return EXIT_MANAGED
    tool = _tool(args)
    if tool is None:
        return EXIT_NO_DOCKER
    failed = [app.name for app in chosen if tool.run(app, arguments).returncode != 0]
    if failed:
        print(f"x8-apps {args.command}: failed for {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run_start(args: argparse.Namespace) -> int:
    return _run_verb(args, ["up", "-d"])


def _run_stop(args: argparse.Namespace) -> int:
    return _run_verb(args, ["stop"])


def _run_logs(args: argparse.Namespace) -> int:
    _, apps = _context(args)
    chosen = _select(apps, [args.app], args)
    if chosen is None:
        return EXIT_USAGE
    tool = _tool(args)
    if tool is None:
        return EXIT_NO_DOCKER
    arguments = ["logs", "--tail", str(args.tail)]
    if args.follow:
        arguments.append("--follow")
    if args.service:
        arguments.append(args.service)
    return EXIT_FAILED if tool.run(chosen[0], arguments).returncode else 0
