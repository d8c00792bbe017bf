"""x8-trace's own parts: its filters, its text lines, its exit codes and messages (a real socket)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from x8manager.trace.cli import EventFilter, format_event, main

REQUEST = {"time": 1764585768.120456, "dir": "Linux->M4", "front": "call port", "app": "", "type": "request",
           "msgid": 3, "method": "add", "size": 14, "caller_msgid": 0}
SERVICE_REPLY = {"time": 1764585768.307, "dir": "Linux->M4", "front": "register port",
                 "app": "service on port 5005", "type": "response", "msgid": 268447744, "method": "ping",
                 "size": 16, "latency_ms": 1.8041}
TIMEOUT = {"time": 1764585769.0, "dir": "M4->Linux", "front": "router front",
           "app": "router client 2 (pid 812, uid 0)", "type": "error", "msgid": 9, "method": "slow",
           "size": 0, "latency_ms": 10000.2, "error": "no reply from the M4 within 10 s"}


def test_filters_by_method_and_app() -> None:
    assert EventFilter().passes(REQUEST)
    assert EventFilter(methods=["add"]).passes(REQUEST)
    assert not EventFilter(methods=["ping"]).passes(REQUEST)
    assert EventFilter(apps=["5005"]).passes(SERVICE_REPLY)
    assert not EventFilter(apps=["500"]).passes(SERVICE_REPLY)  # a port number is the whole port
    assert EventFilter(apps=["Router Client 2"]).passes(TIMEOUT)
    assert EventFilter(apps=["pid 812"]).passes(TIMEOUT)
    assert not EventFilter(apps=["5005"]).passes(REQUEST)
    assert EventFilter(methods=["x"], apps=["y"]).passes({"type": "dropped", "count": 3})


def test_text_lines_carry_direction_front_msgid_method_size_latency_app_and_error() -> None:
    line = format_event(REQUEST)
    assert line.split()[1:] == ["Linux->M4", "call", "port", "request", "#3", "(caller", "#0)", "add",
                                "14", "B"]
    line = format_event(SERVICE_REPLY)
    assert "#268447744  ping  16 B  1.804 ms  [service on port 5005]" in line
    line = format_event(TIMEOUT)
    assert line.endswith("10000.200 ms  [router client 2 (pid 812, uid 0)]  "
                         "error: no reply from the M4 within 10 s")
    assert format_event({"time": 1764585769.5, "type": "dropped", "count": 12}).endswith(
        "  12 events dropped (this trace read too slowly)")


def serve_once(path: Path, lines: list[bytes]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def run() -> None:
        with server, server.accept()[0] as connection:
            connection.sendall(b"".join(lines))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_json_lines_filtered_until_the_proxy_closes(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace.sock"
    lines = [json.dumps(event).encode() + b"\n" for event in (REQUEST, SERVICE_REPLY, TIMEOUT)]
    thread = serve_once(path, [lines[0], b"not json\n", b"[1, 2]\n", *lines[1:]])
    assert main(["--socket", str(path), "--json", "--method", "ping", "--method", "slow"]) == 0
    thread.join()
    out = capsys.readouterr().out
    assert [json.loads(line) for line in out.splitlines()] == [SERVICE_REPLY, TIMEOUT]


def test_count_stops_after_n_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace.sock"
    thread = serve_once(path, [json.dumps(REQUEST).encode() + b"\n"] * 5)
    assert main(["--socket", str(path), "--count", "2"]) == 0
    thread.join()
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_no_proxy_is_exit_1_with_what_to_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", str(tmp_path / "missing.sock")]) == 1
    err = capsys.readouterr().err
    assert "no proxy serves a trace at" in err and "systemctl status m4-proxy" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--count", "-1"]) == 2
    assert main(["--no-such-flag"]) == 2


def test_a_held_call_reads_as_held_and_its_delivery_says_for_how_long() -> None:
    held = {"time": 1764585769.5, "dir": "M4->Linux", "front": "", "app": "", "type": "held",
            "msgid": 268447744, "method": "read_gas", "size": 19,
            "error": "no Linux program provides it yet: held up to 30 s for one"}
    assert "  -              held  " in format_event(held)
    assert format_event(held).endswith("error: no Linux program provides it yet: held up to 30 s for one")
    delivered = dict(held, front="router front", app="router client 1 (pid 9, uid 0)", type="request",
                     held_ms=2412.7)
    delivered.pop("error")
    assert "  held 2413 ms for a provider  [router client 1" in format_event(delivered)
