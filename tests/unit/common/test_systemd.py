"""sd_notify: the datagram reaches a real AF_UNIX socket, and outside systemd nothing happens.
sd_listen_fds: descriptors passed as systemd passes them (tests.support.socket_activation) are
taken, named, made close-on-exec; what is not the socket asked for is refused."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.socket_activation import activated_command, activation_environment
from x8manager.common import systemd


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    return sock


def test_ready_with_status_is_one_datagram(notify_socket: socket.socket) -> None:
    assert systemd.notify_ready("listening on 5000/5001")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=listening on 5000/5001"


def test_status_and_stopping(notify_socket: socket.socket) -> None:
    assert systemd.notify_status("flashing")
    assert notify_socket.recv(4096) == b"STATUS=flashing"
    assert systemd.notify_stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_socket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"x8manager-test-{id(sock)}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert systemd.notify_ready()
    assert sock.recv(64) == b"READY=1"
    sock.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify_ready()


def test_vanished_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not systemd.notify_ready()


def test_a_notify_socket_nobody_reads_never_blocks_the_sender(notify_socket: socket.socket) -> None:
    # A full datagram queue made the daemons' event loop hang in sendall (seen with a test rig's socket).
    import threading  # noqa: PLC0415 - this test only

    outcomes: list[bool] = []
    sender = threading.Thread(target=lambda: outcomes.extend(systemd.notify_status(f"status {n}")
                                                             for n in range(2000)), daemon=True)
    sender.start()
    sender.join(timeout=60)
    assert not sender.is_alive(), "notify blocked on a full notify socket"
    assert outcomes[0] and not outcomes[-1]  # sent while there was room, then refused, never waited


# --- socket activation (sd_listen_fds) ----------------------------------------------------------

# Run under tests.support.socket_activation: what listen_fds() took, and what is left of it.
REPORT_LISTEN_FDS = """
import fcntl, json, os
from x8manager.common.systemd import listen_fds
passed = listen_fds()
print(json.dumps({
    "passed": [[each.fd, each.name] for each in passed],
    "cloexec": [bool(fcntl.fcntl(each.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for each in passed],
    "left": sorted(key for key in os.environ if key.startswith("LISTEN_")),
}))
"""


def _run_report(fds: list[int], names: list[str] | None, *, listen_pid: int | None = None,
                count: int | None = None) -> subprocess.CompletedProcess[str]:
    command = activated_command([sys.executable, "-c", REPORT_LISTEN_FDS], fds, listen_pid=listen_pid)
    environment = activation_environment(names, len(fds) if count is None else count)
    return subprocess.run(command, pass_fds=fds, env=environment, capture_output=True, text=True, timeout=60,
                          check=False)


def _report(fds: list[int], names: list[str] | None, *, listen_pid: int | None = None) -> dict[str, Any]:
    done = _run_report(fds, names, listen_pid=listen_pid)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_passed_descriptors_are_taken_with_their_names_and_close_on_exec(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as second:
        first.bind(str(tmp_path / "a.sock"))
        second.bind(str(tmp_path / "b.sock"))
        report = _report([first.fileno(), second.fileno()], ["router", "other"])
    assert report == {"passed": [[3, "router"], [4, "other"]], "cloexec": [True, True], "left": []}


def test_without_names_each_is_unknown(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        report = _report([sock.fileno()], None)
    assert report["passed"] == [[3, "unknown"]]


def test_descriptors_meant_for_another_process_are_ignored(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        report = _report([sock.fileno()], ["router"], listen_pid=1)
    assert report == {"passed": [], "cloexec": [], "left": []}  # ignored, and unset all the same


def test_no_descriptors_with_empty_names_is_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    monkeypatch.setenv("LISTEN_FDNAMES", "")
    assert systemd.listen_fds() == []


def test_outside_socket_activation_nothing_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(variable, raising=False)
    assert systemd.listen_fds() == []


@pytest.mark.parametrize(("variables", "complaint"), [
    ({"LISTEN_PID": "me?"}, "LISTEN_PID='me?' is not a process id"),
    ({"LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a number"),
    ({"LISTEN_FDS": "-1"}, "is negative"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "router"}, "names 1 descriptors, LISTEN_FDS=2"),
])
def test_malformed_variables_are_an_error_and_unset(variables: dict[str, str], complaint: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(systemd.ListenFdsError, match=re.escape(complaint)):
        systemd.listen_fds()
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


def test_a_descriptor_that_is_not_open_is_an_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        done = _run_report([sock.fileno()], None, count=2)  # says 2, passes 1
    assert done.returncode != 0
    assert "LISTEN_FDS=2, but descriptor 4 (unknown) is not open" in done.stderr


def _passed(sock: socket.socket | int, name: str = "router") -> systemd.ListenFd:
    fd = sock if isinstance(sock, int) else sock.fileno()
    return systemd.ListenFd(os.dup(fd), name)


def test_adopt_a_listening_unix_stream_socket(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "router.sock"))
        sock.listen()
        with systemd.adopt_socket(_passed(sock), family=socket.AF_UNIX, kind=socket.SOCK_STREAM) as adopted:
            assert adopted.getsockname() == str(tmp_path / "router.sock")


def test_adopt_refuses_what_is_not_the_socket_asked_for(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as datagram, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
            open(tmp_path / "file", "wb") as file:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        for what, complaint in ((datagram, "is a SOCK_DGRAM socket, not SOCK_STREAM"),
                                (unbound, "is not listening"),
                                (tcp, "is an AF_INET socket, not AF_UNIX"),
                                (file.fileno(), "is not a socket")):
            passed = _passed(what)
            with pytest.raises(systemd.ListenFdsError, match=f"descriptor {passed.fd} \\(router\\) "
                                                             f"from systemd {complaint}"):
                systemd.adopt_socket(passed, family=socket.AF_UNIX, kind=socket.SOCK_STREAM)
            with pytest.raises(OSError):
                os.fstat(passed.fd)  # closed: of no use to the process
