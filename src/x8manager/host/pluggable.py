"""``x8-monitor``: an Arduino pluggable monitor, so Arduino IDE 2's Serial Monitor shows the M4's Serial.

The IDE (or arduino-cli) starts it and speaks the pluggable-monitor protocol, version 1: text commands
on stdin (HELLO, DESCRIBE, CONFIGURE, OPEN, CLOSE, QUIT), one JSON answer per command on stdout. On
``OPEN ADDRESS PORT`` the monitor connects to the IDE's TCP ADDRESS and bridges it to the proxy's
monitor port on the device PORT names (a device address such as ``ssh://fio@x8.local``; anything else
means ``$X8_DEVICE``), through the transport's forward or tunnel.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from .address import AddressError, parse_device, ssh_config_from_env
from .monitor import DEFAULT_MONITOR_PORT, SocketBridge
from .transport import TransportError, open_transport

__all__ = ["PluggableMonitor", "main"]

PROTOCOL_VERSION = 1
BAUDRATES = ["9600", "19200", "38400", "57600", "115200", "230400", "460800", "921600"]


class PluggableMonitor:
    def __init__(self, output: TextIO, monitor_port: int = DEFAULT_MONITOR_PORT,
                 ssh_config: Path | None = None) -> None:
        self.output = output
        self.monitor_port = monitor_port
        self.ssh_config = ssh_config
        self.settings = {"baudrate": "115200"}
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._bridge: SocketBridge | None = None

    def reply(self, event: str, message: str = "OK", error: bool = False, **extra: Any) -> None:
        body: dict[str, Any] = {"eventType": event, "message": message}
        if error:
            body["error"] = True
        body.update(extra)
        with self._lock:
            self.output.write(json.dumps(body) + "\n")
            self.output.flush()

    def handle(self, line: str) -> bool:
        """Answer one command line; False after QUIT."""
        try:
            words = shlex.split(line)
        except ValueError as error:
            self.reply("command_error", f"cannot parse {line.strip()!r}: {error}", error=True)
            return True
        if not words:
            return True
        command, args = words[0].upper(), words[1:]
        if command == "HELLO":
            if not args or not args[0].isdigit():
                self.reply("hello", "HELLO needs a protocol version: HELLO 1 \"USER_AGENT\"", error=True)
            else:
                self.reply("hello", protocolVersion=PROTOCOL_VERSION)
        elif command == "DESCRIBE":
            self.reply("describe", port_description=self.describe())
        elif command == "CONFIGURE":
            self.configure(args)
        elif command == "OPEN":
            self.open(args)
        elif command == "CLOSE":
            if self._stack is None:
                self.reply("close", "port already closed", error=True)
            else:
                self.close()
                self.reply("close")
        elif command == "QUIT":
            self.close()
            self.reply("quit")
            return False
        else:
            self.reply("command_error", f"Command {command} not supported", error=True)
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "protocol": "x8",
            "configuration_parameters": {
                # The M4's Serial goes through the proxy, not a UART: the rate is accepted for the IDE's
                # sake and has no effect.
                "baudrate": {"label": "Baudrate (no effect: the M4's Serial is not a UART here)",
                             "type": "enum", "value": BAUDRATES, "selected": self.settings["baudrate"]},
            },
        }

    def configure(self, args: list[str]) -> None:
        if len(args) != 2:
            self.reply("configure", "CONFIGURE needs a parameter and a value", error=True)
        elif args[0] != "baudrate":
            self.reply("configure", f"unknown parameter {args[0]}", error=True)
        elif args[1] not in BAUDRATES:
            self.reply("configure", f"invalid value for parameter baudrate: {args[1]}", error=True)
        else:
            self.settings["baudrate"] = args[1]
            self.reply("configure")

    def open(self, args: list[str]) -> None:
        if self._stack is not None:
            self.reply("open", "port already opened", error=True)
            return
        if not args:
            self.reply("open", "OPEN needs the IDE's address: OPEN HOST:PORT DEVICE", error=True)
            return
        host, _, port_text = args[0].rpartition(":")
        if not host or not port_text.isdigit():
            self.reply("open", f"invalid address {args[0]!r}: expected HOST:PORT", error=True)
            return
        named = len(args) > 1 and args[1].startswith(("ssh://", "adb"))
        device = args[1] if named else os.environ.get("X8_DEVICE")
        stack = contextlib.ExitStack()
        try:
            transport = open_transport(parse_device(device), self.ssh_config)
            local_port = stack.enter_context(transport.forward(self.monitor_port))
            board = stack.enter_context(socket.create_connection(("127.0.0.1", local_port), timeout=10))
            ide = stack.enter_context(socket.create_connection((host, int(port_text)), timeout=10))
        except (AddressError, TransportError, OSError) as error:
            stack.close()
            self.reply("open", f"cannot open the M4's Serial: {error}", error=True)
            return
        board.settimeout(None)
        ide.settimeout(None)
        self._stack = stack
        self._bridge = SocketBridge(board, ide, on_closed=self._port_closed)
        self._bridge.start()
        self.reply("open")

    def _port_closed(self) -> None:
        self.reply("port_closed", "the M4's Serial connection closed")

    def close(self) -> None:
        if self._bridge is not None:
            self._bridge.stop()
            self._bridge = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def main(argv: list[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="x8-monitor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--monitor-port", type=int, default=DEFAULT_MONITOR_PORT,
                        help=f"the proxy's monitor port on the device (default {DEFAULT_MONITOR_PORT})")
    parser.add_argument("--ssh-config", type=Path,
                        default=ssh_config_from_env())
    args = parser.parse_args(argv)
    monitor = PluggableMonitor(sys.stdout, args.monitor_port, args.ssh_config)
    try:
        for line in sys.stdin:
            if not monitor.handle(line):
                return 0
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
