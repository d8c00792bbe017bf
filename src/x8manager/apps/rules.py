"""The Portenta X8 rules ``x8-apps lint`` applies to a compose file that passed the schema.

Each rule has an id, a name and a severity (see :data:`RULES`). The facts behind them:
containers reach the host's ``m4-proxy`` as ``m4-proxy`` through ``extra_hosts:
"m4-proxy:host-gateway"``; the proxy forwards M4 calls to ``127.0.0.1:<registered port>`` on the
host, so a procedure port must be published there (TCP, same number); the proxy owns
``/dev/x8h7_ui`` and ports 5000/5001; FoundriesFactory publishes and aktualizr-lite pulls apps by
``image:``; apps that use Arduino's arduino-router-bridge reach m4-proxy's router front through the
host's socket ``/var/run/arduino-router.sock``, mounted at the same path (the Bridge's default
address).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

from .findings import Finding, Severity
from .ports import PortMapping, PortSyntaxError, is_interpolated, parse_port_entry
from .sketch import check_sketch_services, sketch_services
from .yamlsource import ComposeSource, Path

__all__ = ["PROXY_HOSTNAME", "ROUTER_SOCKET", "RPC_PORT_VARIABLES", "RULES", "Rule", "check_x8_rules"]

PROXY_HOSTNAME = "m4-proxy"
PROXY_DEVICE = "/dev/x8h7_ui"
PROXY_PORTS = (5000, 5001)
# Our templates tell lint (and the app itself) which port the app registers with the proxy.
RPC_PORT_VARIABLES = ("RPC_SERVICE_PORT", "RPC_SERVICE_PORTS")
# Work limits (X8003): port ranges expand to one mapping per port, and every procedure port is
# looked up among them, so both are counted.
MAX_PORT_MAPPINGS = 65_536  # per file
MAX_PROCEDURE_PORTS = 256  # per service
LEGACY_GATEWAY = "172.17.0.1"
# m4-proxy's router front, where arduino-router-bridge's Bridge() connects by default (/var/run is
# /run on the host and in usual base images).
ROUTER_SOCKET = "/var/run/arduino-router.sock"
_ROUTER_SOCKET_PATHS = (ROUTER_SOCKET, "/run/arduino-router.sock")
# An app folder's code or build files that name the Bridge (import path or distribution name).
_BRIDGE_USE = re.compile(r"\barduino\.router_bridge\b|\barduino[-_]router[-_]bridge\b")
_BRIDGE_SCAN_LIMIT = (200, 1024 * 1024)  # files, bytes per file
# Patterns of whole values are used with fullmatch: "$" would also match before a final "\n".
FACTORY_IMAGE = re.compile(r"hub\.foundries\.io/\$\{FACTORY\}/(?P<repository>[a-z0-9._-]+)(?::[\w.-]+)?")


@dataclass(frozen=True)
class Rule:
    rule: str
    name: str
    severity: Severity
    summary: str


RULES: dict[str, Rule] = {
    rule.rule: rule
    for rule in (
        Rule("X8000", "yaml-syntax", Severity.ERROR, "the file is not valid YAML"),
        Rule("X8001", "duplicate-key", Severity.ERROR, "a mapping repeats a key (docker compose rejects it)"),
        Rule("X8002", "compose-schema", Severity.ERROR, "the file breaks the Compose specification"),
        Rule("X8003", "input-limit", Severity.ERROR,
             "the file is beyond what lint reads (size, nesting, alias expansion, port counts): exit 2"),
        Rule("X8004", "yaml-tag", Severity.ERROR,
             "a YAML tag docker compose does not read (e.g. !!python/object)"),
        Rule("X8101", "proxy-wiring-missing", Severity.ERROR,
             "the app uses the m4-proxy hostname but does not map it with extra_hosts"),
        Rule("X8102", "proxy-legacy-ip", Severity.WARNING,
             "m4-proxy is mapped to a fixed IP instead of host-gateway"),
        Rule("X8103", "procedure-port-unpublished", Severity.ERROR,
             "a port the app registers with the proxy is not published on the host"),
        Rule("X8104", "procedure-port-unreachable", Severity.ERROR,
             "a procedure port is published where the proxy (127.0.0.1, TCP, same port) cannot reach it"),
        Rule("X8105", "proxy-device-conflict", Severity.ERROR,
             "the app opens /dev/x8h7_ui, which m4-proxy holds"),
        Rule("X8106", "proxy-port-conflict", Severity.ERROR,
             "the app takes port 5000 or 5001, which m4-proxy listens on"),
        Rule("X8107", "image-missing", Severity.ERROR,
             "a service has no image: a Factory cannot publish it, aktualizr-lite cannot pull it"),
        Rule("X8108", "device-not-on-x8", Severity.WARNING, "a device that the Portenta X8 does not have"),
        Rule("X8109", "privileges-too-wide", Severity.WARNING, "more privileges than an app needs"),
        Rule("X8110", "restart-policy-missing", Severity.WARNING,
             "no restart policy: the app stays down after a crash or reboot"),
        Rule("X8111", "root-writable", Severity.NOTE, "the container's root file system is writable"),
        Rule("X8112", "factory-image-not-built", Severity.WARNING,
             "in containers.git, a Factory image that no app folder builds"),
        Rule("X8113", "router-socket-missing", Severity.ERROR,
             "the app's code uses arduino-router-bridge but the service does not mount the router socket"),
        Rule("X8114", "router-socket-elsewhere", Severity.ERROR,
             "the router socket is mounted where the Bridge does not look for it, or from another host path"),
        Rule("X8115", "sketch-missing", Severity.ERROR,
             "the sketch a sketch service flashes (X8_SKETCH) is not in the image, or not built yet"),
        Rule("X8116", "sketch-health-unbound", Severity.ERROR,
             "the health check names a method the sketch's source never binds"),
        Rule("X8117", "sketch-socket-missing", Severity.ERROR,
             "a sketch service does not mount the flasher's request socket (/run/m4-flasher)"),
        Rule("X8118", "sketch-restarts", Severity.ERROR,
             "a sketch service has a restart policy: it must run once (restart: \"no\")"),
        Rule("X8119", "sketch-not-awaited", Severity.WARNING,
             "no service waits for the sketch service (depends_on: service_completed_successfully)"),
        Rule("X8120", "sketch-outside-folder", Severity.ERROR,
             "the Dockerfile copies the sketch from outside the app folder, where docker build cannot reach"),
        Rule("X8121", "sketch-waits-for-serial", Severity.ERROR,
             "the sketch waits with while (!Serial), which never ends on an X8's M4"),
        Rule("X8122", "sketch-serial-without-serialrpc", Severity.ERROR,
             "the sketch uses Serial without #include <SerialRPC.h> (and <RPC.h>)"),
    )
}

# Device nodes a Portenta X8 (i.MX8M Mini, x8h7 drivers, USB host/gadget) can have.
_X8_DEVICES = re.compile(
    r"/dev/("
    r"i2c-\d+|gpiochip\d+|tee0|teepriv0|ttyGS\d+|ttymxc[0-3]|ttyX\d+|spidev\d+\.\d+|"
    r"video\d+|media\d+|v4l-subdev\d+|dri(/.*)?|snd(/.*)?|galcore|mxc_hantro(_h1)?|mxc_hantro_vc8000e|ion|"
    r"dma_heap(/.*)?|ttyUSB\d+|ttyACM\d+|cdc-wdm\d+|bus/usb(/.*)?|input(/.*)?|hidraw\d+|uinput|"
    r"mmcblk\d+(p\d+|boot\d+|rpmb)?|sd[a-z]+\d*|watchdog\d*|rtc\d*|iio:device\d+|net/tun|fuse|"
    r"null|zero|full|random|urandom|tty|console|ptmx|pts(/.*)?|shm|cpu_dma_latency|fb\d+|loop\d+|"
    r"loop-control|mtd\d+|mtdblock\d+|serial/by-(id|path)/.+|gpio/.+|x8h7_ui"
    r")"
)
# Devices people copy from other boards' examples, with what the X8 has instead.
_FOREIGN_DEVICES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/dev/ttyAMA\d+"), "a Raspberry Pi UART; the X8's UARTs are /dev/ttymxc0..3"),
    (re.compile(r"/dev/ttyS\d+"), "a PC-style UART; the X8's UARTs are /dev/ttymxc0..3"),
    (re.compile(r"/dev/ttyTHS\d+"), "a Jetson UART; the X8's UARTs are /dev/ttymxc0..3"),
    (re.compile(r"/dev/(gpiomem|vchiq|vcsm.*|vcio)"), "a Raspberry Pi device; use /dev/gpiochipN"),
    (re.compile(r"/dev/nvidia.*"), "an NVIDIA GPU device; the X8's GPU is /dev/galcore"),
    (re.compile(r"/dev/kvm"), "KVM is not available to apps on the X8"),
)
_BROAD_CAPABILITIES = {"SYS_ADMIN", "SYS_MODULE", "SYS_RAWIO", "SYS_PTRACE", "SYS_BOOT", "NET_ADMIN",
                       "DAC_READ_SEARCH", "MAC_ADMIN", "SYS_TIME", "BPF", "PERFMON"}
_HOST_PATHS = {"/": "the whole host file system", "/dev": "every host device",
               "/var/run/docker.sock": "the Docker socket (root on the host)",
               "/run/docker.sock": "the Docker socket (root on the host)",
               "/var/sota": "aktualizr-lite's state and keys", "/etc": "the host's configuration",
               "/sys": "the whole of sysfs", "/proc": "the host's /proc"}


class _LimitExceeded(Exception):
    """The file asks for more work than the limits allow; the X8 rules stop there."""

    def __init__(self, where: Path, message: str, service: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message
        self.service = service


class _Checker:
    def __init__(self, source: ComposeSource, path: str) -> None:
        self.source = source
        self.path = path
        self.findings: list[Finding] = []
        self.port_mappings = 0

    def report(self, rule_id: str, where: Path, message: str, service: str | None, *,
               key: bool = False) -> None:
        rule = RULES[rule_id]
        self.findings.append(Finding(self.path, self.source.line_of(where, key=key), rule.rule, rule.name,
                                     rule.severity, message, service))


def _environment(service: dict[str, Any]) -> dict[str, tuple[str | None, int | str]]:
    """Variable name -> (value, key in the environment list/mapping)."""
    env = service.get("environment")
    result: dict[str, tuple[str | None, int | str]] = {}
    if isinstance(env, dict):
        for name, value in env.items():
            result[str(name)] = (None if value is None else str(value), str(name))
    elif isinstance(env, list):
        for index, item in enumerate(env):
            name, sep, value = str(item).partition("=")
            result[name] = (value if sep else None, index)
    return result


def _extra_hosts(service: dict[str, Any]) -> dict[str, tuple[str, int | str]]:
    """Hostname -> (address, key in extra_hosts)."""
    hosts = service.get("extra_hosts")
    result: dict[str, tuple[str, int | str]] = {}
    if isinstance(hosts, dict):
        for name, address in hosts.items():
            value = ",".join(map(str, address)) if isinstance(address, list) else str(address)
            result[str(name)] = (value, str(name))
    elif isinstance(hosts, list):
        for index, item in enumerate(hosts):
            text = str(item)
            # "name:address" (classic) or "name=address" (compose >= 2.24, allows IPv6 without brackets).
            split = re.fullmatch(r"([^:=]+)[:=](.*)", text, re.DOTALL)
            if split:
                result[split.group(1).strip()] = (split.group(2).strip().strip("[]"), index)
    return result


def _mentions_proxy(value: Any) -> bool:
    if isinstance(value, str):
        return re.search(rf"(^|[^\w.-]){PROXY_HOSTNAME}($|[^\w.-])", value) is not None
    if isinstance(value, dict):
        return any(_mentions_proxy(item) for item in value.values())
    if isinstance(value, list):
        return any(_mentions_proxy(item) for item in value)
    return False


def _is_fixed_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _port_number(text: str) -> int | None:
    try:
        number = int(text)
    except ValueError:
        return None
    return number if 0 < number < 65536 else None


def _service_checks(check: _Checker, name: str, service: dict[str, Any]) -> None:
    base: Path = ("services", name)
    env = _environment(service)
    hosts = _extra_hosts(service)
    network_host = service.get("network_mode") == "host"

    _check_image(check, name, service, base)
    _check_restart(check, name, service, base)
    _check_read_only(check, name, service, base)
    _check_proxy_wiring(check, name, service, base, env=env, hosts=hosts, network_host=network_host)
    mappings = _check_ports(check, name, service, base)
    _check_procedure_ports(check, name, service, base, env=env, mappings=mappings,
                           network_host=network_host)
    _check_devices(check, name, service, base)
    _check_privileges(check, name, service, base)


def _check_image(check: _Checker, name: str, service: dict[str, Any], base: Path) -> None:
    if not service.get("image"):
        how = " (it only has build:, which a Factory does not publish)" if "build" in service else ""
        check.report("X8107", base, f"no image:{how}; use hub.foundries.io/${{FACTORY}}/{name}:latest",
                     name, key=True)


def _check_restart(check: _Checker, name: str, service: dict[str, Any], base: Path) -> None:
    if sketch_services({name: service}):
        return  # a sketch service runs once per start of the app (X8118)
    restart = service.get("restart")
    deploy = service.get("deploy")
    deploy_policy = deploy.get("restart_policy") if isinstance(deploy, dict) else None
    if restart in (None, "no") and not deploy_policy:
        where: Path = (*base, "restart") if restart is not None else base
        check.report("X8110", where, "add restart: unless-stopped (as Arduino's apps do)", name,
                     key=restart is None)


def _check_read_only(check: _Checker, name: str, service: dict[str, Any], base: Path) -> None:
    if not service.get("read_only"):
        check.report("X8111", base, "consider read_only: true with a /tmp mount, as Arduino's apps do",
                     name, key=True)


def _check_proxy_wiring(check: _Checker, name: str, service: dict[str, Any], base: Path, *,
                        env: dict[str, tuple[str | None, int | str]],
                        hosts: dict[str, tuple[str, int | str]], network_host: bool) -> None:
    if PROXY_HOSTNAME in hosts:
        address, key = hosts[PROXY_HOSTNAME]
        loopback_on_host = network_host and address in ("127.0.0.1", "::1")
        if _is_fixed_ip(address) and not loopback_on_host:
            check.report("X8102", (*base, "extra_hosts", key),
                         f"m4-proxy is mapped to the fixed address {address}, which breaks when the "
                         "Docker bridge's address differs (custom bip, compose networks); use "
                         "\"m4-proxy:host-gateway\"", name)
        return
    for variable, (value, key) in env.items():
        if value and variable.endswith("_HOST") and value.strip() == LEGACY_GATEWAY:
            check.report("X8102", (*base, "environment", key),
                         f"{variable}={value} hard-codes the docker0 address; set {variable}=m4-proxy "
                         "and add extra_hosts: [\"m4-proxy:host-gateway\"]", name)
    # Where the app names the proxy: an environment value, else its command line or health check.
    mentions: list[Path] = [(*base, "environment", key) for value, key in env.values()
                            if _mentions_proxy(value)]
    mentions += [(*base, key) for key in ("command", "entrypoint", "healthcheck")
                 if _mentions_proxy(service.get(key))]
    if mentions:
        how = "" if network_host else " (the name exists in a container only through extra_hosts)"
        check.report("X8101", mentions[0],
                     f"the app connects to {PROXY_HOSTNAME} but extra_hosts does not map it; add "
                     f"extra_hosts: [\"{PROXY_HOSTNAME}:host-gateway\"]{how}", name, key=True)


def _check_ports(check: _Checker, name: str, service: dict[str, Any], base: Path
                 ) -> list[tuple[PortMapping, Path]]:
    mappings: list[tuple[PortMapping, Path]] = []
    for index, entry in enumerate(service.get("ports") or []):
        where: Path = (*base, "ports", index)
        try:
            parsed = parse_port_entry(entry)
        except PortSyntaxError as error:
            check.report("X8002", where, str(error), name)
            continue
        check.port_mappings += len(parsed)
        if check.port_mappings > MAX_PORT_MAPPINGS:
            raise _LimitExceeded(where, f"the ports of this file publish more than {MAX_PORT_MAPPINGS} "
                                        "port mappings; lint stops checking ports there", name)
        for mapping in parsed:
            mappings.append((mapping, where))
        taken = sorted({m.host_port for m in parsed if m.host_port in PROXY_PORTS and m.protocol == "tcp"})
        if taken:
            ports = " and ".join(map(str, taken))
            check.report("X8106", where,
                         f"publishes host port {ports}, which m4-proxy listens on (5000 registers, 5001 "
                         "calls the M4); the app cannot start while the proxy runs. Publish only the "
                         "app's own procedure ports (e.g. 5002-5020)", name)
    return mappings


def _procedure_ports(service: dict[str, Any], base: Path, env: dict[str, tuple[str | None, int | str]],
                     name: str) -> list[tuple[int, Path]]:
    ports: list[tuple[int, Path]] = []
    for variable in RPC_PORT_VARIABLES:
        if variable in env:
            value, key = env[variable]
            if value is None or is_interpolated(value):
                continue
            parts = value.split(",", MAX_PROCEDURE_PORTS)
            if len(parts) > MAX_PROCEDURE_PORTS:
                raise _LimitExceeded((*base, "environment", key),
                                     f"{variable} lists more than {MAX_PROCEDURE_PORTS} ports; lint checks "
                                     "up to that many", name)
            for part in parts:
                number = _port_number(part.strip())
                if number is not None:
                    ports.append((number, (*base, "environment", key)))
    for index, entry in enumerate(service.get("expose") or []):
        text = str(entry).split("/")[0]
        if "-" not in text and (number := _port_number(text)) is not None:
            ports.append((number, (*base, "expose", index)))
    if len(ports) > MAX_PROCEDURE_PORTS:
        raise _LimitExceeded((*base, "expose"), f"more than {MAX_PROCEDURE_PORTS} procedure ports; lint "
                                                "checks up to that many", name)
    return ports


def _check_procedure_ports(check: _Checker, name: str, service: dict[str, Any], base: Path, *,
                           env: dict[str, tuple[str | None, int | str]],
                           mappings: list[tuple[PortMapping, Path]], network_host: bool) -> None:
    wired = PROXY_HOSTNAME in _extra_hosts(service) or any(v in env for v in RPC_PORT_VARIABLES)
    by_container_port: dict[int, list[tuple[PortMapping, Path]]] = {}
    for mapping, mapping_where in mappings:
        by_container_port.setdefault(mapping.container_port, []).append((mapping, mapping_where))
    for port, where in _procedure_ports(service, base, env, name) if wired else []:
        if port in PROXY_PORTS:
            check.report("X8106", where, f"the app registers port {port}, which is m4-proxy's own", name)
            continue
        if network_host:
            continue
        published = by_container_port.get(port, [])
        if not published:
            check.report("X8103", where,
                         f"the app serves procedures on port {port} but does not publish it; the proxy "
                         f"calls 127.0.0.1:{port} on the host, so add ports: [\"{port}:{port}\"]", name)
            continue
        good = [m for m, _ in published
                if m.protocol == "tcp" and m.loopback_reachable and m.host_port == port]
        if good:
            continue
        mapping, mapping_where = published[0]
        if mapping.protocol != "tcp":
            why = f"it is published as {mapping.protocol}, the proxy uses TCP"
        elif not mapping.loopback_reachable:
            why = f"it is published on {mapping.host_ip} only, the proxy connects to 127.0.0.1"
        elif mapping.host_port is None:
            why = "it is published on a random host port, the proxy dials the registered number"
        else:
            why = (f"it is published as host port {mapping.host_port}, the proxy dials the registered "
                   f"port {port}")
        check.report("X8104", mapping_where, f"procedure port {port}: {why}; use \"{port}:{port}\"", name)


def _device_paths(service: dict[str, Any], base: Path) -> Iterator[tuple[str, Path]]:
    for index, entry in enumerate(service.get("devices") or []):
        source = entry.get("source") if isinstance(entry, dict) else str(entry).split(":")[0]
        if isinstance(source, str) and source.startswith("/dev") and not is_interpolated(source):
            yield source.rstrip("/") or "/", (*base, "devices", index)


def _bind_sources(service: dict[str, Any], base: Path) -> Iterator[tuple[str, Path]]:
    for index, entry in enumerate(service.get("volumes") or []):
        if isinstance(entry, dict):
            source = entry.get("source") if entry.get("type", "bind") == "bind" else None
        else:
            source = str(entry).split(":")[0]
        if isinstance(source, str) and source.startswith("/") and not is_interpolated(source):
            yield (source.rstrip("/") or "/"), (*base, "volumes", index)


def _check_devices(check: _Checker, name: str, service: dict[str, Any], base: Path) -> None:
    for device, where in _device_paths(service, base):
        if device == PROXY_DEVICE:
            check.report("X8105", where,
                         f"{PROXY_DEVICE} is held by m4-proxy on the host; talk to the M4 through the "
                         "proxy (m4-proxy:5001 to call, m4-proxy:5000 to register) instead", name)
            continue
        for pattern, hint in _FOREIGN_DEVICES:
            if pattern.fullmatch(device):
                check.report("X8108", where, f"{device} does not exist on the Portenta X8: {hint}", name)
                break
        else:
            if device == "/dev":
                check.report("X8109", where, "passes every host device; list the devices the app uses",
                             name)
            elif not _X8_DEVICES.fullmatch(device):
                check.report("X8108", where, f"{device} is not a device of the Portenta X8", name)
    for source, where in _bind_sources(service, base):
        if source == PROXY_DEVICE:
            check.report("X8105", where, f"mounts {PROXY_DEVICE}, which m4-proxy holds on the host", name)


def _bind_mounts(service: dict[str, Any], base: Path) -> Iterator[tuple[str, str, Path]]:
    """(host source, container target, where) of the service's bind mounts with absolute paths."""
    for index, entry in enumerate(service.get("volumes") or []):
        if isinstance(entry, dict):
            if entry.get("type", "bind") != "bind":
                continue
            source, target = entry.get("source"), entry.get("target")
        else:
            source, _, rest = str(entry).partition(":")
            target = rest.partition(":")[0]
        if isinstance(source, str) and isinstance(target, str) and source.startswith("/"):
            yield source.rstrip("/"), target.rstrip("/"), (*base, "volumes", index)


