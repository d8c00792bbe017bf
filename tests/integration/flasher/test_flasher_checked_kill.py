"""A flasher SIGKILLed at any step of a health-checked request (the real daemon process, the SWD-probe
stand-in's hold modes and the client's event lines as the conditions) never keeps the unchecked sketch:
after the restart the last good sketch A is what the M4 runs and what last-good says, and the checked
sketch B's newest outcome is "interrupted" or "unhealthy", never "success"."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
from collections.abc import Callable

import pytest
from flasher_daemon_rig import GOOD, Rig, variant

from tests.support import free_port, wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked_request(rig: Rig, data: bytes, seconds: str) -> subprocess.Popen[str]:
    """``flash --wait`` with a health check nobody answers (nothing listens on its port)."""
    return rig.cli_process(
        "flash",
        str(rig.sketch_file(data, "b.elf")),
        "--wait",
        "--health-method",
        "ping",
        "--health-timeout",
        seconds,
        "--proxy",
        f"127.0.0.1:{free_port()}",
    )


def _with_a_last_good(rig: Rig) -> None:
    rig.start()
    done = rig.cli("flash", str(rig.sketch_file(GOOD)), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert rig.status()["last_good"]["sha256"] == sha(GOOD)


def _restart_and_expect_a_back(rig: Rig, checked: bytes) -> list[dict[str, object]]:
    rig.set_mode("success")
    rig.start()  # recovery runs before the daemon looks at anything else
    wait_for(
        lambda: (
            not (rig.state_dir / "in-progress.json").exists()
            and rig.chip().get("state") == "programmed"
            and rig.chip().get("sha256") == sha(GOOD)
        ),
        "the restarted daemon to put the last good sketch back",
    )
    assert rig.status()["last_good"]["sha256"] == sha(GOOD)
    assert rig.last_good_elf() == GOOD
    about_b = [entry for entry in rig.history() if entry["sketch"].get("sha256") == sha(checked)]
    assert about_b, rig.history()
    assert about_b[0]["result"] in ("interrupted", "unhealthy"), about_b[0]
    assert all(entry["result"] != "success" for entry in about_b), about_b
    code, result = _request_if_changed(rig)
    assert code == 0 and result["result"] == "unchanged", result  # the M4 is known to run A
    rig.stop()
    return about_b


def _request_if_changed(rig: Rig) -> tuple[int, dict[str, object]]:
    done = rig.cli("flash", str(rig.sketch_file(GOOD)), "--wait", "--json", "--if-changed")
    return done.returncode, json.loads(done.stdout)


def _hold(rig: Rig, mode: str, state: str) -> Callable[[bytes], subprocess.Popen[str]]:
    def start(checked: bytes) -> subprocess.Popen[str]:
        rig.set_mode(mode)
        client = _checked_request(rig, checked, "600")
        wait_for(lambda: rig.chip() == rig.chip() | {"state": state, "sha256": sha(checked)}, f"B {state}")
        return client

    return start


@pytest.mark.parametrize(
    ("mode", "state"), [("hold-programming", "programming"), ("hold-verifying", "verifying")]
)
def test_checked_sketch_killed_mid_write_never_becomes_last_good(rig: Rig, mode: str, state: str) -> None:
    _with_a_last_good(rig)
    checked = variant(20)
    client = _hold(rig, mode, state)(checked)
    rig.stop(signal.SIGKILL)
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 1 and "outcome is unknown" in out, out
    about_b = _restart_and_expect_a_back(rig, checked)
    assert "before its health check could run" in str(about_b[0]["reason"]), about_b[0]


def test_checked_sketch_killed_during_the_rollback_records_its_verdict_and_a_runs(rig: Rig) -> None:
    _with_a_last_good(rig)
    checked = variant(21)
    rig.set_mode("hold-programming")
    client = _checked_request(rig, checked, "5")
    wait_for(lambda: rig.chip().get("state") == "programming", "B to be written")
    (rig.probe / "release").touch()
    rig.wait_for_line(client, "m4-flasher: health")
    (rig.probe / "release").unlink()  # the rollback's own write will hold
    rig.wait_for_line(client, "m4-flasher: rollback")
    wait_for(
        lambda: rig.chip() == rig.chip() | {"state": "programming", "sha256": sha(GOOD)}, "the rollback write"
    )
    rig.stop(signal.SIGKILL)
    client.communicate(timeout=60)
    about_b = _restart_and_expect_a_back(rig, checked)
    assert about_b[0]["result"] == "unhealthy" and "restored by recovery" in str(about_b[0]["reason"])


def test_checked_sketch_killed_while_its_body_is_received_is_never_flashed(rig: Rig) -> None:
    _with_a_last_good(rig)
    checked = variant(22)
    header = {"op": "flash", "size": len(checked), "health": {"method": "ping", "port": free_port()}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(rig.socket))
        sock.sendall(json.dumps(header).encode() + b"\n" + checked[: len(checked) // 2])
        spool = rig.state_dir / "spool"
        wait_for(lambda: any(part.stat().st_size for part in spool.glob("*.part")), "the body to be spooled")
        rig.stop(signal.SIGKILL)
    rig.start()
    wait_for(lambda: not list(spool.glob("*.part")), "the restarted daemon to drop the partial body")
    assert rig.chip() == rig.chip() | {"state": "programmed", "sha256": sha(GOOD), "writes": 1}
    assert rig.status()["last_good"]["sha256"] == sha(GOOD)
    rig.stop()
