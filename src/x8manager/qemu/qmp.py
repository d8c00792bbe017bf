"""A minimal QMP (QEMU Machine Protocol) client: power control of a virtual machine.

QMP is line-delimited JSON over a socket: a greeting, ``qmp_capabilities``, then commands that
answer ``{"return": ...}`` or ``{"error": ...}``; asynchronous ``{"event": ...}`` messages may
arrive in between and are kept in :attr:`QmpClient.events`.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

__all__ = ["QmpClient", "QmpError"]


class QmpError(RuntimeError):
    """QEMU refused a command, or the QMP socket failed."""


class QmpClient:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buffer = b""
        try:
            self._sock.connect(path)
            greeting = self._read_message()
            if "QMP" not in greeting:
                raise QmpError(f"QMP socket {path} sent no greeting: {greeting!r}")
            self.execute("qmp_capabilities")
        except OSError as exc:
            self._sock.close()
            raise QmpError(f"cannot talk QMP on {path}: {exc}") from exc

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QmpError(f"QEMU closed the QMP socket {self.path}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"unexpected QMP message: {message!r}")
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run *command* and return its ``return`` value; raise :class:`QmpError` on ``error``."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                message = self._read_message()
                if "event" in message:
                    self.events.append(message)
                    continue
                if "error" in message:
                    error = message["error"]
                    raise QmpError(f"QMP {command} failed: {error.get('class')}: {error.get('desc')}")
                return message.get("return")
        except OSError as exc:
            raise QmpError(f"QMP {command} on {self.path}: {exc}") from exc
        raise QmpError(f"QMP {command}: no answer within {self.timeout}s")

    def close(self) -> None:
        self._sock.close()