def _check_router_socket(check: _Checker, name: str, service: dict[str, Any], base: Path, *,
                         uses_bridge: bool) -> None:
    mounted = False
    for source, target, where in _bind_mounts(service, base):
        if source in _ROUTER_SOCKET_PATHS:
            mounted = True
            if target not in _ROUTER_SOCKET_PATHS:
                check.report("X8114", where, f"the router socket is mounted at {target}; the Bridge connects "
                             f"to unix://{ROUTER_SOCKET} by default: mount it at {ROUTER_SOCKET}", name)
        elif target in _ROUTER_SOCKET_PATHS:
            check.report("X8114", where, f"{target} gets {source}; m4-proxy's router socket on the host is "
                         f"{ROUTER_SOCKET}: mount \"{ROUTER_SOCKET}:{ROUTER_SOCKET}\"", name)
    if uses_bridge and not mounted:
        check.report("X8113", base, "the app's code uses arduino-router-bridge; add volumes: "
                     f"- \"{ROUTER_SOCKET}:{ROUTER_SOCKET}\" (m4-proxy's router front)", name, key=True)


def _folder_uses_bridge(app_folder: FilePath) -> bool:
    """Whether the app folder's own code or build files name arduino-router-bridge (a vendored copy
    of the library itself under vendor/ does not count)."""
    max_files, max_bytes = _BRIDGE_SCAN_LIMIT
    candidates = [app_folder / "Dockerfile", app_folder / "pyproject.toml",
                  *sorted(app_folder.glob("requirements*.txt"))]
    with contextlib.suppress(OSError):  # an unreadable subfolder: what was found so far counts
        own_code = (path for path in app_folder.rglob("*.py")
                    if "vendor" not in path.relative_to(app_folder).parts[:1])
        candidates += itertools.islice(own_code, max_files)
    for path in candidates[:max_files]:
        try:
            with path.open("rb") as f:
                text = f.read(max_bytes).decode("utf-8", errors="replace")
        except OSError:
            continue
        if _BRIDGE_USE.search(text):
            return True
    return False


