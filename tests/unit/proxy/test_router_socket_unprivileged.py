"""The proxy as m4-proxy.service runs it (an unprivileged user) cannot create the router socket in
/run: without m4-proxy.socket it must say so and how to fix it, not just "Permission denied"."""

from __future__ import annotations

import os
import tempfile

from x8manager.proxy.link import StartupError
from x8manager.proxy.routerfront import unix_listener

NOBODY = 65534


def listen_as_unprivileged(path: str) -> str:
    """The error unix_listener gives at *path* for a user who may not create files there."""
    if os.geteuid() != 0:
        return _error(path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops root, as the unit's User= does
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, _error(path).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    return message


def _error(path: str) -> str:
    try:
        unix_listener(path, mode=0o660, group=None).close()
    except StartupError as exc:
        return str(exc)
    return "no error"


def test_an_unprivileged_proxy_without_the_socket_unit_names_the_socket_unit() -> None:
    with tempfile.TemporaryDirectory(prefix="x8run") as run:
        os.chmod(run, 0o555)  # like /run for the proxy's user: nothing may be created there
        try:
            message = listen_as_unprivileged(f"{run}/arduino-router.sock")
        finally:
            os.chmod(run, 0o755)
    assert "Permission denied" in message, message
    assert "m4-proxy.socket" in message and "--router-socket ''" in message, message
