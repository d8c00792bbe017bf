"""Small socket helpers shared by the daemons, the host tools and the QEMU harness."""

from __future__ import annotations

import socket

__all__ = ["free_local_port", "unix_socket_listening"]


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a forward whose client cannot pick one itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unix_socket_listening(path: str) -> bool:
    """Whether a program accepts connections on the UNIX socket *path* now (a live server,
    not a stale socket file left by one that is gone)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True