def _built_here(service: dict[str, Any], app_folder: FilePath) -> bool:
    image = service.get("image")
    match = FACTORY_IMAGE.fullmatch(image) if isinstance(image, str) else None
    return "build" in service or (match is not None and match.group("repository") == app_folder.name)


def _check_privileges(check: _Checker, name: str, service: dict[str, Any], base: Path) -> None:
    if service.get("privileged") is True:
        check.report("X8109", (*base, "privileged"),
                     "privileged: true gives the app every device and capability; list the devices "
                     "(devices:) and capabilities (cap_add:) it needs instead", name)
    for index, capability in enumerate(service.get("cap_add") or []):
        cap = str(capability).upper().removeprefix("CAP_")
        where: Path = (*base, "cap_add", index)
        if cap == "ALL":
            check.report("X8109", where, "cap_add: ALL is the same as privileged; add only the "
                         "capabilities the app needs", name)
        elif cap in _BROAD_CAPABILITIES:
            check.report("X8109", where, f"{cap} is a broad capability; make sure the app needs it", name)
    for index, option in enumerate(service.get("security_opt") or []):
        if "unconfined" in str(option):
            check.report("X8109", (*base, "security_opt", index),
                         f"{option} turns off a kernel confinement layer for the app", name)
    for key in ("pid", "ipc", "uts", "userns_mode", "cgroup"):
        if service.get(key) == "host":
            check.report("X8109", (*base, key), f"{key}: host shares the host's {key} namespace", name)
    for source, where in _bind_sources(service, base):
        if source in _HOST_PATHS and source != "/sys":
            check.report("X8109", where, f"mounts {source}: {_HOST_PATHS[source]}", name)
    for index, rule in enumerate(service.get("device_cgroup_rules") or []):
        if re.match(r"^a\s+\*:\*", str(rule)):
            check.report("X8109", (*base, "device_cgroup_rules", index),
                         "allows every device; list the major numbers the app needs", name)


