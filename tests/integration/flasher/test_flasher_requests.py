"""``m4-flasher flash FILE --wait``: the daemon's request socket, with health checks through the real
proxy in front of the virtual M4 (m4-sim), and the SWD-probe stand-in in place of openocd."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flasher_daemon_rig import GOOD, Rig, variant

from tests.support import free_port, wait_for
from tests.support.m4stack import M4Stack


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def m4() -> Iterator[M4Stack]:
    stack = M4Stack(bind=("healthy",))
    yield stack
    stack.stop()


def _sketch(rig: Rig, data: bytes, name: str = "sketch.elf") -> Path:
    path = rig.root / "build" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _request(rig: Rig, path: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    done = rig.cli("flash", str(path), "--wait", "--json", *extra)
    return done.returncode, json.loads(done.stdout), done.stderr


def _health(m4: M4Stack, method: str, seconds: str = "5") -> list[str]:
    return ["--health-method", method, "--health-timeout", seconds, "--proxy", f"127.0.0.1:{m4.call_port}"]


def test_health_check_passes_and_the_sketch_becomes_last_good(rig: Rig, m4: M4Stack) -> None:
    rig.start()
    code, result, err = _request(rig, _sketch(rig, GOOD), *_health(m4, "healthy"))
    assert code == 0, (result, err)
    assert result["result"] == "success" and result["ok"] and result["sha256"] == sha(GOOD)
    assert result["record"]["health"]["healthy"] and "healthy() answered" in result["reason"]
    assert rig.chip()["sha256"] == sha(GOOD)
    assert rig.status()["last_good"]["sha256"] == sha(GOOD)
    rig.stop()


def test_health_check_failure_restores_the_last_good_sketch(rig: Rig, m4: M4Stack) -> None:
    rig.start()
    assert _request(rig, _sketch(rig, GOOD), *_health(m4, "healthy"))[0] == 0
    broken = variant(1)  # flashes and verifies, but does not answer its health procedure
    code, result, _ = _request(rig, _sketch(rig, broken, "v1.elf"), *_health(m4, "selftest", "1"))
    assert code == 1 and not result["ok"] and result["result"] == "unhealthy"
    assert "could not find function 'selftest'" in result["reason"]
    assert f"last good sketch {sha(GOOD)[:12]} restored" in result["reason"]
    chip = rig.chip()
    assert chip["sha256"] == sha(GOOD) and chip["writes"] == 3, chip  # good, broken, good again
    assert rig.status()["last_good"]["sha256"] == sha(GOOD)
    assert rig.status()["result"] == "unhealthy"
    human = rig.cli("status")
    assert "last result: unhealthy" in human.stdout and "health: FAILED" in human.stdout
    rig.stop()


def test_if_changed_skips_the_chip_write_for_the_running_sketch(rig: Rig, m4: M4Stack) -> None:
    rig.start()
    sketch = _sketch(rig, GOOD)
    assert _request(rig, sketch)[0] == 0
    code, result, _ = _request(rig, sketch, "--if-changed", *_health(m4, "healthy"))
    assert code == 0 and result["result"] == "unchanged", result
    assert rig.chip()["writes"] == 1
    other = variant(2)
    code, result, _ = _request(rig, _sketch(rig, other, "v2.elf"), "--if-changed")
    assert code == 0 and result["result"] == "success"
    assert rig.chip()["writes"] == 2 and rig.chip()["sha256"] == sha(other)
    rig.stop()


def _client(rig: Rig, path: Path) -> subprocess.Popen[str]:
    return rig.cli_process("flash", str(path), "--wait")


def test_two_clients_racing_flash_one_after_the_other(rig: Rig) -> None:
    rig.set_mode("hold-programming")
    rig.start()
    first, second = variant(3), variant(4)
    a = _client(rig, _sketch(rig, first, "a.elf"))
    wait_for(lambda: rig.chip().get("sha256") == sha(first), "the first request to be programming")
    b = _client(rig, _sketch(rig, second, "b.elf"))
    line = rig.wait_for_line(b, "waiting for the H7 lock")
    assert "m4-flasher request" in line  # it names the holder
    (rig.probe / "release").touch()
    out_a, _ = a.communicate(timeout=60)
    out_b, _ = b.communicate(timeout=60)
    assert (a.returncode, b.returncode) == (0, 0), (out_a, out_b)
    assert out_a.startswith("success") and out_b.startswith("success")
    chip = rig.chip()
    assert chip["writes"] == 2 and chip["sha256"] == sha(second)
    rig.stop()


def test_daemon_killed_mid_request_is_an_error_never_a_success(rig: Rig) -> None:
    rig.set_mode("hold-programming")
    daemon = rig.start()
    sketch = variant(5)
    client = _client(rig, _sketch(rig, sketch))
    wait_for(lambda: rig.chip().get("state") == "programming", "programming to begin")
    daemon.send_signal(signal.SIGKILL)
    out, err = client.communicate(timeout=60)
    assert client.returncode == 1, (out, err)
    assert "success" not in out and "outcome is unknown" in out
    rig.stop()


def test_daemon_killed_during_the_health_check_puts_the_last_good_sketch_back(rig: Rig) -> None:
    rig.start()
    assert _request(rig, _sketch(rig, GOOD))[0] == 0  # the last good sketch
    unchecked = variant(8)
    # Nothing serves the health check's port: it retries until its 600 s deadline, so the daemon
    # is still checking when it is killed (the test waits on the client's "health" line, no clock).
    nobody = ["--proxy", f"127.0.0.1:{free_port()}"]
    client = rig.cli_process(
        "flash",
        str(_sketch(rig, unchecked, "v8.elf")),
        "--wait",
        "--health-method",
        "ping",
        "--health-timeout",
        "600",
        *nobody,
    )
    rig.wait_for_line(client, "m4-flasher: health ping() answers")
    assert rig.chip()["sha256"] == sha(unchecked)  # written and verified, health unknown
    rig.stop(signal.SIGKILL)
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 1 and "outcome is unknown" in out, out
    assert rig.status()["last_good"]["sha256"] == sha(GOOD)
    assert "its health check did not finish" in rig.cli("status").stdout
    rig.start()  # recovery runs before the daemon looks at anything else
    wait_for(lambda: rig.chip().get("writes") == 3, "the restarted daemon to flash again")
    wait_for(lambda: not (rig.state_dir / "in-progress.json").exists(), "the transaction to be closed")
    assert rig.chip() | {"state": "programmed", "sha256": sha(GOOD)} == rig.chip()
    latest, interrupted = rig.history()[:2]
    assert latest["result"] == "success" and latest["source"] == "recovery", latest
    assert latest["sketch"]["sha256"] == sha(GOOD)
    assert interrupted["result"] == "interrupted" and interrupted["sketch"]["sha256"] == sha(unchecked)
    about_unchecked = [e for e in rig.history() if e["sketch"].get("sha256") == sha(unchecked)]
    assert [e["result"] for e in about_unchecked] == ["interrupted", "written"]  # never "success"
    assert "health check" in interrupted["reason"], interrupted["reason"]
    assert rig.status()["last_good"]["sha256"] == sha(GOOD)
    code, result, _ = _request(rig, _sketch(rig, GOOD), "--if-changed")
    assert code == 0 and result["result"] == "unchanged"  # the M4 is known to run the good one
    rig.stop()


def test_sketch_path_that_is_a_symlink_or_a_fifo_is_refused(rig: Rig) -> None:
    rig.start()
    real = _sketch(rig, GOOD)
    link = real.with_name("link.elf")
    link.symlink_to(real)
    fifo = real.with_name("fifo.elf")
    os.mkfifo(fifo)
    for path, words in ((link, "is a symlink"), (fifo, "a FIFO")):
        code, result, _ = _request(rig, path)
        assert code == 3 and result["result"] == "rejected" and words in result["reason"], result
    assert rig.chip() == {}
    rig.stop()


def test_no_daemon_is_a_clear_failure(rig: Rig) -> None:
    code, result, _ = _request(rig, _sketch(rig, GOOD))
    assert (
        code == 1 and result["result"] == "unknown" and "cannot reach the flasher daemon" in result["reason"]
    )


def _raw(rig: Rig, payload: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(rig.socket))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        replies: list[dict[str, Any]] = []
        for line in sock.makefile("rb"):  # up to the result line: see the "too large" test below
            replies.append(json.loads(line))
            if replies[-1].get("event") == "result":
                break
        return replies


def test_bad_requests_get_an_error_and_the_daemon_keeps_serving(rig: Rig) -> None:
    rig.start()
    for payload in (
        b"not json\n",
        b'{"op": "erase"}\n',
        b'{"op": "flash", "size": 99999999999}\n',
        b'{"op": "flash", "size": 100}\n' + b"short",
        b'{"op": "flash", "size": 4, "health": {"timeout": -1}}\nabcd',
    ):
        (reply,) = _raw(rig, payload)
        assert reply["event"] == "result" and reply["result"] == "error" and not reply["ok"], reply
    assert oct(rig.socket.stat().st_mode & 0o777) == "0o600"
    code, result, _ = _request(rig, _sketch(rig, GOOD))
    assert code == 0 and result["result"] == "success"
    assert rig.daemon is not None and rig.daemon.poll() is None
    rig.stop()


@pytest.mark.parametrize(
    ("health", "words"),
    [
        ({"method": "ping", "port": 70000}, "port must be a TCP port"),
        ({"method": "ping", "port": 500011}, "port must be a TCP port"),
        ({"method": "ping", "host": "127.0.0.1\u0000evil"}, "host must not hold"),
        ({"method": "ping\u0000", "port": 5001}, "without control characters"),
    ],
)
def test_health_check_that_could_never_run_is_refused_before_anything_is_flashed(
    rig: Rig, health: dict[str, Any], words: str
) -> None:
    rig.start()
    sketch = variant(30)
    header = json.dumps({"op": "flash", "size": len(sketch), "health": health}).encode()
    (reply,) = _raw(rig, header + b"\n" + sketch)
    assert reply["result"] == "error" and words in reply["reason"], reply
    assert rig.runs() == [] and rig.chip() == {}
    assert not (rig.state_dir / "in-progress.json").exists()
    code, result, _ = _request(rig, _sketch(rig, GOOD))  # the daemon keeps serving
    assert code == 0 and result["result"] == "success"
    rig.stop()


def test_flash_wait_of_a_file_over_the_limit_says_too_large_not_broken_pipe(rig: Rig) -> None:
    rig.start()
    huge = _sketch(rig, GOOD + b"\0" * (32 * 1024 * 1024), "huge.elf")
    code, result, err = _request(rig, huge)
    assert code == 3 and result["result"] == "rejected" and "too large" in result["reason"], (result, err)
    assert "Broken pipe" not in json.dumps(result) + err
    # An older client that sends it anyway reads the daemon's refusal, not only a broken pipe.
    body = huge.read_bytes()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(rig.socket))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps({"op": "flash", "size": len(body)}).encode() + b"\n" + body)
        # Read up to the result line, as the client does: past it Linux may report the reset of a
        # connection closed with unread bytes (the body) instead of an end of file.
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["result"] == "error" and "too large" in reply["reason"], reply
    assert rig.runs() == []
    rig.stop()


def test_health_bound_reads_the_real_rpclib_arity_and_not_found_texts(rig: Rig, m4: M4Stack) -> None:
    rig.start()
    proxy = ["--proxy", f"127.0.0.1:{m4.call_port}", "--health-timeout", "5"]
    code, result, _ = _request(rig, _sketch(rig, GOOD), "--health-bound", "healthy", *proxy)
    assert code == 0 and result["result"] == "success" and "healthy is bound" in result["reason"], result
    code, result, _ = _request(rig, _sketch(rig, variant(31), "v31.elf"), "--health-bound", "absent", *proxy)
    assert code == 1 and result["result"] == "unhealthy", result
    assert "could not find function 'absent'" in result["reason"], result
    assert rig.chip()["sha256"] == sha(GOOD) and rig.status()["last_good"]["sha256"] == sha(GOOD)
    rig.stop()
