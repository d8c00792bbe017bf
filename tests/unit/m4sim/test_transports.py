"""The virtual M4 on real transports: a pty, TCP with reconnect, the control surface, the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.support import wait_for
from x8manager.m4sim import ControlClient, ControlError, VirtualM4, parse_endpoint, serve_control
from x8manager.m4sim.links import Endpoint, StreamLink, connect
from x8manager.m4sim.wire import THREAD_ID_BASE

M4_SIM = [sys.executable, "-m", "x8manager.m4sim.cli"]


def read_messages(fd: int, count: int) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    found: list[Any] = []
    while len(found) < count:
        data = os.read(fd, 1024)
        assert data, "pty closed"
        unpacker.feed(data)
        found.extend(unpacker)
    return found


def test_parse_endpoint() -> None:
    assert parse_endpoint("tcp:127.0.0.1:5001") == Endpoint("tcp", host="127.0.0.1", port=5001)
    assert parse_endpoint("tcp:[::1]:7") == Endpoint("tcp", host="::1", port=7)
    assert parse_endpoint("unix:/run/m4.sock") == Endpoint("unix", path="/run/m4.sock")
    for bad in ("tcp:host", "tcp:h:x", "udp:h:1", "unix:", "tcp:h:70000", "nothing"):
        with pytest.raises(ValueError, match="endpoint"):
            parse_endpoint(bad)


def test_pty_survives_linux_closing_and_reopening() -> None:
    async def main() -> None:
        m4 = VirtualM4()
        path = await m4.start_on_pty()
        try:
            for msgid in (1, 2):  # the proxy restarts: the second open must work the same
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
                try:
                    os.write(fd, msgpack.packb([0, msgid, "add", [msgid, 40]]))
                    replies = await asyncio.to_thread(read_messages, fd, 1)
                finally:
                    os.close(fd)
                assert replies == [[1, msgid, None, msgid + 40]]
        finally:
            await m4.stop()

    asyncio.run(main())


def test_tcp_reconnect_after_end_of_stream() -> None:
    """With reconnect the M4 comes back after the other end goes away (a VM reboot)."""

    async def main() -> None:
        connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await connections.put((reader, writer))

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        m4 = VirtualM4()

        async def opener() -> StreamLink:
            return await connect(Endpoint("tcp", host="127.0.0.1", port=port))

        await m4.start(opener, reconnect=True)
        try:
            for msgid in (1, 2):
                reader, writer = await asyncio.wait_for(connections.get(), 10)
                writer.write(msgpack.packb([0, msgid, "subtract", [10, msgid]]))
                unpacker = msgpack.Unpacker(raw=False)
                while not (found := list(unpacker)):
                    unpacker.feed(await asyncio.wait_for(reader.read(1024), 10))
                assert found == [[1, msgid, None, 10 - msgid]]
                writer.close()
            assert m4.stats.connections == 2
        finally:
            await m4.stop()
            server.close()

    asyncio.run(main())


def test_control_surface() -> None:
    async def main() -> None:
        m4 = VirtualM4()
        path = await m4.start_on_pty()
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            async with serve_control(m4, Endpoint("tcp", host="127.0.0.1", port=0)) as bound:

                def linux_side() -> list[Any]:
                    # Answer the M4's call as a Linux service would, through the pty.
                    (call,) = read_messages(fd, 1)
                    os.write(fd, msgpack.packb([1, call[1], None, call[3][0] * call[3][1]]))
                    os.write(fd, msgpack.packb([0, 5, "hello", ["x8", 1]]))
                    return [call, *read_messages(fd, 1)]

                def drive() -> tuple[Any, ...]:
                    with ControlClient(bound) as control:
                        control.request("bind_echo", "hello")
                        product = control.request("call", "multiply", [6, 7])
                        with pytest.raises(ControlError, match="method not found"):
                            control.request("explode")
                        return product, control.request("stats"), control.request("bound")

                (call, echoed), (product, stats, bound_names) = await asyncio.gather(
                    asyncio.to_thread(linux_side), asyncio.to_thread(drive)
                )
                assert call[1] == THREAD_ID_BASE
                assert product == 42
                assert echoed == [1, 5, None, ["x8", 1]]
                assert stats["calls_to_linux"] == 1
                assert "hello" in bound_names

                def received() -> list[Any]:
                    with ControlClient(bound) as control:
                        result: list[Any] = control.request("calls_received")
                        return result

                assert await asyncio.to_thread(received) == [["hello", ["x8", 1], False]]
        finally:
            os.close(fd)
            await m4.stop()

    asyncio.run(main())


def start_cli(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen([*M4_SIM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    info: dict[str, str] = {}
    for line in process.stdout:
        if line.strip() == "ready":
            return process, info
        key, _, value = line.strip().partition("=")
        info[key] = value
    process.wait()
    raise AssertionError(f"m4-sim did not start: {process.stderr.read() if process.stderr else ''}")


def test_cli_pty_and_client_commands() -> None:
    process, info = start_cli("--pty", "--control", "tcp:127.0.0.1:0", "--call-timeout", "0.2")
    try:
        fd = os.open(info["pty"], os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, msgpack.packb([0, 1, "whoami", []]))
            (reply,) = read_messages(fd, 1)
            assert "virtual M4" in reply[3]
            done = subprocess.run(
                [*M4_SIM, "serial-write", "--control", info["control"], "hi"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert done.returncode == 0
            assert read_messages(fd, 1) == [[2, "tty", [b"hi"]]]
            stats = subprocess.run(
                [*M4_SIM, "stats", "--control", info["control"]], capture_output=True, text=True, check=True
            )
            assert '"calls_answered": 1' in stats.stdout
            # Nobody on the Linux side answers: the M4's call times out and the CLI says so.
            unanswered = subprocess.run(
                [*M4_SIM, "call", "--control", info["control"], "nobody", "1", '"two"'],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            assert unanswered.returncode == 1
            assert "no reply from Linux to 'nobody'" in unanswered.stderr
            assert read_messages(fd, 1) == [[0, THREAD_ID_BASE, "nobody", [1, "two"]]]
        finally:
            os.close(fd)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    assert "stand-in for the M4 sketch" in process.stderr.read()


def test_cli_fails_clearly_on_missing_device(tmp_path: Path) -> None:
    missing = tmp_path / "x8h7_ui"
    done = subprocess.run(
        [*M4_SIM, "--device", str(missing)], check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert f"cannot open device {missing}" in done.stderr


def test_cli_client_reports_unreachable_control() -> None:
    done = subprocess.run(
        [*M4_SIM, "call", "--control", "tcp:127.0.0.1:1", "add", "1", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "cannot reach m4-sim control" in done.stderr


def test_cli_connect_unix_waits_for_the_vm_socket(tmp_path: Path) -> None:
    """As with QEMU's virtio serial socket: m4-sim may start first and must connect once it exists,
    and connect again after the VM side closes (a reboot)."""
    path = tmp_path / "m4.sock"
    process, _ = start_cli("--connect", f"unix:{path}", "--reconnect")

    async def vm() -> None:
        connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await connections.put((reader, writer))

        server = await asyncio.start_unix_server(accepted, str(path))
        try:
            for boot in (1, 2):
                reader, writer = await asyncio.wait_for(connections.get(), 20)
                writer.write(msgpack.packb([0, boot, "add", [boot, 1]]))
                unpacker = msgpack.Unpacker(raw=False)
                while not (found := list(unpacker)):
                    unpacker.feed(await asyncio.wait_for(reader.read(1024), 10))
                assert found == [[1, boot, None, boot + 1]]
                writer.close()
        finally:
            server.close()

    try:
        asyncio.run(vm())
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_control_on_unix_socket(tmp_path: Path) -> None:
    """The QEMU image tests drive m4-sim through a UNIX control socket."""
    process, info = start_cli("--pty", "--control", f"unix:{tmp_path / 'control.sock'}")
    try:
        assert info["control"] == f"unix:{tmp_path / 'control.sock'}"
        with ControlClient(parse_endpoint(info["control"])) as control:
            assert "tty" in control.request("bound")
            control.request("bind_echo", "mirror")
            assert "mirror" in control.request("bound")
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_cli_stats_show_a_halt_and_reset_ends_it() -> None:
    process, info = start_cli("--pty", "--control", "tcp:127.0.0.1:0")
    try:
        fd = os.open(info["pty"], os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, msgpack.packb([0, 1, "add", ["a", "b"]]))  # int add(int, int): type_error
            control = ControlClient(parse_endpoint(info["control"]))
            wait_for(lambda: control.request("stats")["halted"], "the virtual M4 to halt")
            stats = subprocess.run([*M4_SIM, "stats", "--control", info["control"]], capture_output=True,
                                   text=True, check=True, timeout=30)
            assert '"halted": true' in stats.stdout and "add() argument 1" in stats.stdout
            subprocess.run([*M4_SIM, "reset", "--control", info["control"]], check=True, timeout=30)
            os.write(fd, msgpack.packb([0, 2, "add", [1, 2]]))
            assert read_messages(fd, 1) == [[1, 2, None, 3]]  # nothing was answered while it was halted
        finally:
            os.close(fd)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
