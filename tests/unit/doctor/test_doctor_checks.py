"""x8 doctor's checks against the X8's artefacts laid out in a temporary root.

/proc/modules, /proc/PID/{comm,cmdline,exe,fd}, /proc/net/tcp, the x8h7 sysfs node, the firmware
image and /dev/x8h7_ui are files in the formats the kernel and Arduino's image give them; the
outputs of systemctl, journalctl and m4-flasher are what those commands print on an X8.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from x8manager.apps.yamlsource import load_compose_text
from x8manager.doctor import Status
from x8manager.doctor.checks import (
    FIRMWARE_VERSION_OFFSET,
    Options,
    check_apps,
    check_device,
    check_firmware,
    check_h7_programmer,
    check_last_flash,
    check_modules,
    check_proxy_journal,
    check_proxy_ports,
    check_proxy_running,
    check_router_socket,
    diagnose,
)
from x8manager.doctor.cli import main
from x8manager.doctor.expectations import expected_methods
from x8manager.doctor.host import Command, Host

FIRMWARE = "v0.0.5-custom-9b2f9c4"
MODULES = """\
x8h7_ui 16384 1 - Live 0xffff800000f9c000 (O)
x8h7_uart 20480 0 - Live 0xffff800000f94000 (O)
x8h7_h7 16384 0 - Live 0xffff800000f7c000 (O)
x8h7_drv 24576 8 x8h7_ui,x8h7_uart,x8h7_h7, Live 0xffff800000f60000 (O)
industrialio 94208 1 x8h7_adc, Live 0xffff800000f18000
"""
# /proc/net/tcp: 0.0.0.0:5000 and 0.0.0.0:5001 listening (state 0A), one established connection.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21001 1
   1: 00000000:1389 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21002 1
   2: 0100007F:1389 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 0 1
"""
SYSTEMCTL_OK = "LoadState=loaded\nActiveState=active\nSubState=exited\nResult=success\nExecMainStatus=0\n"


class Commands:
    """What systemctl, journalctl and m4-flasher print, keyed by (program, first argument/unit)."""

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, str], Command] = {}
        self.seen: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> Command:
        self.seen.append(list(argv))
        key = (argv[0], argv[2] if argv[0] in ("systemctl", "journalctl") else argv[1])
        return self.outputs.get(key, Command(None, "", f"{argv[0]}: not installed"))


