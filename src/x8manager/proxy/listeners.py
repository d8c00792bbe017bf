"""Listening TCP sockets for the fronts: ``--bind``, dual stack, ``HOST:PORT`` flags.

Every front that listens on TCP (the register port, the call port, the router front's
``--router-listen``, the monitor port) gets its sockets or its address from here, so that
binding errors read the same everywhere and become a :class:`StartupError`.
"""

from __future__ import annotations

import errno
import logging
import socket

from x8manager.proxy.link import StartupError

__all__ = ["bind_address", "close_all", "listen_socket", "make_listeners", "split_host_port"]

log = logging.getLogger("x8manager.proxy.core")


def listen_socket(host: str, port: int, *, family: socket.AddressFamily,
                  v6only: bool | None) -> socket.socket:
    """A non-blocking listening socket on *host*:*port*."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_error(what: str, host: str, port: int, exc: OSError) -> StartupError:
    return StartupError(f"cannot listen for {what} on {host or '*'}:{port}: {exc.strerror or exc}")


def _numeric_family(host: str) -> socket.AddressFamily | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def bind_address(bind: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The family and address of --bind. A numeric address is taken as it is: getaddrinfo on
    a str encodes it with the idna codec, which loads unicodedata (memory for nothing)."""
    family = _numeric_family(bind)
    if family is not None:
        return family, bind
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"--bind {bind!r}: {exc}") from exc
    family, _, _, _, address = infos[0]
    return family, str(address[0])


def make_listeners(what: str, bind: str | None, port: int, *, dual_stack: bool) -> list[socket.socket]:
    """Listening sockets for one port.

    With --bind: that address only. Otherwise *dual_stack* gives one ``[::]`` socket that also
    takes IPv4 (the original's register port), else ``0.0.0.0`` plus a best-effort IPv6-only
    ``[::]`` on the same port (the original's call port is IPv4 only).
    """
    if bind is not None:
        family, host = bind_address(bind, port)
        try:
            return [listen_socket(host, port, family=family, v6only=True)]
        except OSError as exc:
            raise _bind_error(what, bind, port, exc) from exc
    if dual_stack:
        try:
            return [listen_socket("::", port, family=socket.AF_INET6, v6only=False)]
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise _bind_error(what, "[::]", port, exc) from exc
            # No IPv6 on this host: IPv4 alone.
    try:
        sockets = [listen_socket("0.0.0.0", port, family=socket.AF_INET, v6only=None)]
    except OSError as exc:
        raise _bind_error(what, "0.0.0.0", port, exc) from exc
    actual_port = sockets[0].getsockname()[1]
    try:
        sockets.append(listen_socket("::", actual_port, family=socket.AF_INET6, v6only=True))
    except OSError as exc:
        log.debug("no IPv6 listener for %s on port %d: %s", what, actual_port, exc)
    return sockets


def split_host_port(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) of a listening flag."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StartupError(f"{flag} {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
