"""systemd readiness notification (sd_notify) without libsystemd.

The protocol is one datagram of ``KEY=value`` lines to the socket named by ``$NOTIFY_SOCKET``;
a leading ``@`` names an abstract socket. Outside systemd the variable is unset and every
call is a no-op, so daemons call these unconditionally.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "notify_ready", "notify_status", "notify_stopping"]


def notify(state: str) -> bool:
    """Send *state* (``"READY=1"``, ``"STATUS=..."``) to systemd; return whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8", "replace"))
    except OSError:
        # A vanished notify socket must not take a daemon down: readiness is advisory.
        return False
    return True


def notify_ready(status: str | None = None) -> bool:
    """Tell systemd start-up is complete (``Type=notify`` units wait for this)."""
    message = "READY=1"
    if status:
        message += f"\nSTATUS={status}"
    return notify(message)


def notify_status(status: str) -> bool:
    """Update the one-line status ``systemctl status`` shows."""
    return notify(f"STATUS={status}")


def notify_stopping() -> bool:
    """Tell systemd an orderly shutdown has begun."""
    return notify("STOPPING=1")
