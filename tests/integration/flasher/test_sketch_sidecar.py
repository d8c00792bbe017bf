"""An app's sketch service (``python -m x8manager.flasher.client``) against the real daemon: a
transaction whose health check is real, because the virtual M4 runs what was flashed (the SWD-probe
stand-in hands each flashed ELF to m4-sim over the stand-in SWD wire)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flasher_daemon_rig import Rig

from tests.support import WAIT
from tests.support.m4stack import M4Stack
from tests.support.sketches import sketch_elf
from x8manager.rpc import M4Client, RpcTimeout


@pytest.fixture
def stack(rig: Rig) -> Iterator[M4Stack]:
    wire = rig.root / "swd.sock"
    m4 = M4Stack(swd=wire)
    rig.env["OPENOCD_STANDIN_SWD"] = f"unix:{wire}"
    yield m4
    m4.stop()


def run_client(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The sketch service's command, as its container runs it."""
    return subprocess.run(
        [sys.executable, "-m", "x8manager.flasher.client"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def sidecar(rig: Rig, m4: M4Stack, name: str, behaviour: str = "runs") -> subprocess.CompletedProcess[str]:
    """What the app's sketch service does on `docker compose up`: flash sketch *name* with a health check."""
    elf = rig.root / "images" / name / "app.elf"
    elf.parent.mkdir(parents=True, exist_ok=True)
    elf.write_bytes(sketch_elf(name, ["health"], behaviour))
    env = dict(
        rig.env,
        X8_APP="thermo",
        X8_SKETCH=str(elf),
        X8_FLASHER_SOCKET=str(rig.socket),
        X8_SKETCH_HEALTH_METHOD="health",
        X8_SKETCH_HEALTH_TIMEOUT="2",
        X8_SKETCH_HEALTH_PROXY=f"127.0.0.1:{m4.call_port}",
    )
    return run_client(env)


def m4_runs(m4: M4Stack) -> str | None:
    """The name of the sketch the virtual M4 runs, asked the way an app would (None: it is silent).

    Every sketch asked here answers: the deadline is only for a failing test, as long as any wait.
    """
    try:
        answer = M4Client("127.0.0.1", m4.call_port, timeout=WAIT).call("health")
    except RpcTimeout:
        return None
    return str(answer[0])


def test_a_failed_sketch_takes_the_previous_one_back_and_a_restart_writes_nothing(
    rig: Rig, stack: M4Stack
) -> None:
    rig.start()
    first = sidecar(rig, stack, "A")
    assert first.returncode == 0, first.stderr
    assert m4_runs(stack) == "A"

    second = sidecar(rig, stack, "B")
    assert second.returncode == 0, second.stderr
    assert m4_runs(stack) == "B" and rig.chip()["writes"] == 2

    broken = sidecar(rig, stack, "C", behaviour="silent")  # flashes and verifies, then never answers
    assert broken.returncode == 1, broken.stderr
    assert "unhealthy" in broken.stderr and "restored" in broken.stderr
    assert m4_runs(stack) == "B"  # the last good sketch is back on the M4
    assert rig.chip()["writes"] == 4  # B, C, then B again

    again = sidecar(rig, stack, "B")  # the app restarted with B running: no chip write
    assert again.returncode == 0, again.stderr
    assert '"result": "unchanged"' in again.stdout
    assert rig.chip()["writes"] == 4 and m4_runs(stack) == "B"
    rig.stop()


def test_without_the_socket_the_sidecar_fails_clearly(rig: Rig, tmp_path: Path) -> None:
    elf = tmp_path / "app.elf"
    elf.write_bytes(sketch_elf("A", ["health"]))
    env = dict(rig.env, X8_SKETCH=str(elf), X8_FLASHER_SOCKET=str(tmp_path / "none.sock"))
    done = run_client(env)
    assert done.returncode == 1 and "cannot reach the flasher daemon" in done.stderr
    assert "Traceback" not in done.stderr
    unset = run_client(rig.env)
    assert unset.returncode == 2 and "X8_SKETCH is not set" in unset.stderr


def test_a_sidecar_with_an_impossible_proxy_port_flashes_nothing(rig: Rig) -> None:
    rig.start()
    elf = rig.sketch_file(sketch_elf("A", ["health"], "runs"), "app.elf")
    env = dict(
        rig.env,
        X8_SKETCH=str(elf),
        X8_FLASHER_SOCKET=str(rig.socket),
        X8_SKETCH_HEALTH_METHOD="health",
        X8_SKETCH_HEALTH_PROXY="127.0.0.1:500011",  # a typo of 5001
    )
    done = run_client(env)
    assert done.returncode == 1 and "PORT from 1 to 65535" in done.stderr, done.stderr
    assert rig.runs() == [] and rig.chip() == {}
    rig.stop()