def _check_factory_image(check: _Checker, name: str, service: dict[str, Any], base: Path,
                         app_folder: FilePath) -> None:
    """FoundriesFactory builds ``<folder>/Dockerfile`` of containers.git as ``.../${FACTORY}/<folder>``."""
    image = service.get("image")
    match = FACTORY_IMAGE.fullmatch(image) if isinstance(image, str) else None
    if match is None:
        return
    built_by = app_folder.parent / match.group("repository")
    if not (built_by / "Dockerfile").is_file():
        check.report("X8112", (*base, "image"),
                     f"no folder {match.group('repository')}/ with a Dockerfile next to this app in "
                     f"containers.git, so the Factory never builds {image}", name)


def check_x8_rules(source: ComposeSource, path: str) -> list[Finding]:
    """Apply the X8 rules to a document that passed the Compose schema."""
    check = _Checker(source, path)
    document = source.document
    services = document.get("services") if isinstance(document, dict) else None
    # An app folder with a Dockerfile is a containers.git checkout (on a device there is none).
    # Absolute: the folder's name and its neighbours matter, also for "x8-apps lint ." inside it.
    app_folder = FilePath(path).absolute().parent
    in_containers_git = (app_folder / "Dockerfile").is_file()
    if isinstance(services, dict):
        try:
            uses_bridge = in_containers_git and _folder_uses_bridge(app_folder)
            built_here = [name for name, service in services.items()
                          if isinstance(service, dict) and _built_here(service, app_folder)]
            # The folder's code runs in the services it builds (or in the one service there is).
            bridge_services = set(built_here or (list(services) if len(services) == 1 else []))
            for name, service in services.items():
                if isinstance(service, dict):
                    _service_checks(check, str(name), service)
                    _check_router_socket(check, str(name), service, ("services", str(name)),
                                         uses_bridge=uses_bridge and name in bridge_services)
                    if in_containers_git:
                        _check_factory_image(check, str(name), service, ("services", str(name)), app_folder)
            for problem in check_sketch_services(services, app_folder, in_containers_git=in_containers_git):
                check.report(problem.rule, problem.where, problem.message, problem.service, key=problem.key)
        except _LimitExceeded as limit:
            check.report("X8003", limit.where, limit.message, limit.service)
    return check.findings
