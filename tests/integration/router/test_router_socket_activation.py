"""The router socket from systemd (socket activation, m4-proxy.socket), with the real m4-proxy
executable, arduino-router-bridge 0.5.1 unchanged in its venv, and the virtual M4.

Debian's ``systemd-socket-activate`` passes the socket exactly as systemd does; a restart under
the same listening socket (what systemd does on ``systemctl restart m4-proxy``) uses
tests.support.socket_activation, the test holding the socket as systemd holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import msgpack
import pytest

from tests.support import wait_until
from tests.support.bridge import bridge_app, bridge_python
from tests.support.proxy import m4_on_pty
from tests.support.socket_activation import activated_command, activation_environment
from x8manager.m4sim import VirtualM4

WAIT = 30.0
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(SOCKET_ACTIVATE is None,
                                           reason="systemd-socket-activate (Debian package systemd) missing")


@pytest.fixture(scope="module")
def bridge_py() -> Path:
    return bridge_python()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # UNIX socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="x8sa") as path:
        yield Path(path)


def proxy_argv(device: str, router_socket: Path, *options: str) -> list[str]:
    """The m4-proxy executable (what the console script runs) on loopback, ephemeral ports."""
    return [sys.executable, "-m", "x8manager.proxy.daemon", "--device", device, "--bind", "127.0.0.1",
            "--register-port", "0", "--call-port", "0", "--router-socket", str(router_socket),
            "--trace-socket", "", "--monitor-listen", "", "--m4-error-replies", *options]


class Proxy:
    """One proxy process and its log (stderr: outside systemd the daemon logs there)."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def logged(self, line: str) -> str:
        await wait_until(lambda: line in self.text() or self.process.returncode is not None,
                         f"m4-proxy logs {line!r}", WAIT)
        text = self.text()
        assert line in text, f"m4-proxy exited with {self.process.returncode} before {line!r}:\n{text}"
        return text

    async def exited(self) -> int:
        return await asyncio.wait_for(self.process.wait(), WAIT)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        try:
            return await self.exited()
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()


@contextlib.asynccontextmanager
async def proxy_process(argv: Sequence[str], log: Path, *, pass_fds: Sequence[int] = (),
                        env: dict[str, str] | None = None) -> AsyncIterator[Proxy]:
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(*argv, stdout=output, stderr=output,
                                                       pass_fds=pass_fds, env=env)
    finally:
        os.close(output)
    proxy = Proxy(process, log)
    try:
        yield proxy
    finally:
        await proxy.stop()


@contextlib.asynccontextmanager
async def activated_proxy(device: str, listener: socket.socket, log: Path, *, names: Sequence[str] | None,
                          listen_pid: int | None = None, router_socket: Path | None = None,
                          fd: int | None = None) -> AsyncIterator[Proxy]:
    """The proxy with *listener* (or the descriptor *fd*) passed as systemd passes it."""
    passed = listener.fileno() if fd is None else fd
    path = Path(listener.getsockname()) if router_socket is None else router_socket
    argv = activated_command(proxy_argv(device, path), [passed], listen_pid=listen_pid)
    async with proxy_process(argv, log, pass_fds=[passed], env=activation_environment(names, 1)) as proxy:
        yield proxy


