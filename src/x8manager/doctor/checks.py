"""The checks, one layer at a time, bottom-up; each layer stops at its first problem.

Every check returns a :class:`Finding`; a layer is a list of checks run in order. The H7 layer
follows what Arduino's image does at boot: ``stm32h7-program.service`` runs ``program-h7.sh``,
which compares ``/sys/kernel/x8h7_firmware/version`` (the x8h7_h7 driver asks the H7 over SPI)
with the version string at offset 0x40000 of the firmware image and reflashes on a mismatch.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from x8manager.doctor import probe
from x8manager.doctor.expectations import EXPECT_LABEL, expected_methods
from x8manager.doctor.findings import LAYERS, Finding, Report, Status
from x8manager.doctor.host import Host, Process

__all__ = ["Options", "diagnose"]

H7_UNIT = "stm32h7-program.service"
PROXY_UNIT = "m4-proxy.service"
# Holds the router socket for the proxy (socket activation), so it outlives proxy restarts.
ROUTER_SOCKET_UNIT = "m4-proxy.socket"
DEVICE = "/dev/x8h7_ui"
FIRMWARE_VERSION = "/sys/kernel/x8h7_firmware/version"
FIRMWARE_IMAGE = "/usr/arduino/extra/STM32H747AII6_CM7.bin"
FIRMWARE_VERSION_OFFSET = 0x40000
# x8h7_drv is the SPI core, x8h7_h7 the firmware interface, x8h7_ui the RPC character device.
MODULES = ("x8h7_drv", "x8h7_h7", "x8h7_ui")
FLASHER_STATE = "/var/lib/m4-flasher"
COMPOSE_APPS = "/var/sota/compose-apps"
DEFAULT_ROUTER_SOCKET = "/var/run/arduino-router.sock"  # m4-proxy's default, the Bridge's address
# Arguments no bound procedure takes: rpclib checks the count before calling, so a bound name
# answers "invalid number of arguments" without running, an unbound one "could not find".
ARITY_PROBE = [None] * 13


@dataclass
class Options:
    host: str = "127.0.0.1"
    register_port: int = 5000
    call_port: int = 5001
    timeout: float = 3.0
    since: str = "-10min"
    expect: list[str] = field(default_factory=list)
    compose: list[Path] = field(default_factory=list)
    flasher: Sequence[str] = ("m4-flasher",)
    # The router front's unix socket: None = the one the running proxy was started with; '' = skip.
    router_socket: str | None = None


def _ok(layer: str, check: str, message: str) -> Finding:
    return Finding(layer, check, Status.OK, message)


def _problem(layer: str, check: str, message: str, fix: str) -> Finding:
    return Finding(layer, check, Status.PROBLEM, message, fix)


# --- H7 side -------------------------------------------------------------------------------

def check_h7_programmer(host: Host, options: Options) -> Finding:
    unit = host.unit(H7_UNIT)
    if unit is None:
        return Finding("h7", "programmer", Status.SKIPPED, f"systemd not reachable; {H7_UNIT} not checked")
    if unit.get("LoadState") == "not-found":
        return Finding("h7", "programmer", Status.SKIPPED, f"{H7_UNIT} is not installed on this image")
    result = unit.get("Result", "")
    if result not in ("", "success"):
        return _problem("h7", "programmer",
                        f"{H7_UNIT} failed ({result}, exit status {unit.get('ExecMainStatus', '?')}): the H7 "
                        "firmware may not be programmed",
                        f"journalctl -u {H7_UNIT}; then systemctl restart {H7_UNIT}")
    return _ok("h7", "programmer", f"{H7_UNIT}: {unit.get('ActiveState', '?')}, result {result or 'none'}")


def check_modules(host: Host, options: Options) -> Finding:
    loaded = host.modules()
    if loaded is None:
        return Finding("h7", "modules", Status.SKIPPED, "/proc/modules not readable")
    missing = [module for module in MODULES if module not in loaded]
    if missing:
        return _problem("h7", "modules", f"x8h7 kernel modules not loaded: {', '.join(missing)}",
                        "check dmesg | grep x8h7; Arduino's image loads them from "
                        "load_modules_pre.sh/load_modules_post.sh (insmod .../extra/<module>.ko)")
    return _ok("h7", "modules", f"loaded: {', '.join(MODULES)}")


def _expected_firmware(host: Host) -> str | None:
    """The version string program-h7.sh reads: the first printable run at 0x40000 of the image."""
    try:
        with host.path(FIRMWARE_IMAGE).open("rb") as image:
            image.seek(FIRMWARE_VERSION_OFFSET)
            chunk = image.read(40)
    except OSError:
        return None
    text = "".join(chr(byte) if 32 <= byte < 127 else "\n" for byte in chunk)
    return next((run for run in text.split("\n") if len(run) >= 4), None)  # like strings | head -n1


def check_firmware(host: Host, options: Options) -> Finding:
    try:
        running = host.read(FIRMWARE_VERSION)
    except OSError as error:  # the driver asks the H7 over SPI: ETIMEDOUT when it does not answer
        return _problem("h7", "firmware", f"the H7 does not answer ({FIRMWARE_VERSION}: "
                                          f"{error.strerror or error}): its firmware is not running",
                        f"systemctl restart {H7_UNIT} (reprograms the H7 firmware)")
    if running is None:
        return _problem("h7", "firmware", f"{FIRMWARE_VERSION} is missing: the x8h7_h7 driver is not bound",
                        "check dmesg | grep x8h7 (the device tree's portenta,x8h7 node and SPI)")
    running = running.strip("\0\n ")
    expected = _expected_firmware(host)
    if expected is not None and running != expected:
        return _problem("h7", "firmware", f"the H7 runs firmware {running!r}, this image ships {expected!r}",
                        f"systemctl restart {H7_UNIT} (it reflashes the H7 when the versions differ)")
    return _ok("h7", "firmware", f"H7 firmware {running!r}" + ("" if expected else " (no image to compare)"))


@dataclass(frozen=True)
class _Owners:
    """Who may run the proxy: root, the doctor's own user (a proxy you started yourself), and
    whatever user systemd runs m4-proxy.service's main process as. Any user can name a process
    m4_proxy or m4-proxy, so the name alone says nothing."""

    uids: frozenset[int]
    unit_pid: int | None

    @classmethod
    def of(cls, unit: dict[str, str] | None) -> _Owners:
        """From the ``systemctl show`` properties of m4-proxy.service (None: systemd not asked)."""
        pid = (unit or {}).get("MainPID", "")
        return cls(frozenset({0, os.geteuid()}), int(pid) if pid.isdigit() and int(pid) > 0 else None)

    def trusted(self, process: Process) -> bool:
        return process.pid == self.unit_pid or (process.uid is not None and process.uid in self.uids)


def _runs(process: Process, script: str, *modules: str) -> bool:
    """Whether *process* is the Python console script *script* or ``python -m`` one of *modules*:
    the executable (when readable) is a Python interpreter, whatever the process calls itself."""
    if process.exe and not os.path.basename(process.exe).startswith("python"):
        return False
    if process.comm == script:
        return True
    args = process.cmdline
    interpreted = len(args) > 1 and os.path.basename(args[0]).startswith("python")
    return interpreted and (os.path.basename(args[1]) == script
                            or (len(args) > 2 and args[1] == "-m" and args[2] in modules))


def _is_ours(process: Process, owners: _Owners) -> bool:
    # x8manager.proxy.daemon is what the m4-proxy console script runs (it keeps ssl unloaded).
    return owners.trusted(process) and _runs(process, "m4-proxy", "x8manager.proxy.daemon",
                                             "x8manager.proxy.cli")


def _is_virtual_m4(process: Process, owners: _Owners) -> bool:
    # m4-sim, the stand-in M4 of tests and the virtual X8, keeps its pty's slave open: it is the
    # device's far end, not a second reader on the Linux side.
    return owners.trusted(process) and _runs(process, "m4-sim", "x8manager.m4sim.cli")


def _is_arduino_proxy(process: Process) -> bool:
    """Arduino's Go proxy: root's /usr/bin/m4_proxy. When the doctor may not read root's
    /proc/PID/exe (not run as root), a root process named m4_proxy: only root names root's processes."""
    if process.uid != 0:
        return False
    if process.exe:
        return os.path.basename(process.exe) == "m4_proxy"
    return process.comm == "m4_proxy"


