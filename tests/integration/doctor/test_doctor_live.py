"""x8-doctor against the real m4-proxy daemon and the virtual M4 (the stand-in sketch).

The root the doctor reads is this host's own /proc (every process, /proc/net) with the X8's
kernel side laid beside it: the x8h7 module list, the firmware's sysfs node, /dev/x8h7_ui as
the link to the virtual M4's pty (the device the proxy really holds), and the flasher's state.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from tests.support import free_port
from tests.support.live import LiveM4, LiveProxy, m4proxy, m4sim
from x8manager.doctor.cli import main
from x8manager.m4sim import ControlClient, parse_endpoint
from x8manager.rpc import M4Client, RpcTimeout

MODULES = ("x8h7_ui 16384 1 - Live 0x0 (O)\nx8h7_h7 16384 0 - Live 0x0 (O)\n"
           "x8h7_drv 24576 8 x8h7_ui,x8h7_h7, Live 0x0 (O)\n")


def x8_root(tmp: Path, device: str) -> Path:
    root = tmp / "root"
    (root / "proc").mkdir(parents=True)
    for name in os.listdir("/proc"):
        if name.isdigit() or name == "net":
            os.symlink(f"/proc/{name}", root / "proc" / name)
    (root / "proc" / "modules").write_text(MODULES)
    (root / "sys" / "kernel" / "x8h7_firmware").mkdir(parents=True)
    (root / "sys" / "kernel" / "x8h7_firmware" / "version").write_text("v0.0.5-virtual\n")
    (root / "dev").mkdir()
    os.symlink(device, root / "dev" / "x8h7_ui")
    state = root / "var" / "lib" / "m4-flasher"
    state.mkdir(parents=True)
    (state / "status.json").write_text(json.dumps({
        "state": "idle", "result": "success", "reason": "programmed and verified", "source": "watch",
        "sketch": {"sha256": "5e" * 32, "size": 20480}, "finished_at": "2026-12-01T09:00:00Z"}))
    return root


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveM4, LiveProxy, Path]]:
    with m4sim(tmp_path) as m4, m4proxy(m4.pty, tmp_path) as proxy:
        root = x8_root(tmp_path, m4.pty)
        # The router socket the proxy serves, where the doctor looks for it below its --root.
        seen_at = root / proxy.router_socket.lstrip("/")
        seen_at.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(proxy.router_socket, seen_at)
        yield m4, proxy, root


def doctor(capsys: pytest.CaptureFixture[str], proxy: LiveProxy, root: Path, *extra: str
           ) -> tuple[int, dict[str, object]]:
    code = main(["--json", "--root", str(root), "--register-port", str(proxy.register_port),
                 "--call-port", str(proxy.call_port), "--timeout", "2", *extra])
    return code, json.loads(capsys.readouterr().out)


def broken(document: dict[str, object]) -> dict[str, str]:
    findings = document["findings"]
    assert isinstance(findings, list)
    problem: dict[str, str] = next(f for f in findings if f["status"] == "problem")
    return problem


def test_healthy_path_exits_0(live: tuple[LiveM4, LiveProxy, Path],
                              capsys: pytest.CaptureFixture[str]) -> None:
    _, proxy, root = live
    code, document = doctor(capsys, proxy, root, "--expect", "add", "--expect", "subtract")
    assert code == 0, [f for f in document["findings"] if f["status"] == "problem"]  # type: ignore[attr-defined]
    assert document["healthy"] is True
    statuses = {(f["layer"], f["check"]): f["status"] for f in document["findings"]}  # type: ignore[attr-defined]
    assert statuses[("h7", "device")] == "ok"
    assert statuses[("proxy", "registry")] == "ok"
    assert statuses[("sketch", "rpc")] == "ok"
    assert statuses[("sketch", "methods")] == "ok"


def test_silent_m4_is_the_sketch_layer(live: tuple[LiveM4, LiveProxy, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    m4, proxy, root = live
    os.kill(m4.process.pid, signal.SIGSTOP)  # the virtual M4 paused: nothing answers
    try:
        code, document = doctor(capsys, proxy, root)
    finally:
        os.kill(m4.process.pid, signal.SIGCONT)
    assert code == 1
    assert document["broken_layer"] == "sketch"
    assert broken(document)["check"] == "rpc"
    assert "RPC.begin()" in broken(document)["message"]
    assert document["not_checked"] == ["apps"]


def test_a_wrong_typed_call_halts_the_virtual_m4_and_the_doctor_says_so(
        live: tuple[LiveM4, LiveProxy, Path], capsys: pytest.CaptureFixture[str]) -> None:
    m4, proxy, root = live
    control = ControlClient(parse_endpoint(m4.control))
    with pytest.raises(RpcTimeout):  # no reply: the M4 halted on the type_error
        M4Client("127.0.0.1", proxy.call_port, timeout=5).call("add", "a", "b")
    stats = control.request("stats")
    assert stats["halted"] and "add() argument 1" in stats["halt_reason"]
    code, document = doctor(capsys, proxy, root)
    assert code == 1 and document["broken_layer"] == "sketch"
    problem = broken(document)
    assert problem["check"] == "rpc"
    assert "halted" in problem["message"] and "wrong argument types" in problem["message"]
    assert "reset the M4" in problem["fix"]
    control.request("reset")
    code, document = doctor(capsys, proxy, root)
    assert code == 0, broken(document)


def test_registered_port_with_nobody_listening_is_named(live: tuple[LiveM4, LiveProxy, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, proxy, root = live
    ghost = free_port()
    with socket.create_connection(("127.0.0.1", proxy.register_port), timeout=5) as sock:
        sock.sendall(msgpack.packb([0, 1, "register", [ghost, ["ghost_temperature"]]]))
        assert sock.recv(64)
    code, document = doctor(capsys, proxy, root)
    assert code == 1
    assert document["broken_layer"] == "proxy"
    problem = broken(document)
    assert problem["check"] == "registry"
    assert f"port {ghost}" in problem["message"] and "ghost_temperature" in problem["message"]


def test_expected_method_not_bound(live: tuple[LiveM4, LiveProxy, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, proxy, root = live
    code, document = doctor(capsys, proxy, root, "--expect", "add", "--expect", "read_gas")
    assert code == 1
    problem = broken(document)
    assert (problem["layer"], problem["check"]) == ("sketch", "methods")
    assert "'read_gas'" in problem["message"] and "'add'" not in problem["message"]


def test_a_method_an_apps_compose_file_expects_not_bound(live: tuple[LiveM4, LiveProxy, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, proxy, root = live
    app = root / "var" / "sota" / "compose-apps" / "weather"
    app.mkdir(parents=True)
    (app / "docker-compose.yml").write_text(
        "services:\n  weather:\n    image: hub.foundries.io/x/weather\n    restart: always\n"
        "    extra_hosts: [\"m4-proxy:host-gateway\"]\n"
        "    labels:\n      io.x8manager.expect-methods: \"add,read_gas\"\n")
    code, document = doctor(capsys, proxy, root)
    assert code == 1
    problem = broken(document)
    assert (problem["layer"], problem["check"]) == ("sketch", "methods")
    assert problem["message"] == "the sketch does not bind 'read_gas' (expected by app weather)"


def test_proxy_stopped_is_the_proxy_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with m4sim(tmp_path) as m4:
        root = x8_root(tmp_path, m4.pty)
        code = main(["--json", "--root", str(root), "--register-port", str(free_port()),
                     "--call-port", str(free_port()), "--timeout", "1"])
        document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert document["broken_layer"] in ("proxy",)
