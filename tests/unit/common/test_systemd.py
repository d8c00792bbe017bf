"""sd_notify: the datagram reaches a real AF_UNIX socket, and outside systemd nothing happens."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

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