def check_device(host: Host, options: Options) -> Finding:
    path = host.path(DEVICE)
    if not path.exists():
        return _problem("h7", "device", f"{DEVICE} does not exist: x8h7_ui is not bound",
                        "check dmesg | grep x8h7_ui (modprobe x8h7_ui; DT compatible portenta,x8h7_ui)")
    busy = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as error:
        # A device that takes one opener at a time (the twin's virtio port) is busy while the
        # proxy holds it: then who holds it is the finding.
        if error.errno != errno.EBUSY:
            return _problem("h7", "device", f"{DEVICE} cannot be opened: {error.strerror}",
                            "run x8 doctor as root (the device is root-only)")
        busy = True
    else:
        os.close(fd)
    owners = _Owners.of(host.unit(PROXY_UNIT))
    strangers = [process for process in host.holders(DEVICE)
                 if not _is_ours(process, owners) and not _is_virtual_m4(process, owners)]
    if strangers:
        names = "; ".join(process.description for process in strangers)
        return _problem("h7", "device", f"{DEVICE} is held by another process: {names}; two readers split "
                                        "the M4's messages between them",
                        "stop it (Arduino's m4_proxy: systemctl disable --now its unit; a container: "
                        "remove the device from its compose file)")
    if busy and not host.holders(DEVICE):
        return _problem("h7", "device", f"{DEVICE} is busy and no process shows it open",
                        "check dmesg for x8h7_ui; a container may hold it (docker ps; lsof in it)")
    return _ok("h7", "device", f"{DEVICE} present and " + ("held by m4-proxy" if busy else "openable"))


