"""systemd's readiness notification (sd_notify) and socket activation (sd_listen_fds), without
libsystemd.

Notification is one datagram of ``KEY=value`` lines to the socket named by ``$NOTIFY_SOCKET``;
a leading ``@`` names an abstract socket. Outside systemd the variable is unset and every
call is a no-op, so daemons call these unconditionally.

Socket activation: a ``.socket`` unit's listening sockets reach the service as descriptors 3,
4, ... with ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (the process they are meant for: a child
that inherited the environment must not take them) and ``LISTEN_FDNAMES`` (``:``-separated,
the units' ``FileDescriptorName=``). :func:`listen_fds` reads them as ``sd_listen_fds_with_names``
does and unsets the variables; :func:`adopt_socket` checks that a descriptor is the kind of
socket the caller needs (``sd_is_socket``) before it is used.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from typing import Final

__all__ = [
    "LISTEN_FDS_START",
    "ListenFd",
    "ListenFdsError",
    "adopt_socket",
    "listen_fds",
    "notify",
    "notify_ready",
    "notify_status",
    "notify_stopping",
]

# The first passed descriptor (SD_LISTEN_FDS_START); 0-2 stay stdin, stdout, stderr.
LISTEN_FDS_START: Final = 3
# The name sd_listen_fds_with_names gives descriptors when LISTEN_FDNAMES is unset.
UNKNOWN_NAME: Final = "unknown"
_LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def notify(state: str) -> bool:
    """Send *state* (``"READY=1"``, ``"STATUS=..."``) to systemd; return whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        # Non-blocking: a notify socket nobody reads must never freeze the event loop (EAGAIN: not sent).
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
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


class ListenFdsError(Exception):
    """The socket-activation environment is malformed, or a passed descriptor is not usable."""


@dataclass(frozen=True)
class ListenFd:
    """One descriptor systemd passed: its number and its ``FileDescriptorName=``."""

    fd: int
    name: str


def listen_fds(*, unset_environment: bool = True) -> list[ListenFd]:
    """The descriptors systemd passed to this process (``[]`` when none, or meant for another).

    ``LISTEN_PID`` must be this process: a program started by the service (which inherits the
    environment, not the descriptors) sees nothing. Each descriptor gets ``FD_CLOEXEC`` so the
    programs this one starts do not hold the sockets, and the variables are unset (by default)
    for the same reason. Malformed variables raise :class:`ListenFdsError`.
    """
    environ = os.environ
    try:
        pid_text = environ.get("LISTEN_PID")
        if pid_text is None:
            return []
        try:
            pid = int(pid_text)
        except ValueError:
            raise ListenFdsError(f"LISTEN_PID={pid_text!r} is not a process id") from None
        if pid != os.getpid():
            return []
        count_text = environ.get("LISTEN_FDS", "")
        try:
            count = int(count_text)
        except ValueError:
            raise ListenFdsError(f"LISTEN_FDS={count_text!r} is not a number") from None
        if count < 0:
            raise ListenFdsError(f"LISTEN_FDS={count_text!r} is negative")
        names_text = environ.get("LISTEN_FDNAMES")
        names = [UNKNOWN_NAME] * count if names_text is None else _split_names(names_text)
        if len(names) != count:
            raise ListenFdsError(
                f"LISTEN_FDNAMES={names_text!r} names {len(names)} descriptors, LISTEN_FDS={count}"
            )
        passed = [ListenFd(LISTEN_FDS_START + index, name) for index, name in enumerate(names)]
        for each in passed:
            try:
                flags = fcntl.fcntl(each.fd, fcntl.F_GETFD)
                fcntl.fcntl(each.fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            except OSError as exc:
                raise ListenFdsError(
                    f"LISTEN_FDS={count}, but descriptor {each.fd} ({each.name}) "
                    f"is not open: {exc.strerror or exc}"
                ) from exc
        return passed
    finally:
        if unset_environment:
            for variable in _LISTEN_VARIABLES:
                environ.pop(variable, None)


def adopt_socket(
    passed: ListenFd, *, family: socket.AddressFamily, kind: socket.SocketKind, listening: bool = True
) -> socket.socket:
    """*passed* as a socket object, checked to be a *family*/*kind* socket (listening, by default).

    Raises :class:`ListenFdsError` naming the descriptor and what it is instead; the descriptor
    is closed then (it is of no use to this process).
    """
    what = f"descriptor {passed.fd} ({passed.name}) from systemd"
    try:
        sock = socket.socket(fileno=passed.fd)
    except OSError as exc:
        os.close(passed.fd)
        raise ListenFdsError(f"{what} is not a socket: {exc.strerror or exc}") from exc
    problem = None
    if sock.family != family:
        problem = f"is an {_name(sock.family)} socket, not {family.name}"
    elif sock.type != kind:
        problem = f"is a {_name(sock.type)} socket, not {kind.name}"
    elif listening and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        problem = "is not listening"
    if problem is not None:
        sock.close()
        raise ListenFdsError(f"{what} {problem}")
    return sock


def _split_names(text: str) -> list[str]:
    """``LISTEN_FDNAMES``: names separated by ``:``; empty when no descriptor is passed."""
    return text.split(":") if text else []


def _name(constant: object) -> str:
    """An address family's or socket type's name (a number the enum does not know as itself)."""
    return str(getattr(constant, "name", constant))
