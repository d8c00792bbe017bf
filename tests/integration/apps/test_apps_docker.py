"""x8-apps start/list/rpc/logs/stop for real: scaffolded apps built and run by a Docker engine.

Skipped unless a Docker engine answers and ``X8_APPS_TEST_BASE_IMAGE`` names a local image with
python3 and python3-msgpack (so the build needs no network), e.g. the offline test image's
container rootfs imported with ``docker import``. The apps reach the real m4-proxy on the host
through ``m4-proxy:host-gateway``; the proxy's M4 is the virtual M4 on a pty. The proxy needs the
standard ports 5000/5001 here, because that is what the scaffolded compose files use.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps_harness import BIN, DEADLINE, Process, start_virtual_m4, wait_until

from x8manager.apps.cli import main as x8_apps
from x8manager.apps.scaffold import create_app

BASE_IMAGE = os.environ.get("X8_APPS_TEST_BASE_IMAGE", "")
FACTORY = "x8-apps-test"


def _engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None or not BASE_IMAGE:
        return False
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                          text=True, timeout=30, check=False)
    return info.returncode == 0


def _ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


pytestmark = pytest.mark.skipif(
    not _engine_answers() or not _ports_free(5000, 5001),
    reason="needs a Docker engine, X8_APPS_TEST_BASE_IMAGE, and free ports 5000/5001",
)


@pytest.fixture
def proxy_on_standard_ports() -> Iterator[str]:
    processes: list[Process] = []
    try:
        pty, control = start_virtual_m4(processes)
        proxy = Process.start("m4-proxy", [str(BIN / "m4-proxy"), "--device", pty])
        processes.append(proxy)
        proxy.wait_for_line(r"ready: register port 5000, call port 5001")
        yield control
    finally:
        for process in reversed(processes):
            process.stop()


def test_scaffolded_apps_run_under_docker(tmp_path: Path, proxy_on_standard_ports: str,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FACTORY", FACTORY)
    dev_root = tmp_path / "apps"
    roots = ["--apps-root", str(tmp_path / "none"), "--dev-root", str(dev_root),
             "--sota-toml", str(tmp_path / "sota.toml")]
    names = {"x8t-service": "m4-service", "x8t-serial": "serial-forwarder", "x8t-client": "m4-client"}
    for name, template in names.items():
        app = create_app(name, template, dev_root)
        subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                        "-t", f"hub.foundries.io/{FACTORY}/{name}:latest", str(app)],
                       check=True, capture_output=True, timeout=600)
    try:
        assert x8_apps(["start", *names, *roots]) == 0

        def registered() -> set[str]:
            capsys.readouterr()
            x8_apps(["rpc", "--format", "json", *roots])
            return {row["procedure"] for row in json.loads(capsys.readouterr().out or "[]")}

        wait_until(lambda: {"multiply", "tty"} <= registered(), "the apps' registrations")
        control = proxy_on_standard_ports
        call = subprocess.run([str(BIN / "m4-sim"), "call", "multiply", "6", "7", "--control", control],
                              capture_output=True, text=True, timeout=DEADLINE, check=True)
        assert json.loads(call.stdout) == 42

        capsys.readouterr()
        assert x8_apps(["list", "--format", "json", *roots]) == 0
        states = {a["name"]: a["state"] for a in json.loads(capsys.readouterr().out)["apps"]}
        assert states == dict.fromkeys(names, "running 1/1")

        assert x8_apps(["stop", *names, *roots]) == 0
        capsys.readouterr()
        assert x8_apps(["list", "--format", "json", *roots]) == 0
        states = {a["name"]: a["state"] for a in json.loads(capsys.readouterr().out)["apps"]}
        assert states == dict.fromkeys(names, "stopped 0/1")
        for name in names:
            # Container names: name_name_1 (compose v1) or name-name-1 (v2).
            exit_code = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.ExitCode}}", f"{name}_{name}_1",
                 f"{name}-{name}-1"], capture_output=True, text=True, check=False).stdout.split()
            assert "0" in exit_code, f"{name} did not stop cleanly on SIGTERM: {exit_code}"
    finally:
        for name in names:
            subprocess.run(["docker", "compose", "down"] if shutil.which("docker-compose") is None
                           else ["docker-compose", "down"], cwd=dev_root / name, capture_output=True,
                           check=False, timeout=120)