# --- proxy ---------------------------------------------------------------------------------

def check_proxy_running(host: Host, options: Options) -> Finding:
    processes = list(host.processes())
    arduino = [process for process in processes if _is_arduino_proxy(process)]
    if arduino:
        return _problem("proxy", "running", f"Arduino's Go m4_proxy is running ({arduino[0].description}) "
                                            "instead of, or beside, x8-manager's",
                        "systemctl disable --now the unit that starts /usr/bin/m4_proxy; "
                        f"systemctl enable --now {PROXY_UNIT}")
    unit = host.unit(PROXY_UNIT)
    owners = _Owners.of(unit)
    ours = [process for process in processes if _is_ours(process, owners)]
    if unit is not None and unit.get("ActiveState") not in ("active", "reloading"):
        return _problem("proxy", "running", f"{PROXY_UNIT} is {unit.get('ActiveState')} "
                                            f"(result {unit.get('Result', '?')})",
                        f"systemctl start {PROXY_UNIT}; journalctl -u {PROXY_UNIT} says why it stopped")
    if not ours and host.path("/proc").exists():
        return _problem("proxy", "running", "no m4-proxy process is running",
                        f"systemctl start {PROXY_UNIT}")
    return _ok("proxy", "running", f"x8-manager's m4-proxy: {ours[0].description if ours else 'active'}")


def check_proxy_ports(host: Host, options: Options) -> Finding:
    listening = host.listening_tcp_ports()
    if listening is None:
        return Finding("proxy", "ports", Status.SKIPPED, "/proc/net/tcp not readable")
    missing = [port for port in (options.register_port, options.call_port) if port not in listening]
    if missing:
        return _problem("proxy", "ports", f"nothing listens on port {', '.join(map(str, missing))}",
                        f"journalctl -u {PROXY_UNIT} (a port in use? --bind on an address the board lacks?)")
    return _ok("proxy", "ports", f"listening on {options.register_port} and {options.call_port}")


