"""Small TCP helpers shared by the host tools and the QEMU harness."""

from __future__ import annotations

import socket

__all__ = ["free_local_port"]


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a forward whose client cannot pick one itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