def unix_listener(path: Path) -> socket.socket:
    """A listening socket as m4-proxy.socket makes it (the test holds it, as systemd does)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o660)
    listener.listen(16)
    return listener


async def m4_reaches(m4: VirtualM4, method: str, *args: object) -> object:
    return await asyncio.wait_for(m4.call(method, *args), WAIT)


@needs_socket_activate
@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_systemd_socket_activate_passes_the_socket_the_bridge_is_served_on(
        tmp_path: Path, socket_dir: Path, bridge_py: Path, event_loop: str) -> None:
    """The first connection starts the proxy on the passed socket, which it neither re-binds,
    re-modes nor removes (with either event loop the daemon offers)."""
    if event_loop == "uvloop":
        pytest.importorskip("uvloop")

    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        m4.bind("add", lambda a, b: a + b)
        path = socket_dir / "router.sock"
        assert SOCKET_ACTIVATE is not None
        argv = [SOCKET_ACTIVATE, "-l", str(path), "--fdname=router",
                *proxy_argv(device, path, "--event-loop", event_loop)]
        try:
            async with proxy_process(argv, tmp_path / "proxy.log") as proxy:
                await proxy.logged(f"Listening on {path} as 3.")
                before = os.stat(path)
                # The Bridge's connection is what starts the proxy (systemd-socket-activate execs it).
                async with bridge_app(bridge_py, f"unix://{path}") as app:
                    assert await app.call("add", 2, 3) == 5
                    await app.provide("linux_echo", "echo")
                    assert await m4_reaches(m4, "linux_echo", "hello") == ["hello"]
                text = await proxy.logged("ready:")
                assert f"router socket {path}: inherited from systemd" in text, text
                after = os.stat(path)
                assert after.st_ino == before.st_ino
                assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode)
                assert await proxy.stop() == 0
                # Stopped, the proxy left systemd's socket file where it was.
                assert os.stat(path).st_ino == before.st_ino
        finally:
            await m4.stop()
    asyncio.run(scenario())


def test_a_restarted_proxy_on_the_same_socket_is_reached_by_the_connected_bridge(
        tmp_path: Path, socket_dir: Path, bridge_py: Path) -> None:
    """What systemd does on ``systemctl restart m4-proxy``: the socket (the same inode) outlives
    the process; the Bridge reconnects and provides its method again; a client that connects
    while no proxy runs waits in the backlog and is answered by the next proxy."""
    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        m4.bind("add", lambda a, b: a + b)
        path = socket_dir / "router.sock"
        listener = unix_listener(path)
        inode = os.stat(path).st_ino
        try:
            async with bridge_app(bridge_py, f"unix://{path}", connect=False) as app:
                async with activated_proxy(device, listener, tmp_path / "first.log",
                                           names=["router"]) as first:
                    await first.logged("ready:")
                    assert await app.command("connect", timeout=10) is True
                    await app.provide("linux_echo", "echo")
                    await first.logged("provides 'linux_echo'")
                    assert await m4_reaches(m4, "linux_echo", 1) == [1]
                    assert await first.stop() == 0
                assert os.stat(path).st_ino == inode  # not removed, not re-created
                # Nobody serves the socket now, yet a new client connects (the backlog holds it).
                reader, writer = await asyncio.open_unix_connection(str(path))
                writer.write(msgpack.packb([0, 7, "$/version", []]))
                await writer.drain()
                async with activated_proxy(device, listener, tmp_path / "second.log",
                                           names=["router"]) as second:
                    answer = msgpack.unpackb(await asyncio.wait_for(reader.read(4096), WAIT))
                    assert answer[:3] == [1, 7, None] and "m4-proxy" in answer[3], answer
                    # The Bridge reconnects by itself (every 3 s) and provides linux_echo again.
                    await second.logged("provides 'linux_echo'")
                    assert await m4_reaches(m4, "linux_echo", 2) == [2]
                    assert await app.call("add", 20, 22) == 42
                    assert os.stat(path).st_ino == inode
                    assert "inherited from systemd" in second.text()
                writer.close()
        finally:
            listener.close()
            await m4.stop()
    asyncio.run(scenario())


def test_a_descriptor_that_is_not_a_socket_stops_the_proxy_with_a_clear_error(
        tmp_path: Path, socket_dir: Path) -> None:
    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        path = socket_dir / "router.sock"
        listener = unix_listener(path)  # only for its path; the descriptor passed is a file
        file = os.open(tmp_path / "not-a-socket", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            async with activated_proxy(device, listener, tmp_path / "proxy.log", names=["router"],
                                       fd=file) as proxy:
                assert await proxy.exited() != 0
                assert "descriptor 3 (router) from systemd is not a socket" in proxy.text(), proxy.text()
                assert "m4-proxy cannot start" in proxy.text()
        finally:
            os.close(file)
            listener.close()
            await m4.stop()
    asyncio.run(scenario())


@needs_socket_activate
def test_a_datagram_socket_from_systemd_stops_the_proxy_with_a_clear_error(
        tmp_path: Path, socket_dir: Path) -> None:
    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        path = socket_dir / "router.sock"
        assert SOCKET_ACTIVATE is not None
        argv = [SOCKET_ACTIVATE, "--datagram", "-l", str(path), "--fdname=router", *proxy_argv(device, path)]
        try:
            async with proxy_process(argv, tmp_path / "proxy.log") as proxy:
                await proxy.logged(f"Listening on {path} as 3.")
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                    client.sendto(b"start", str(path))  # a datagram is what starts the program
                assert await proxy.exited() != 0
                assert "descriptor 3 (router) from systemd is a SOCK_DGRAM socket, not SOCK_STREAM" \
                    in proxy.text(), proxy.text()
        finally:
            await m4.stop()
    asyncio.run(scenario())


def test_descriptors_meant_for_another_process_are_ignored(tmp_path: Path, socket_dir: Path,
                                                           bridge_py: Path) -> None:
    """LISTEN_PID names another process: the proxy binds --router-socket itself (mode 0660)."""
    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        m4.bind("add", lambda a, b: a + b)
        elsewhere = unix_listener(socket_dir / "elsewhere.sock")
        own = socket_dir / "router.sock"
        try:
            async with activated_proxy(device, elsewhere, tmp_path / "proxy.log", names=["router"],
                                       listen_pid=1, router_socket=own) as proxy:
                text = await proxy.logged("ready:")
                assert f"router socket {own}: bound by m4-proxy" in text, text
                assert "inherited" not in text
                assert stat.S_IMODE(os.stat(own).st_mode) == 0o660
                async with bridge_app(bridge_py, f"unix://{own}") as app:
                    assert await app.call("add", 1, 2) == 3
                assert await proxy.stop() == 0
                assert not own.exists()  # its own socket: removed when it stops, as before
        finally:
            elsewhere.close()
            await m4.stop()
    asyncio.run(scenario())
