"""Scaffolded apps run against the real m4-proxy and the virtual M4, on the host, without Docker.

Each template is created with ``x8-apps new``, then its ``main.py`` runs as a process with only its
own ``vendor/`` copy of the client library on PYTHONPATH (as in the container), pointed at a real
``m4-proxy`` whose M4 link is a pty held by ``m4-sim`` (the virtual M4, the stand-in for the sketch).
``m4-sim``'s control surface plays the sketch's side: it calls the app's procedures and writes to
its Serial. Everything waits on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from apps_harness import BIN, DEADLINE, Process, start_virtual_m4, wait_until

from tests.support import free_port
from x8manager.apps.cli import main as x8_apps
from x8manager.apps.scaffold import create_app


@dataclass
class Rig:
    control: str
    register_port: int
    call_port: int
    workdir: Path
    processes: list[Process]

    def m4_sim(self, *args: str) -> str:
        """Drive the virtual M4 through its control surface (what the sketch would do)."""
        result = subprocess.run([str(BIN / "m4-sim"), *args, "--control", self.control],
                                capture_output=True, text=True, timeout=DEADLINE, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def run_app(self, app: Path, env: dict[str, str], *args: str) -> Process:
        process = Process.start(app.name, [sys.executable, str(app / "main.py"), *args],
                                cwd=app, env=self.app_env(app, env))
        self.processes.append(process)
        return process

    def app_env(self, app: Path, env: dict[str, str]) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            # Only the app's own vendored library, as in its container image.
            "PYTHONPATH": str(app / "vendor"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "M4_PROXY_HOST": "127.0.0.1",
            "M4_PROXY_REGISTER_PORT": str(self.register_port),
            "M4_PROXY_CALL_PORT": str(self.call_port),
            **env,
        }


def assert_stops_on_sigterm(process: Process) -> None:
    """docker stop sends SIGTERM; as PID 1 in a container the app must handle it to stop cleanly."""
    process.popen.terminate()
    assert process.popen.wait(timeout=DEADLINE) == 0, process.output
    wait_until(lambda: any("stopping" in line for line in process.lines), "the app's goodbye")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    processes: list[Process] = []
    try:
        pty, control = start_virtual_m4(processes)
        proxy = Process.start("m4-proxy", [str(BIN / "m4-proxy"), "--device", pty, "--bind", "127.0.0.1",
                                           "--register-port", "0", "--call-port", "0",
                                           "--router-socket", "", "--monitor-listen", ""])
        processes.append(proxy)
        ready = proxy.wait_for_line(r"ready: register port (\d+), call port (\d+)")
        yield Rig(control, int(ready.group(1)), int(ready.group(2)), tmp_path, processes)
    finally:
        for process in reversed(processes):
            process.stop()


def registered(rig: Rig, capsys: pytest.CaptureFixture[str], dev_root: Path) -> list[dict[str, object]]:
    code = x8_apps(["rpc", "--apps-root", str(dev_root / "none"), "--dev-root", str(dev_root),
                    "--register-port", str(rig.register_port), "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def test_vendored_library_is_the_one_the_app_imports(rig: Rig) -> None:
    app = create_app("probe", "m4-client", rig.workdir / "containers")
    result = subprocess.run([sys.executable, "-c", "import x8manager.rpc as r; print(r.__file__)"],
                            cwd=app, env=rig.app_env(app, {}), capture_output=True, text=True, check=True)
    assert Path(result.stdout.strip()).is_relative_to(app / "vendor")


def test_m4_service_answers_the_m4_and_shows_in_x8_apps_rpc(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    containers = rig.workdir / "containers"
    port = free_port()
    app = create_app("multiplier", "m4-service", containers, port=port)
    assert x8_apps(["lint", str(app)]) == 0
    capsys.readouterr()
    service = rig.run_app(app, {"RPC_SERVICE_PORT": str(port)})
    service.wait_for_line(r"registered .*multiply.* on port")

    rows = registered(rig, capsys, containers)
    mine = {row["procedure"]: (row["port"], row["app"]) for row in rows}
    assert mine["multiply"] == (port, "multiplier")
    assert mine["divide"] == (port, "multiplier")

    # The sketch calls Linux: RPC.call("multiply", 6, 7) through the proxy.
    assert json.loads(rig.m4_sim("call", "multiply", "6", "7")) == 42
    assert json.loads(rig.m4_sim("call", "whoami")) == "multiplier"
    assert_stops_on_sigterm(service)


def test_m4_client_calls_the_m4(rig: Rig) -> None:
    app = create_app("sensors", "m4-client", rig.workdir / "containers")
    client = rig.run_app(app, {"M4_PROCEDURES": "temperature,humidity"}, "--once")
    assert client.popen.wait(timeout=DEADLINE) == 0, client.output
    wait_until(lambda: "humidity = 450" in client.lines, "the client's output")
    assert "temperature = 215" in client.lines


def test_m4_client_reports_an_unbound_procedure_and_fails_once(rig: Rig) -> None:
    app = create_app("gas-reader", "m4-client", rig.workdir / "containers")
    client = rig.run_app(app, {"M4_PROCEDURES": "gas"}, "--once")
    assert client.popen.wait(timeout=DEADLINE) == 1
    wait_until(lambda: any("gas:" in line for line in client.lines), "the client's warning")


def test_serial_forwarder_writes_the_m4_serial_output_to_a_file(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    containers = rig.workdir / "containers"
    port = free_port()
    app = create_app("serial", "serial-forwarder", containers, port=port)
    output = rig.workdir / "m4-serial.log"
    forwarder = rig.run_app(app, {"RPC_SERVICE_PORT": str(port), "SERIAL_OUTPUT": str(output)})
    forwarder.wait_for_line(r"registered tty on port")
    assert {(row["procedure"], row["app"]) for row in registered(rig, capsys, containers)} >= {
        ("tty", "serial")}

    # Serial.println("hello from the M4") on the sketch side.
    rig.m4_sim("serial-write", "hello from the M4\r\n")
    wait_until(lambda: output.exists() and b"hello from the M4\r\n" in output.read_bytes(),
               "the forwarded serial output")
    assert_stops_on_sigterm(forwarder)


def test_m4_client_polls_until_docker_stop(rig: Rig) -> None:
    app = create_app("poller", "m4-client", rig.workdir / "containers")
    client = rig.run_app(app, {"M4_PROCEDURES": "temperature", "POLL_SECONDS": "0.05"})
    wait_until(lambda: client.lines.count("temperature = 215") >= 2, "two polling rounds")
    assert_stops_on_sigterm(client)


@pytest.mark.parametrize("template", ["m4-service", "m4-client", "serial-forwarder"])
def test_factory_test_cmd_imports_the_app_without_starting_it(tmp_path: Path, template: str) -> None:
    """docker-build.conf's TEST_CMD, as FoundriesFactory runs it in the built image (here: on the host)."""
    app = create_app("probe", template, tmp_path)
    conf = (app / "docker-build.conf").read_text()
    command = re.search(r"^TEST_CMD=\"(.*)\"$", conf, re.MULTILINE)
    assert command is not None
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(app / "vendor"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    python_code = command.group(1).removeprefix("python3 -c '").removesuffix("'")
    result = subprocess.run([sys.executable, "-c", python_code], cwd=app, env=env, capture_output=True,
                            text=True, timeout=DEADLINE, check=False)
    assert result.returncode == 0, result.stderr
