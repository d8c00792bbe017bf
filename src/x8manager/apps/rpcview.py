"""``x8-apps rpc``: which procedures each app registered with m4-proxy.

The proxy answers ``list`` on its register port (5000) with its registry, a map name -> port
(our proxy's addition; Arduino's Go proxy has no such call). A port is matched to the app that
publishes it on the host, read from the apps' compose files, so this needs no Docker engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..rpc import M4Client, RpcError, X8RpcError
from .device import App, _add_common, _context
from .ports import PortSyntaxError, parse_port_entry
from .yamlsource import YamlLoadError, load_compose_text

__all__ = ["Registration", "add_parser", "fetch_registry", "original_proxy_pid", "published_ports",
           "registrations"]

INTROSPECTION_METHOD = "list"
# Arduino's Go proxy (/usr/bin/m4_proxy) panics on any method but "register" on port 5000,
# and a restart loses every registration; so we do not ask it.
ORIGINAL_PROXY_COMM = "m4_proxy"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def original_proxy_pid(proc: Path = Path("/proc")) -> int | None:
    """The pid of a running Arduino Go m4_proxy on this machine, if any."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue  # the process ended while we looked
        if comm == ORIGINAL_PROXY_COMM:
            return int(entry.name)
    return None


@dataclass(frozen=True)
class Registration:
    procedure: str
    port: int
    app: str | None
    service: str | None


def fetch_registry(host: str, port: int, timeout: float) -> dict[str, int]:
    """Ask the proxy for its registry; raise X8RpcError (with the reason) if it cannot answer."""
    client = M4Client(host=host, port=port, timeout=timeout)
    answer = client.call(INTROSPECTION_METHOD)
    if not isinstance(answer, dict):
        raise RpcError(INTROSPECTION_METHOD, f"expected a map name -> port, got {answer!r}")
    registry: dict[str, int] = {}
    for name, number in answer.items():
        key = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        if isinstance(number, int):
            registry[key] = number
    return registry


def published_ports(apps: Iterable[App]) -> dict[int, tuple[str, str]]:
    """Host TCP port -> (app, service), from each app's compose file; unreadable files are skipped."""
    owners: dict[int, tuple[str, str]] = {}
    for app in apps:
        try:
            document = load_compose_text(app.compose_file.read_text(encoding="utf-8")).document
        except (OSError, UnicodeDecodeError, YamlLoadError):
            continue
        services = document.get("services") if isinstance(document, dict) else None
        for service_name, service in (services or {}).items():
            if not isinstance(service, dict):
                continue
            for entry in service.get("ports") or []:
                try:
                    mappings = parse_port_entry(entry)
                except PortSyntaxError:
                    continue
                for mapping in mappings:
                    if mapping.host_port is not None and mapping.protocol == "tcp":
                        owners.setdefault(mapping.host_port, (app.name, str(service_name)))
    return owners


def registrations(registry: dict[str, int], owners: dict[int, tuple[str, str]]) -> list[Registration]:
    rows = []
    for procedure, port in sorted(registry.items(), key=lambda item: (item[1], item[0])):
        app, service = owners.get(port, (None, None))
        rows.append(Registration(procedure, port, app, service))
    return rows


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("rpc", help="procedures registered with m4-proxy, by app")
    _add_common(parser)
    parser.add_argument("--proxy-host", default="127.0.0.1", help="where m4-proxy runs (default 127.0.0.1)")
    parser.add_argument("--register-port", type=int, default=5000, help="m4-proxy's register port (5000)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the proxy")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--force", action="store_true",
                        help="ask even if Arduino's original m4_proxy runs here (it crashes on the question)")
    parser.set_defaults(handler=_run_rpc)


def _run_rpc(args: argparse.Namespace) -> int:
    if args.proxy_host in LOCAL_HOSTS and not args.force and (pid := original_proxy_pid()) is not None:
        print(f"x8-apps rpc: Arduino's original m4_proxy runs here (pid {pid}); it has no way to list "
              "registrations and crashes on the question, losing every app's registration. Install "
              "this project's m4-proxy, or pass --force", file=sys.stderr)
        return 1
    try:
        registry = fetch_registry(args.proxy_host, args.register_port, args.timeout)
    except X8RpcError as error:
        print(f"x8-apps rpc: cannot read m4-proxy's registry at {args.proxy_host}:{args.register_port}: "
              f"{error} (is m4-proxy running? systemctl status m4-proxy)", file=sys.stderr)
        return 1
    _, apps = _context(args)
    rows = registrations(registry, published_ports(apps))
    if args.format == "json":
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    if not rows:
        print("no procedures are registered with m4-proxy")
    for row in rows:
        owner = f"{row.app}/{row.service}" if row.app else "(no app publishes this port: a host process?)"
        print(f"{row.procedure:24} port {row.port:<6} {owner}")
    return 0
