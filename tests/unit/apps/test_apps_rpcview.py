"""x8-apps rpc: mapping the proxy's registry to apps by published port; proxy unreachable path."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import wait_for
from x8manager.apps.cli import main
from x8manager.apps.device import App
from x8manager.apps.rpcview import Registration, original_proxy_pid, published_ports, registrations


def app(tmp_path: Path, name: str, compose: str) -> App:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "docker-compose.yml").write_text(compose)
    return App(name, folder, folder / "docker-compose.yml", True, False)


def test_ports_map_procedures_to_apps(tmp_path: Path) -> None:
    apps = [
        app(tmp_path, "serial", 'services:\n  fwd:\n    ports: ["5002-5004:5002-5004"]\n'),
        app(tmp_path, "calc",
            "services:\n  calc:\n    ports:\n      - target: 5005\n        published: 5005\n"),
        app(tmp_path, "broken", "services: [\n"),
        app(tmp_path, "udp", 'services:\n  u:\n    ports: ["5010:5010/udp"]\n'),
    ]
    owners = published_ports(apps)
    assert owners == {5002: ("serial", "fwd"), 5003: ("serial", "fwd"), 5004: ("serial", "fwd"),
                      5005: ("calc", "calc")}
    rows = registrations({"tty": 5002, "multiply": 5005, "divide": 5005, "host_thing": 6000}, owners)
    assert rows == [
        Registration("tty", 5002, "serial", "fwd"),
        Registration("divide", 5005, "calc", "calc"),
        Registration("multiply", 5005, "calc", "calc"),
        Registration("host_thing", 6000, None, None),
    ]


def test_proxy_not_running_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    code = main(["rpc", "--register-port", str(closed_port), "--timeout", "2",
                 "--apps-root", str(tmp_path), "--sota-toml", str(tmp_path / "sota.toml")])
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot read m4-proxy's registry at 127.0.0.1:{closed_port}" in err
    assert "is m4-proxy running?" in err


def test_refuses_to_ask_arduinos_original_proxy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real process whose command name is the Go proxy's (m4_proxy); it only sleeps.
    impostor = tmp_path / "m4_proxy"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", impostor)
    process = subprocess.Popen([str(impostor), "60"])
    try:
        # Popen can return while the child is still the forked Python, before its exec.
        comm = Path(f"/proc/{process.pid}/comm")
        wait_for(lambda: comm.read_text().strip() == "m4_proxy", "the impostor's exec")
        assert original_proxy_pid() == process.pid
        code = main(["rpc", "--register-port", "1", "--apps-root", str(tmp_path),
                     "--sota-toml", str(tmp_path / "sota.toml")])
        assert code == 1
        assert f"original m4_proxy runs here (pid {process.pid})" in capsys.readouterr().err
    finally:
        process.kill()
        process.wait()
    assert original_proxy_pid() is None