def add_process(root: Path, pid: int, comm: str, exe: str, *, cmdline: list[str], fds: dict[int, str],
                uid: int = 0) -> None:
    base = root / "proc" / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "comm").write_text(comm + "\n")
    (base / "status").write_text(f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\n"
                                 f"Pid:\t{pid}\nPPid:\t1\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
                                 f"Gid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (base / "cmdline").write_bytes(b"\0".join(part.encode() for part in cmdline) + b"\0")
    os.symlink(exe, base / "exe")
    for fd, target in fds.items():
        os.symlink(target, base / "fd" / str(fd))


@pytest.fixture
def x8(tmp_path: Path) -> tuple[Host, Commands, Path]:
    """A healthy X8: modules loaded, firmware matching the image, the device held by our proxy."""
    root = tmp_path / "root"
    (root / "proc" / "net").mkdir(parents=True)
    (root / "proc" / "modules").write_text(MODULES)
    (root / "proc" / "net" / "tcp").write_text(TCP)
    sysfs = root / "sys" / "kernel" / "x8h7_firmware"
    sysfs.mkdir(parents=True)
    (sysfs / "version").write_text(FIRMWARE + "\n")
    image = root / "usr" / "arduino" / "extra" / "STM32H747AII6_CM7.bin"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\xff" * FIRMWARE_VERSION_OFFSET + FIRMWARE.encode() + b"\0" * 24 + b"\xff" * 64)
    (root / "dev").mkdir()
    (root / "dev" / "x8h7_ui").write_bytes(b"")
    device = str(root / "dev" / "x8h7_ui")
    add_process(root, 412, "m4-proxy", "/usr/bin/python3.12",
                cmdline=["/usr/bin/python3", "/usr/bin/m4-proxy", "--registry-file",
                         "/run/m4-proxy/registry.json"],
                fds={0: "/dev/null", 7: device, 8: "socket:[21001]"})
    commands = Commands()
    commands.outputs[("systemctl", "stm32h7-program.service")] = Command(0, SYSTEMCTL_OK)
    commands.outputs[("systemctl", "m4-proxy.service")] = Command(
        0, "LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\nExecMainStatus=0\n")
    commands.outputs[("journalctl", "m4-proxy.service")] = Command(0, "")
    return Host(root, commands), commands, root


def test_healthy_h7_side(x8: tuple[Host, Commands, Path]) -> None:
    host, _, _ = x8
    for check in (check_h7_programmer, check_modules, check_firmware, check_device):
        assert check(host, Options()).status is Status.OK, check.__name__


def test_failed_h7_programmer_is_named(x8: tuple[Host, Commands, Path]) -> None:
    host, commands, _ = x8
    commands.outputs[("systemctl", "stm32h7-program.service")] = Command(
        0, "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainStatus=1\n")
    finding = check_h7_programmer(host, Options())
    assert finding.status is Status.PROBLEM
    assert "exit-code" in finding.message and "systemctl restart stm32h7-program" in finding.fix


def test_no_systemd_skips_the_unit_checks(x8: tuple[Host, Commands, Path]) -> None:
    host, commands, _ = x8
    commands.outputs[("systemctl", "stm32h7-program.service")] = Command(
        1, "", "System has not been booted with systemd as init system (PID 1). Can't operate.\n")
    assert check_h7_programmer(host, Options()).status is Status.SKIPPED


def test_missing_module_is_named(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    (root / "proc" / "modules").write_text("".join(line + "\n" for line in MODULES.splitlines()
                                                   if not line.startswith("x8h7_ui ")))
    finding = check_modules(host, Options())
    assert finding.status is Status.PROBLEM and "x8h7_ui" in finding.message


def test_firmware_other_than_the_image_is_a_problem(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    (root / "sys" / "kernel" / "x8h7_firmware" / "version").write_text("v0.0.2-old\n")
    finding = check_firmware(host, Options())
    assert finding.status is Status.PROBLEM
    assert "v0.0.2-old" in finding.message and FIRMWARE in finding.message


def test_firmware_node_missing_means_driver_not_bound(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    (root / "sys" / "kernel" / "x8h7_firmware" / "version").unlink()
    finding = check_firmware(host, Options())
    assert finding.status is Status.PROBLEM and "x8h7_h7" in finding.message


def test_unreadable_firmware_node_means_the_h7_does_not_answer(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    node = root / "sys" / "kernel" / "x8h7_firmware" / "version"
    node.unlink()
    node.mkdir()  # reading fails, as the driver's ETIMEDOUT does
    finding = check_firmware(host, Options())
    assert finding.status is Status.PROBLEM and "does not answer" in finding.message


def test_device_missing(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    (root / "dev" / "x8h7_ui").unlink()
    assert check_device(host, Options()).status is Status.PROBLEM


def test_impostor_holding_the_device_is_named(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    add_process(root, 977, "m4_proxy", "/usr/bin/m4_proxy", cmdline=["/usr/bin/m4_proxy"],
                fds={3: str(root / "dev" / "x8h7_ui")})
    finding = check_device(host, Options())
    assert finding.status is Status.PROBLEM
    assert "pid 977 (m4_proxy" in finding.message


def test_arduinos_go_proxy_is_told_apart_from_ours(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    assert check_proxy_running(host, Options()).status is Status.OK
    add_process(root, 977, "m4_proxy", "/usr/bin/m4_proxy", cmdline=["/usr/bin/m4_proxy"], fds={})
    finding = check_proxy_running(host, Options())
    assert finding.status is Status.PROBLEM and "Arduino's Go m4_proxy" in finding.message


def test_a_command_naming_the_proxy_is_not_the_proxy(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    (root / "proc" / "412" / "comm").write_text("journalctl\n")
    (root / "proc" / "412" / "cmdline").write_bytes(b"journalctl\0-u\0m4-proxy\0")
    finding = check_proxy_running(host, Options())
    assert finding.status is Status.PROBLEM and "no m4-proxy process" in finding.message
    # Nor is a native program that calls itself m4-proxy: ours runs on a Python interpreter.
    add_process(root, 979, "m4-proxy", "/usr/bin/sleep", cmdline=["m4-proxy"], fds={})
    assert "no m4-proxy process" in check_proxy_running(host, Options()).message


# A user other than root and the one running the tests.
SOMEONE = 4242 if os.geteuid() != 4242 else 4243


def test_any_users_process_named_m4_proxy_is_not_arduinos_proxy(x8: tuple[Host, Commands, Path]) -> None:
    # It made the doctor report Arduino's proxy, mark the proxy layer broken and skip the rest.
    host, _, root = x8
    add_process(root, 977, "m4_proxy", "/home/eve/m4_proxy", cmdline=["./m4_proxy"], fds={}, uid=SOMEONE)
    assert check_proxy_running(host, Options()).status is Status.OK


def test_a_root_process_calling_itself_m4_proxy_is_judged_by_its_executable(
        x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    add_process(root, 977, "m4_proxy", "/usr/bin/sleep", cmdline=["m4_proxy", "60"], fds={})
    assert check_proxy_running(host, Options()).status is Status.OK


def test_arduinos_proxy_is_found_when_the_doctor_may_not_read_its_executable(
        x8: tuple[Host, Commands, Path]) -> None:
    # Not run as root, the doctor cannot read root's /proc/PID/exe; a root process named m4_proxy
    # can only be root's doing.
    host, _, root = x8
    add_process(root, 977, "m4_proxy", "/usr/bin/m4_proxy", cmdline=["/usr/bin/m4_proxy"], fds={})
    (root / "proc" / "977" / "exe").unlink()
    finding = check_proxy_running(host, Options())
    assert finding.status is Status.PROBLEM and "Arduino's Go m4_proxy" in finding.message


def test_another_users_process_named_m4_proxy_is_not_our_proxy(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    for name in ("comm", "cmdline", "status"):
        (root / "proc" / "412" / name).unlink()
    os.unlink(root / "proc" / "412" / "exe")
    (root / "proc" / "412" / "fd" / "7").unlink()
    add_process(root, 978, "m4-proxy", "/usr/bin/python3.12", cmdline=["python3", "/home/eve/m4-proxy"],
                fds={3: str(root / "dev" / "x8h7_ui")}, uid=SOMEONE)
    finding = check_proxy_running(host, Options())
    assert finding.status is Status.PROBLEM and "no m4-proxy process" in finding.message
    held = check_device(host, Options())
    assert held.status is Status.PROBLEM and "pid 978 (m4-proxy" in held.message


def test_the_proxy_the_unit_runs_as_its_own_user_is_ours(x8: tuple[Host, Commands, Path]) -> None:
    # A sandboxed unit runs the proxy as a user of its own: systemd's MainPID names it.
    host, commands, root = x8
    (root / "proc" / "412" / "status").write_text(f"Name:\tm4-proxy\nUid:\t{SOMEONE}\t{SOMEONE}\t0\t0\n")
    assert check_proxy_running(host, Options()).status is Status.PROBLEM
    commands.outputs[("systemctl", "m4-proxy.service")] = Command(
        0, "LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\nMainPID=412\n")
    assert check_proxy_running(host, Options()).status is Status.OK


def test_proxy_unit_stopped(x8: tuple[Host, Commands, Path]) -> None:
    host, commands, _ = x8
    commands.outputs[("systemctl", "m4-proxy.service")] = Command(
        0, "LoadState=loaded\nActiveState=inactive\nSubState=dead\nResult=signal\nExecMainStatus=9\n")
    finding = check_proxy_running(host, Options())
    assert finding.status is Status.PROBLEM and "inactive" in finding.message


def test_port_not_listening_is_named(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    without_5001 = [line for line in TCP.splitlines() if ":1389 0000" not in line]
    (root / "proc" / "net" / "tcp").write_text("\n".join(without_5001))
    finding = check_proxy_ports(host, Options())
    assert finding.status is Status.PROBLEM and "5001" in finding.message


def test_router_socket_checked_when_named(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    (root / "run").mkdir()
    assert check_router_socket(host, Options(router_socket="")).status is Status.SKIPPED
    options = Options(router_socket="/run/arduino-router.sock")
    assert check_router_socket(host, options).status is Status.PROBLEM
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "run" / "arduino-router.sock"))
        server.listen()
        assert check_router_socket(host, options).status is Status.OK


def test_router_socket_held_by_the_socket_unit_is_named(x8: tuple[Host, Commands, Path]) -> None:
    host, commands, root = x8
    (root / "run").mkdir()
    commands.outputs[("systemctl", "m4-proxy.socket")] = Command(
        0, "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=resources\n")
    options = Options(router_socket="/run/arduino-router.sock")
    finding = check_router_socket(host, options)
    assert finding.status is Status.PROBLEM and "systemctl status m4-proxy.socket" in finding.fix
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "run" / "arduino-router.sock"))
        server.listen()
        finding = check_router_socket(host, options)
    assert finding.status is Status.OK and "held by m4-proxy.socket" in finding.message


def test_router_socket_by_default_is_the_one_the_proxy_was_started_with(x8: tuple[Host, Commands, Path]
                                                                        ) -> None:
    host, _, root = x8
    # The fixture's proxy names no --router-socket: m4-proxy's default, the Bridge's address.
    finding = check_router_socket(host, Options())
    assert finding.status is Status.PROBLEM and "/var/run/arduino-router.sock" in finding.message
    add_process(root, 413, "m4-proxy", "/usr/bin/python3.12",
                cmdline=["/usr/bin/python3", "/usr/bin/m4-proxy", "--register-port", "6000",
                         "--router-socket", ""], fds={})
    finding = check_router_socket(host, Options(register_port=6000))
    assert finding.status is Status.SKIPPED and "off" in finding.message
    assert check_router_socket(host, Options(register_port=7000)).status is Status.SKIPPED


def test_methods_an_apps_compose_file_expects() -> None:
    document = load_compose_text(
        "services:\n  weather:\n    image: hub.foundries.io/x/weather\n"
        "    labels:\n      io.x8manager.expect-methods: \"read_gas, humidity\"\n"
        "  poller:\n    image: hub.foundries.io/x/poller\n"
        "    labels: [\"other=1\"]\n"
        "    environment: [\"M4_PROCEDURES=temperature,humidity\", \"OTHER=${X}\"]\n"
        "  later:\n    image: x\n    environment:\n      M4_PROCEDURES: \"${PROCS}\"\n"
        "  quiet:\n    image: y\n").document
    assert expected_methods(document) == {"weather": ["read_gas", "humidity"],
                                          "poller": ["temperature", "humidity"]}
    assert expected_methods(None) == {} and expected_methods({"services": ["x"]}) == {}


def test_recent_journal_errors_are_a_warning(x8: tuple[Host, Commands, Path]) -> None:
    host, commands, _ = x8
    commands.outputs[("journalctl", "m4-proxy.service")] = Command(
        0, "2026-12-01T09:12:44+0000 portenta-x8 m4-proxy[412]: M4 link lost: [Errno 5] Input/output error\n")
    finding = check_proxy_journal(host, Options())
    assert finding.status is Status.WARNING and "Input/output error" in finding.message


def test_last_flash_failed(x8: tuple[Host, Commands, Path]) -> None:
    host, commands, root = x8
    status = {"result": "failed",
              "reason": "openocd: Error: init mode failed (unable to connect to the target)",
              "sketch": {"sha256": "ab" * 32, "size": 12000}, "finished_at": "2026-12-01T09:00:00Z"}
    commands.outputs[("m4-flasher", "status")] = Command(0, json.dumps(status))
    finding = check_last_flash(host, Options())
    assert finding.status is Status.PROBLEM and "unable to connect" in finding.message
    assert commands.seen[-1] == ["m4-flasher", "status", "--json", "--state-dir",
                                 str(root / "var" / "lib" / "m4-flasher")]


def test_apps_wiring_reuses_the_lint_rules(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    app = root / "var" / "sota" / "compose-apps" / "weather"
    app.mkdir(parents=True)
    (app / "docker-compose.yml").write_text(
        "services:\n  weather:\n    image: hub.foundries.io/x/weather\n    restart: always\n"
        "    extra_hosts: [\"m4-proxy:host-gateway\"]\n    environment:\n      RPC_SERVICE_PORT: \"5005\"\n")
    finding = check_apps(host, Options())
    assert finding.status is Status.PROBLEM
    assert "app weather" in finding.message and "5005" in finding.message


def test_an_apps_oversized_compose_file_is_a_warning_not_read_whole(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    app = root / "var" / "sota" / "compose-apps" / "huge"
    app.mkdir(parents=True)
    (app / "docker-compose.yml").write_text("services:\n" + "#" * (1024 * 1024) + "\n")
    finding = check_apps(host, Options())
    assert finding.status is Status.WARNING and "KiB" in finding.message


def test_diagnose_stops_at_the_first_broken_layer(x8: tuple[Host, Commands, Path]) -> None:
    host, _, root = x8
    (root / "proc" / "modules").write_text("")
    report = diagnose(host, Options())
    assert report.problem is not None and report.problem.layer == "h7"
    assert report.not_checked == ["proxy", "sketch", "apps"]
    assert [f.check for f in report.findings] == ["programmer", "modules"]
    document = json.loads(report.as_json())
    assert document["broken_layer"] == "h7" and document["healthy"] is False


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-flag"]) == 2
    assert main(["--root", str(tmp_path / "missing")]) == 2
    assert main(["--timeout", "0"]) == 2
    capsys.readouterr()
