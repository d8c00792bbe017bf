"""Start a program as systemd starts a socket-activated service, with descriptors the test chose.

Debian's ``systemd-socket-activate`` (package systemd) is the real thing for the sockets it opens
itself; the proxy's tests use it. This helper passes *any* descriptor the way systemd does (as 3,
4, ... with ``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``), so a test can keep the listening
socket itself and pass it to one proxy process after another (a restart under the same socket,
as systemd does it), or pass what systemd never would (a file, a datagram socket, another pid).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["LAUNCHER", "activated_command", "activation_environment"]

# Runs in the child: moves the passed descriptors to 3, 4, ..., sets LISTEN_PID to its own pid
# (exec keeps it) unless told otherwise, and execs the program.
LAUNCHER = """
import fcntl, os, sys
count, listen_pid, *rest = sys.argv[1:]
sources, argv = [int(fd) for fd in rest[:int(count)]], rest[int(count):]
# Parked above the targets 3..3+count-1 first, so no target overwrites a source still needed.
parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(sources)) for fd in sources]
for fd in sources:
    os.close(fd)
for index, fd in enumerate(parked):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid()) if listen_pid == "self" else listen_pid
os.execvp(argv[0], argv)
"""


def activated_command(argv: Sequence[str], fds: Sequence[int], *, listen_pid: int | None = None) -> list[str]:
    """The command that runs *argv* with *fds* as its descriptors 3, 4, ...; pass them to Popen
    (``pass_fds=fds``) with :func:`activation_environment`. *listen_pid* (default: the program's
    own pid) sets ``LISTEN_PID`` to another process to show the descriptors are then ignored."""
    return [sys.executable, "-c", LAUNCHER, str(len(fds)), "self" if listen_pid is None else str(listen_pid),
            *(str(fd) for fd in fds), *argv]


def activation_environment(names: Sequence[str] | None, count: int,
                           base: dict[str, str] | None = None) -> dict[str, str]:
    """``LISTEN_FDS`` and (when *names* is given) ``LISTEN_FDNAMES`` over *base* (os.environ)."""
    environment = dict(os.environ if base is None else base)
    environment["LISTEN_FDS"] = str(count)
    if names is not None:
        environment["LISTEN_FDNAMES"] = ":".join(names)
    return environment
