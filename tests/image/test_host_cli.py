"""The laptop's ``x8`` CLI against the booted virtual X8 over SSH, as fio (LmP's login user).

Every command runs the real ``x8`` (this checkout) through the system's ``ssh``/``scp`` with the
image's client key and pinned host key (``X8_SSH_CONFIG``); on the device the real m4-flasher,
m4-proxy, docker and x8-apps answer. The SWD probe is the openocd stand-in (hardware boundary).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from x8manager.qemu.ssh import GuestSsh
from x8manager.qemu.virtual_x8 import VirtualX8, poll

from .flashing import ELF_FIXTURES, STANDIN_MODE_FILE, sha256_of
from .groups import APPS_GROUP

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
BASE_TARBALL = "/usr/lib/x8-test/x8manager-python.tar"
BASE_IMAGE = "x8-test/python:bookworm"
ECHO_PORT = 7599  # a plain TCP echo on the device, standing in for the proxy's monitor port
MONITOR_PORT = 7500

X8 = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def x8(guest_ssh: GuestSsh) -> X8:
    """Run ``x8 ARGS...`` on this host against the guest; its output and exit code."""
    env = {**os.environ, "X8_DEVICE": guest_ssh.device, "X8_SSH_CONFIG": str(guest_ssh.config)}

    def run(*args: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "x8manager.host.cli", *args], env=env, text=True,
                                capture_output=True, timeout=timeout, check=False, input=stdin)
        print(f"$ x8 {' '.join(args)}  -> exit {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    return run


def test_upload_of_a_good_sketch_prints_the_flasher_verdict(x8: X8) -> None:
    result = x8("upload", str(ELF_FIXTURES / "sketch-ok-2.elf"))
    assert result.returncode == 0, result.stderr
    assert f"success: sketch {sha256_of('sketch-ok-2.elf')[:12]}" in result.stdout


def test_upload_of_a_corrupt_sketch_is_rejected_here_and_by_the_device(x8: X8) -> None:
    local = x8("upload", str(ELF_FIXTURES / "truncated.elf"))
    assert local.returncode == 3 and "not sent" in local.stdout
    device = x8("upload", "--no-local-check", str(ELF_FIXTURES / "truncated.elf"))
    assert device.returncode == 3, device.stderr
    verdict = device.stdout.splitlines()[-1]
    assert verdict.startswith(f"rejected: sketch {sha256_of('truncated.elf')[:12]}: "), device.stdout
    assert "truncated" in verdict, "the flasher's reason is printed"


def test_upload_whose_flash_fails_exits_1_with_openocd_output(x8: X8, virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    console.check(f"mkdir -p /etc/x8-test && echo fail > {STANDIN_MODE_FILE}")
    try:
        result = x8("upload", str(ELF_FIXTURES / "sketch-ok.elf"))
    finally:
        console.check(f"rm -f {STANDIN_MODE_FILE}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("failed: "), result.stdout
    assert "Programming Failed" in result.stderr


def test_call_into_the_m4_prints_json(x8: X8) -> None:
    result = x8("call", "add", "2", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


def test_status_shows_proxy_flasher_and_apps(x8: X8) -> None:
    result = x8("status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "m4-proxy active" in result.stdout and "m4-flasher active" in result.stdout
    assert "last result:" in result.stdout and "apps:" in result.stdout


def test_doctor_passes_on_the_device_s_answer(x8: X8, guest_ssh: GuestSsh) -> None:
    result = x8("doctor")
    if guest_ssh.run("command -v x8-doctor").returncode != 0:
        assert result.returncode == 1 and "has no x8-doctor" in result.stderr
    else:
        assert result.returncode == guest_ssh.run("x8-doctor").returncode


def test_doctor_options_reach_the_device_s_doctor(x8: X8, guest_ssh: GuestSsh) -> None:
    # x8 doctor --json failed with "x8: error: unrecognized arguments" (exit 2).
    if guest_ssh.run("command -v x8-doctor").returncode != 0:
        pytest.skip("this image has no x8-doctor")
    result = x8("doctor", "--json", "--timeout", "5")
    assert result.returncode == guest_ssh.run("x8-doctor --json --timeout 5").returncode, result.stderr
    assert set(json.loads(result.stdout)) >= {"healthy", "broken_layer", "findings", "not_checked"}
    usage = x8("doctor", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: x8-doctor"), usage.stdout


@pytest.fixture
def scaffolded_app(tmp_path: Path, virtual_x8: VirtualX8) -> Iterator[Path]:
    """An m4-service app made by this host's x8-apps new, and the offline base image on the device."""
    console = virtual_x8.machine.require_console()
    if console.run(f"test -f {BASE_TARBALL}")[1] != 0:
        pytest.skip(f"{BASE_TARBALL} missing: only the Debian test image carries the offline base image")
    console.check(f"docker image inspect {BASE_IMAGE} >/dev/null 2>&1 || "
                  f"docker import {BASE_TARBALL} {BASE_IMAGE}", timeout=600)
    subprocess.run([str(ROOT / ".venv" / "bin" / "x8-apps"), "new", "pushed", "--template", "m4-service",
                    "--dir", str(tmp_path), "--port", "5011"], check=True, capture_output=True)
    yield tmp_path / "pushed"
    console.run(virtual_x8.as_user("X8_APPS_DEV_ROOT=$HOME/x8-apps x8-apps stop pushed"), timeout=300)


