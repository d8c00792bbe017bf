"""x8 doctor and x8 trace hand every argument after the command to the device's tool, options
included; x8's own options stay before the command.

The device side runs here: a stand-in ``ssh`` on PATH runs the remote command line it is given
(its last argument, quoted once by the transport) with this host's ``sh``, and stand-in
``x8-doctor``/``x8-trace`` record the argv they receive. So the test covers x8's parsing, the
transport's quoting and the device script, everything but the network (the image tests run the
same commands over real SSH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from x8manager.common.net import free_local_port
from x8manager.host.cli import split_pass_through

TOOL_EXIT = 7  # what the stand-in tools exit with: x8 passes the device tool's code on

STAND_IN_SSH = """#!/bin/sh
# Stand-in ssh: runs the remote command line (the last argument) with this host's sh.
for last; do :; done
exec sh -c "$last"
"""
STAND_IN_TOOL = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["X8_TEST_RECORD"], "a") as record:
    record.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
sys.exit({TOOL_EXIT})
"""
STAND_IN_SUDO = """#!/bin/sh
# Stand-in sudo -n: the tests may not run as root.
[ "$1" = -n ] && shift
exec "$@"
"""


@pytest.fixture
def device(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH has the stand-ins, and the file the tools record their argv in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ssh", STAND_IN_SSH), ("x8-doctor", STAND_IN_TOOL), ("x8-trace", STAND_IN_TOOL),
                       ("sudo", STAND_IN_SUDO)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / "argv.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "X8_TEST_RECORD": str(record)}
    env.pop("X8_DEVICE", None)
    return env, record


def recorded(record: Path) -> list[list[str]]:
    """The argv of each stand-in tool run, its name first."""
    return [json.loads(line) for line in record.read_text().splitlines()]


def x8(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x8manager.host.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("argv", "device_argv"), [
    (["doctor", "--json"], ["x8-doctor", "--json"]),
    (["doctor", "--expect", "add", "--timeout", "5", "--help"],
     ["x8-doctor", "--expect", "add", "--timeout", "5", "--help"]),
    (["trace", "--method", "add", "--json"], ["x8-trace", "--method", "add", "--json"]),
    (["trace", "--", "--method", "it's a name"], ["x8-trace", "--method", "it's a name"]),
    (["trace", "--app", "--", "--device", "x"], ["x8-trace", "--app", "--", "--device", "x"]),
    (["doctor"], ["x8-doctor"]),
])
def test_options_after_doctor_and_trace_reach_the_device_tool_unchanged(
        device: tuple[dict[str, str], Path], argv: list[str], device_argv: list[str]) -> None:
    # They failed with "x8: error: unrecognized arguments" (exit 2).
    env, record = device
    done = x8(env, "--device", "ssh://fio@x8.invalid", *argv)
    assert done.returncode == TOOL_EXIT, done.stderr
    assert recorded(record) == [device_argv]


def test_x8_s_own_options_come_before_the_command(device: tuple[dict[str, str], Path]) -> None:
    env, record = device
    env["X8_DEVICE"] = "ssh://fio@x8.invalid"
    assert x8(env, "doctor", "--device", "adb").returncode == TOOL_EXIT
    assert recorded(record) == [["x8-doctor", "--device", "adb"]]


@pytest.mark.parametrize("command", ["doctor", "trace"])
def test_an_unreachable_device_is_exit_1_with_ssh_s_message(command: str) -> None:
    closed = free_local_port()  # nothing listens there
    done = x8(dict(os.environ), "--device", f"ssh://fio@127.0.0.1:{closed}", command, "--json")
    assert done.returncode == 1, done.stderr
    assert "Connection refused" in done.stderr and f"x8: ssh://fio@127.0.0.1:{closed}: " in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("argv", "own", "rest"), [
    (["--device", "adb", "doctor", "--json"], ["--device", "adb", "doctor"], ["--json"]),
    (["--device=adb", "trace", "--", "-x"], ["--device=adb", "trace"], ["-x"]),
    (["--ssh-config", "doctor", "status"], ["--ssh-config", "doctor", "status"], []),
    (["call", "doctor", "--json"], ["call", "doctor", "--json"], []),
    (["-h"], ["-h"], []),
])
def test_split_at_the_first_command(argv: list[str], own: list[str], rest: list[str]) -> None:
    assert split_pass_through(argv) == (own, rest)
