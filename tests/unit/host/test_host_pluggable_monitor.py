"""x8-monitor speaks Arduino's pluggable-monitor protocol (version 1), driven here by a scripted client
the way arduino-cli drives it: one command line in, one JSON answer out. The data path through OPEN
is tested against the virtual X8 over SSH (tests/image/test_host_cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from x8manager.common.net import free_local_port


class ScriptedClient:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "x8manager.host.pluggable"], env=env,
                                        text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)

    def send(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer


@pytest.fixture
def monitor() -> Iterator[ScriptedClient]:
    env = {**os.environ, "X8_DEVICE": f"ssh://fio@127.0.0.1:{free_local_port()}"}
    client = ScriptedClient(env)
    yield client
    if client.process.poll() is None:
        client.process.kill()
    client.process.wait(timeout=10)


def test_a_session_as_arduino_cli_runs_it(monitor: ScriptedClient) -> None:
    assert monitor.send('HELLO 1 "arduino-cli 1.1.1"') == {"eventType": "hello", "message": "OK",
                                                           "protocolVersion": 1}
    described = monitor.send("DESCRIBE")
    assert described["eventType"] == "describe" and described["message"] == "OK"
    baudrate = described["port_description"]["configuration_parameters"]["baudrate"]
    assert baudrate["type"] == "enum" and baudrate["selected"] in baudrate["value"]
    assert monitor.send("CONFIGURE baudrate 9600") == {"eventType": "configure", "message": "OK"}
    assert monitor.send("DESCRIBE")["port_description"]["configuration_parameters"]["baudrate"][
        "selected"] == "9600"
    assert monitor.send("CLOSE") == {"eventType": "close", "message": "port already closed", "error": True}
    assert monitor.send("QUIT") == {"eventType": "quit", "message": "OK"}
    assert monitor.process.wait(timeout=10) == 0


@pytest.mark.parametrize(("command", "event", "complaint"), [
    ("CONFIGURE baudrate 123456", "configure", "invalid value for parameter baudrate: 123456"),
    ("CONFIGURE parity odd", "configure", "unknown parameter parity"),
    ("CONFIGURE", "configure", "needs a parameter and a value"),
    ("HELLO", "hello", "needs a protocol version"),
    ("OPEN", "open", "needs the IDE's address"),
    ("OPEN nowhere", "open", "invalid address"),
    ("FROBNICATE", "command_error", "Command FROBNICATE not supported"),
    ('HELLO 1 "unterminated', "command_error", "cannot parse"),
])
def test_bad_commands_get_error_answers_and_the_monitor_goes_on(monitor: ScriptedClient, command: str,
                                                                event: str, complaint: str) -> None:
    answer = monitor.send(command)
    assert answer["eventType"] == event and answer["error"] is True
    assert complaint in answer["message"]
    assert monitor.send("QUIT")["eventType"] == "quit"


def test_open_on_an_unreachable_device_is_an_error_answer(monitor: ScriptedClient) -> None:
    monitor.send('HELLO 1 "test"')
    answer = monitor.send(f"OPEN 127.0.0.1:{free_local_port()} x8")
    assert answer["eventType"] == "open" and answer["error"] is True
    assert "cannot open the M4's Serial" in answer["message"]
    assert monitor.send("QUIT")["eventType"] == "quit"