@pytest.mark.xdist_group(APPS_GROUP)
def test_apps_push_builds_starts_and_a_second_push_rebuilds_only_the_change(
        x8: X8, scaffolded_app: Path, virtual_x8: VirtualX8) -> None:
    push = ("apps", "push", str(scaffolded_app), "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")
    first = x8(*push, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert poll("the pushed app registered (the M4 calls whoami)",
                lambda: virtual_x8.m4_call("whoami") == "pushed" or None, timeout=240, interval=2)
    main = scaffolded_app / "main.py"
    main.write_text(main.read_text().replace('return "pushed"', 'return "pushed, edited"'))
    second = x8(*push, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    # The base layers come from the build cache; only the edited file's layer is built again.
    assert "Using cache" in second.stdout or "CACHED" in second.stdout, second.stdout
    assert poll("the edited app answers",
                lambda: virtual_x8.m4_call("whoami") == "pushed, edited" or None, timeout=240, interval=2)


@pytest.fixture(scope="module")
def device_echo(virtual_x8: VirtualX8) -> Iterator[int]:
    """A plain TCP echo on the device's 127.0.0.1:ECHO_PORT."""
    console = virtual_x8.machine.require_console()
    script = ("import socketserver as s\n"
              "class E(s.StreamRequestHandler):\n"
              "    def handle(self):\n"
              "        for line in self.rfile: self.wfile.write(line)\n"
              f"s.ThreadingTCPServer.allow_reuse_address = True\n"
              f"s.ThreadingTCPServer(('127.0.0.1', {ECHO_PORT}), E).serve_forever()\n")
    console.write_file("/var/lib/x8-test/echo.py", script.encode())
    console.check("systemd-run --unit x8-test-echo --quiet python3 /var/lib/x8-test/echo.py")
    poll("the device's echo listens", lambda: console.run(
        f"ss -ltn | grep -q 127.0.0.1:{ECHO_PORT}")[1] == 0 or None, timeout=60)
    yield ECHO_PORT
    console.run("systemctl stop x8-test-echo")


def test_monitor_pumps_both_ways_through_the_tunnel(x8: X8, device_echo: int) -> None:
    result = x8("monitor", "--port", str(device_echo), stdin="typed on the laptop\n", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "typed on the laptop\n"


def test_monitor_shows_what_the_m4_prints_and_delivers_typed_input(
        guest_ssh: GuestSsh, virtual_x8: VirtualX8) -> None:
    if guest_ssh.run(f"ss -ltn | grep -q 127.0.0.1:{MONITOR_PORT}").returncode != 0:
        pytest.skip(f"no monitor port {MONITOR_PORT} on the device (m4-proxy without it)")
    env = {**os.environ, "X8_DEVICE": guest_ssh.device, "X8_SSH_CONFIG": str(guest_ssh.config)}
    monitor = subprocess.Popen([sys.executable, "-m", "x8manager.host.cli", "monitor"], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert monitor.stdin is not None and monitor.stdout is not None
    output = bytearray()
    stdout = monitor.stdout

    def read_output() -> None:
        while chunk := stdout.read1(4096):
            output.extend(chunk)

    threading.Thread(target=read_output, name="x8-monitor-output", daemon=True).start()
    m4 = virtual_x8.require_m4()

    def printed() -> bool | None:
        # Until the tunnel is up the M4's output goes to the journal: print again until it shows.
        m4.control.request("serial_write", "hello from the M4\n")
        return True if b"hello from the M4\n" in output else None

    try:
        poll("the M4's Serial output shows in x8 monitor", printed, timeout=120, interval=1)
        monitor.stdin.write(b"typed on the laptop\n")
        monitor.stdin.flush()
        received = bytearray()

        def delivered() -> bool | None:
            chunk = m4.control.request("serial_read")
            received.extend(chunk.encode() if isinstance(chunk, str) else bytes(chunk))
            return True if b"typed on the laptop\n" in received else None

        poll("what was typed reaches the M4's Serial", delivered, timeout=60, interval=0.5)
    finally:
        monitor.kill()
        monitor.wait(timeout=10)


def test_a_lost_connection_is_an_error_not_a_hang(x8: X8, virtual_x8: VirtualX8) -> None:
    """The guest stops answering (QMP stop: its CPUs halt, the network does not answer): x8 gives up
    within its SSH timeouts with ssh's message, exit 1."""
    virtual_x8.machine.pause()
    try:
        result = x8("status", timeout=90)
    finally:
        virtual_x8.machine.resume()
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("x8: ssh://fio@127.0.0.1:") and "Traceback" not in result.stderr


def test_pluggable_monitor_bridges_the_ide_socket(guest_ssh: GuestSsh, device_echo: int) -> None:
    """x8-monitor driven as arduino-cli drives it; the data goes through the socket the IDE listens on."""
    env = {**os.environ, "X8_SSH_CONFIG": str(guest_ssh.config)}
    ide = socket.create_server(("127.0.0.1", 0))
    monitor = subprocess.Popen([sys.executable, "-m", "x8manager.host.pluggable", "--monitor-port",
                                str(device_echo)], env=env, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert monitor.stdin is not None and monitor.stdout is not None

    def send(line: str) -> str:
        assert monitor.stdin is not None and monitor.stdout is not None
        monitor.stdin.write(line + "\n")
        monitor.stdin.flush()
        return monitor.stdout.readline()

    try:
        assert '"message": "OK"' in send('HELLO 1 "scripted-ide"')
        opened = send(f"OPEN 127.0.0.1:{ide.getsockname()[1]} {guest_ssh.device}")
        assert '"eventType": "open", "message": "OK"' in opened, opened + (monitor.stderr.read()
                                                                           if "error" in opened else "")
        ide.settimeout(60)
        connection, _ = ide.accept()
        with connection:
            connection.settimeout(60)
            connection.sendall(b"Serial.println from the IDE\n")
            received = b""
            while not received.endswith(b"\n"):
                received += connection.recv(4096)
            assert received == b"Serial.println from the IDE\n"
            assert '"eventType": "close", "message": "OK"' in send("CLOSE")
        assert '"eventType": "quit"' in send("QUIT")
        assert monitor.wait(timeout=30) == 0
    finally:
        if monitor.poll() is None:
            monitor.kill()
        ide.close()
