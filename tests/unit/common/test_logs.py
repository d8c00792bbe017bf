"""Journal logging: records reach journald's native protocol with priority and structured fields."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest

from x8manager.common.logs import JournalHandler, setup_logging


def parse_native(datagram: bytes) -> dict[str, str]:
    """Decode journald's native datagram format (KEY=value lines and the binary form)."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        newline = rest.index(b"\n")
        line = rest[:newline]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            rest = rest[newline + 1 :]
        else:
            key = line
            (length,) = struct.unpack("<Q", rest[newline + 1 : newline + 9])
            value = rest[newline + 9 : newline + 9 + length]
            rest = rest[newline + 9 + length + 1 :]
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "journal.socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock, path


def test_record_carries_priority_identifier_and_fields(journal: tuple[socket.socket, str]) -> None:
    sock, path = journal
    handler = JournalHandler("m4_proxy", socket_path=path)
    logger = logging.getLogger("x8manager.test.journal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("flash failed: %s", "probe", extra={"journal": {"FLASH_RESULT": "failed"}})
    finally:
        logger.removeHandler(handler)
        handler.close()
    fields = parse_native(sock.recv(65536))
    assert fields["MESSAGE"] == "flash failed: probe"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "m4_proxy"
    assert fields["FLASH_RESULT"] == "failed"


def test_multiline_message_uses_binary_form(journal: tuple[socket.socket, str]) -> None:
    sock, path = journal
    handler = JournalHandler("m4-flasher", socket_path=path)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "line one\nline two", None, None)
    handler.emit(record)
    handler.close()
    fields = parse_native(sock.recv(65536))
    assert fields["MESSAGE"] == "line one\nline two"
    assert fields["PRIORITY"] == "3"


def test_missing_journal_falls_back_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    handler = JournalHandler("m4_proxy", socket_path=str(tmp_path / "absent"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "still visible", None, None))
    handler.close()
    assert "still visible" in capsys.readouterr().err


def test_setup_logging_outside_systemd_writes_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("x8-apps")
        logging.getLogger("x8manager.test").info("hello")
        assert "x8-apps: INFO hello" in capsys.readouterr().err
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
