"""Which descriptor systemd passed is the router socket (router_socket_from_systemd), on real sockets."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from x8manager.common.systemd import ListenFd
from x8manager.proxy.link import StartupError
from x8manager.proxy.routerfront import router_socket_from_systemd


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # UNIX socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="x8sd") as path:
        yield Path(path)


def listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def passed(sock: socket.socket, name: str) -> ListenFd:
    return ListenFd(os.dup(sock.fileno()), name)


def test_the_descriptor_named_router_is_taken_wherever_it_is_bound(socket_dir: Path) -> None:
    with listening(socket_dir / "a.sock") as other, listening(socket_dir / "b.sock") as router:
        unused = passed(other, "metrics")
        taken, left = router_socket_from_systemd([unused, passed(router, "router")],
                                                 str(socket_dir / "x.sock"))
        assert taken is not None
        with taken:
            assert taken.getsockname() == str(socket_dir / "b.sock")
            assert not taken.getblocking()
        assert left == [unused]
        os.close(unused.fd)


def test_without_the_name_the_one_bound_to_the_path_is_taken(socket_dir: Path) -> None:
    (socket_dir / "real").mkdir()
    (socket_dir / "link").symlink_to(socket_dir / "real")  # as /var/run is /run
    with listening(socket_dir / "real" / "router.sock") as router, \
            listening(socket_dir / "other.sock") as other:
        unnamed, elsewhere = passed(router, "m4-proxy.socket"), passed(other, "unknown")
        taken, left = router_socket_from_systemd([elsewhere, unnamed],
                                                 str(socket_dir / "link" / "router.sock"))
        assert taken is not None
        taken.close()
        assert left == [elsewhere]
        nothing, all_left = router_socket_from_systemd([elsewhere], "")  # router front off: no path
        assert nothing is None and all_left == [elsewhere]
        os.close(elsewhere.fd)


def test_two_router_descriptors_are_an_error(socket_dir: Path) -> None:
    with listening(socket_dir / "a.sock") as first, listening(socket_dir / "b.sock") as second:
        both = [passed(first, "router"), passed(second, "router")]
        with pytest.raises(StartupError, match="systemd passed 2 descriptors named 'router'"):
            router_socket_from_systemd(both, str(socket_dir / "a.sock"))
        for each in both:
            os.close(each.fd)


def test_a_router_descriptor_that_is_not_listening_is_an_error(socket_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(socket_dir / "router.sock"))
        with pytest.raises(StartupError, match=r"descriptor \d+ \(router\) from systemd is not listening"):
            router_socket_from_systemd([passed(bound, "router")], str(socket_dir / "router.sock"))