def _option(process: Process, flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` on *process*'s command line (the last one)."""
    arguments = list(process.cmdline)
    value = None
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif argument.startswith(flag + "="):
            value = argument.partition("=")[2]
    return value


def _proxy_router_socket(host: Host, options: Options) -> str | None:
    """The router socket the proxy on --register-port was started with (its default when not
    named); None when no proxy of ours serves that port."""
    owners = _Owners.of(host.unit(PROXY_UNIT))
    for process in host.processes():
        port = _option(process, "--register-port") or "5000"
        if _is_ours(process, owners) and port == str(options.register_port):
            named = _option(process, "--router-socket")
            return DEFAULT_ROUTER_SOCKET if named is None else named
    return None


def _connect_unix(sock: socket.socket, path: Path) -> None:
    """Connect to a UNIX socket at *path*, also past AF_UNIX's 108-byte limit (a deep --root):
    through the directory's descriptor in /proc/self/fd."""
    if len(os.fsencode(path)) < 108:
        sock.connect(str(path))
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def check_router_socket(host: Host, options: Options) -> Finding:
    where = options.router_socket
    if where is None:
        where = _proxy_router_socket(host, options)
        if where is None:
            return Finding("proxy", "router", Status.SKIPPED,
                           "no m4-proxy process to ask for its router socket")
    if not where:
        return Finding("proxy", "router", Status.SKIPPED, "the router front is off (--router-socket '')")
    path = host.path(where)
    socket_unit = host.unit(ROUTER_SOCKET_UNIT)
    held = socket_unit is not None and socket_unit.get("LoadState") == "loaded"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(options.timeout)
        try:
            _connect_unix(sock, path)
        except OSError as error:
            fix = (f"systemctl status {ROUTER_SOCKET_UNIT} (it holds the socket; is it active?); "
                   f"journalctl -u {ROUTER_SOCKET_UNIT} -u {PROXY_UNIT}" if held else
                   f"journalctl -u {PROXY_UNIT} (is the router front enabled?)")
            return _problem("proxy", "router", f"the router socket {where} does not accept "
                                               f"connections: {error.strerror or error}", fix)
    holder = f", held by {ROUTER_SOCKET_UNIT}" if held else ""
    return _ok("proxy", "router", f"the router socket {where} accepts connections{holder}")


def check_proxy_journal(host: Host, options: Options) -> Finding:
    lines = host.journal_errors(PROXY_UNIT, options.since)
    if lines is None:
        return Finding("proxy", "journal", Status.SKIPPED, "the journal cannot be read here")
    if lines:
        return Finding("proxy", "journal", Status.WARNING,
                       f"{len(lines)} error(s) in its journal since {options.since}, last: {lines[-1]}",
                       f"journalctl -u {PROXY_UNIT} -p err --since {options.since}")
    return _ok("proxy", "journal", f"no errors in its journal since {options.since}")


def check_registry(host: Host, options: Options) -> Finding:
    table = probe.registry(options.host, options.register_port, options.timeout)
    if isinstance(table, str):
        return _problem("proxy", "registry", f"the registry cannot be read: {table}",
                        f"journalctl -u {PROXY_UNIT}")
    by_port: dict[int, list[str]] = {}
    for name, port in table.items():
        by_port.setdefault(port, []).append(name)
    for port, names in sorted(by_port.items()):
        if not probe.dial(options.host, port, options.timeout):
            return _problem("proxy", "registry",
                            f"port {port} is registered (by the app serving {', '.join(sorted(names))}) but "
                            "nobody listens on it: the M4's calls to these names fail",
                            f"is that app running and publishing {port}? x8-apps status; its compose file "
                            f"needs ports: [\"{port}:{port}\"]")
    return _ok("proxy", "registry", f"{len(table)} name(s) on {len(by_port)} port(s), every port answers")


# --- sketch --------------------------------------------------------------------------------

def check_last_flash(host: Host, options: Options) -> Finding:
    done = host.run([*options.flasher, "status", "--json", "--state-dir", str(host.path(FLASHER_STATE))])
    if done.returncode is None:
        return Finding("sketch", "flash", Status.SKIPPED, f"m4-flasher not available ({done.stderr.strip()})")
    try:
        status = json.loads(done.stdout or "{}")
    except ValueError:
        return Finding("sketch", "flash", Status.SKIPPED, "m4-flasher status --json printed no JSON")
    result = status.get("result") if isinstance(status, dict) else None
    if result is None:
        return Finding("sketch", "flash", Status.WARNING, "no flash recorded by m4-flasher",
                       "adb push the sketch to /tmp/arduino/m4-user-sketch.elf (or m4-flasher flash FILE)")
    sha = str((status.get("sketch") or {}).get("sha256", "?"))[:12]
    if result != "success":
        return _problem("sketch", "flash", f"the last flash ({sha}) {result}: {status.get('reason')}",
                        "m4-flasher status shows openocd's output; fix the sketch and upload it again, "
                        "or m4-flasher rollback")
    return _ok("sketch", "flash", f"last flash of sketch {sha} succeeded ({status.get('finished_at')})")


def check_sketch_answers(host: Host, options: Options) -> Finding:
    outcome = probe.call(options.host, options.call_port, probe.PROBE_METHOD, [], options.timeout)
    if not outcome.answered:
        # A sketch that answered before and stopped has most likely halted: Arduino's RPC library
        # rethrows a msgpack type_error (a call with wrong argument types) and .as<T>() throws on
        # the nil an error reply gives; either ends in std::terminate, and the M4 is silent.
        return _problem("sketch", "rpc",
                        f"the M4 does not answer RPC ({outcome.reason}): no sketch is running, it never "
                        "calls RPC.begin(), or it has halted (on the M4 a call with wrong argument types, "
                        "or an unchecked .as<T>() on the nil an error reply gives, ends the sketch until "
                        "reset)",
                        "reset the M4 or flash the sketch again (m4-flasher status); check the argument "
                        "types apps send and that the sketch checks RPC.call results; a sketch calls "
                        "RPC.begin() in setup()")
    if probe.NOT_FOUND not in str(outcome.error):
        return _problem("sketch", "rpc", f"the M4 answers RPC oddly (the answer was {outcome.error!r}): "
                                         "is it running an RPC sketch?",
                        "flash a sketch that calls RPC.begin() in setup(); m4-flasher status")
    return _ok("sketch", "rpc", "a sketch answers RPC (rpclib's \"could not find function\" to a probe)")


def _expectations(host: Host, options: Options) -> dict[str, list[str]]:
    """Method -> who expects it bound: "--expect", or the apps whose compose files say so."""
    wanted: dict[str, list[str]] = {method: ["--expect"] for method in options.expect}
    try:
        from x8manager.apps.yamlsource import YamlLoadError, load_compose_file  # noqa: PLC0415 - PyYAML
    except ImportError:
        return wanted
    for file in _compose_files(host, options):
        try:
            document = load_compose_file(file).document
        except (OSError, YamlLoadError):
            continue  # the apps layer reports unreadable compose files
        for service, methods in expected_methods(document).items():
            for method in methods:
                wanted.setdefault(method, []).append(f"app {service}")
    return wanted


def check_expected_methods(host: Host, options: Options) -> Finding:
    wanted = _expectations(host, options)
    missing = []
    for method in wanted:
        outcome = probe.call(options.host, options.call_port, method, ARITY_PROBE, options.timeout)
        if not outcome.answered:
            return _problem("sketch", "methods", f"no answer when probing {method!r}: {outcome.reason}",
                            "the sketch stopped answering; m4-flasher status")
        if probe.NOT_FOUND in str(outcome.error):
            missing.append(method)
    if missing:
        named = ", ".join(f"{method!r} (expected by {', '.join(wanted[method])})" for method in missing)
        return _problem("sketch", "methods", f"the sketch does not bind {named}",
                        "add RPC.bind(\"name\", function) before RPC.begin() in the sketch, and flash it")
    if not wanted:
        return Finding("sketch", "methods", Status.SKIPPED,
                       f"no --expect methods given and no app's compose file names any ({EXPECT_LABEL})")
    return _ok("sketch", "methods", f"bound: {', '.join(wanted)}")


# --- apps ----------------------------------------------------------------------------------

# A method the M4 called in vain this recently (or holds a call of now): the sketch keeps calling it.
RECENT_CALL_SECONDS = 600.0

# The x8-apps lint rules about reaching the proxy and being reached by it.
APP_RULES = ("X8101", "X8102", "X8103", "X8104", "X8105", "X8106")


def _compose_files(host: Host, options: Options) -> list[Path]:
    if options.compose:
        return list(options.compose)
    from x8manager.apps.lint import compose_file_in  # noqa: PLC0415 - apps is optional here

    apps = host.path(COMPOSE_APPS)
    try:
        folders = sorted(child for child in apps.iterdir() if child.is_dir())
    except OSError:
        return []
    return [file for folder in folders if (file := compose_file_in(folder)) is not None]


def check_apps(host: Host, options: Options) -> Finding:
    try:
        from x8manager.apps.rules import check_x8_rules  # noqa: PLC0415 - needs PyYAML
        from x8manager.apps.yamlsource import YamlLoadError, load_compose_file  # noqa: PLC0415
    except ImportError:
        return Finding("apps", "wiring", Status.SKIPPED, "x8-apps (PyYAML) is not installed")
    files = _compose_files(host, options)
    for file in files:
        try:
            source = load_compose_file(file)
        except (OSError, YamlLoadError) as error:
            return Finding("apps", "wiring", Status.WARNING, f"{file}: cannot read: {error}",
                           f"x8-apps lint {file}")
        for finding in check_x8_rules(source, str(file)):
            if finding.rule in APP_RULES and finding.severity.is_problem:
                app = finding.service or file.parent.name
                status = Status.PROBLEM if finding.severity.value == "error" else Status.WARNING
                return Finding("apps", "wiring", status,
                               f"app {app} ({file}:{finding.line}): {finding.message}",
                               f"x8-apps lint {file}")
    return _ok("apps", "wiring", f"{len(files)} compose app(s): proxy host mapping and ports can work")


def _called_in_vain(name: str, entry: dict[str, object]) -> str:
    held = f", {entry['held']} held now" if entry.get("held") else ""
    return f"{name!r} ({entry.get('calls', 0)} call(s), the last {entry.get('seconds_ago', '?')} s ago{held})"


def check_unprovided_methods(host: Host, options: Options) -> Finding:
    found = probe.unprovided(options.host, options.register_port, options.timeout)
    if isinstance(found, str):
        return Finding("apps", "providers", Status.SKIPPED,
                       f"cannot ask the proxy what the M4 called: {found}")
    called = {name: entry for name, entry in found.items() if entry.get("calls")}
    recent = sorted(name for name, entry in called.items()
                    if entry.get("held") or float(entry.get("seconds_ago") or 0) <= RECENT_CALL_SECONDS)
    fix = ("start the app that provides it (x8-apps status): a service registers it on port "
           f"{options.register_port} (register(PORT, ['NAME'])), a Bridge app calls bridge.provide('NAME', "
           "handler); x8-trace --method NAME shows the calls")
    if recent:
        named = ", ".join(_called_in_vain(name, called[name]) for name in recent)
        return _problem("apps", "providers", f"the sketch calls {named}, which no Linux app provides: "
                                             "these calls get no reply (held a while, then dropped)", fix)
    if called or found:
        named = ", ".join(sorted(found))
        return Finding("apps", "providers", Status.WARNING,
                       f"the sketch called or notified {named} earlier, which no Linux app provides", fix)
    return _ok("apps", "providers", "every method the sketch called has a provider")


Check = Callable[[Host, Options], Finding]
CHECKS: dict[str, tuple[Check, ...]] = {
    "h7": (check_h7_programmer, check_modules, check_firmware, check_device),
    "proxy": (check_proxy_running, check_proxy_ports, check_router_socket, check_proxy_journal,
              check_registry),
    "sketch": (check_last_flash, check_sketch_answers, check_expected_methods),
    "apps": (check_apps, check_unprovided_methods),
}
assert tuple(CHECKS) == LAYERS


def diagnose(host: Host, options: Options) -> Report:
    """Run the layers bottom-up; stop at the first problem."""
    report = Report()
    for index, layer in enumerate(LAYERS):
        for check in CHECKS[layer]:
            finding = check(host, options)
            report.findings.append(finding)
            if finding.status is Status.PROBLEM:
                report.not_checked = list(LAYERS[index + 1:])
                return report
    return report
