"""Logging set-up shared by every daemon and CLI.

Under systemd (``$JOURNAL_STREAM`` names our stderr) records go to journald through its
native socket, so each record keeps its priority and any structured fields a caller attaches
with ``extra={"journal": {"SKETCH_SHA256": ...}}``. Elsewhere they go to stderr as text.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping

__all__ = ["JournalHandler", "setup_logging"]

JOURNAL_SOCKET = "/run/systemd/journal/socket"

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _priority(levelno: int) -> int:
    for level, priority in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return priority
    return 7


def _field(name: str, value: str) -> bytes:
    key = name.upper().encode("ascii", "replace")
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        # Values with newlines use the binary form: name, newline, 64-bit LE length, data.
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """Send records to journald's native socket, with structured fields."""

    def __init__(self, identifier: str, socket_path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields: dict[str, str] = {
                "MESSAGE": message,
                "PRIORITY": str(_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName or "",
                "LOGGER": record.name,
            }
            extra = getattr(record, "journal", None)
            if isinstance(extra, Mapping):
                fields.update({str(k): str(v) for k, v in extra.items()})
            payload = b"".join(_field(k, v) for k, v in fields.items())
            self._sock.sendto(payload, self.socket_path)
        except OSError:
            # journald gone or the datagram too large: fall back to stderr, never raise.
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - logging must never raise into callers
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or not os.path.exists(JOURNAL_SOCKET):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(identifier: str, *, verbose: bool = False, journal: bool | None = None) -> None:
    """Configure the root logger for a daemon or CLI named *identifier*.

    *journal* forces the choice; by default the journal is used when stderr is connected to it.
    """
    use_journal = _stderr_is_journal() if journal is None else journal
    handler: logging.Handler
    if use_journal:
        handler = JournalHandler(identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{identifier}: %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
