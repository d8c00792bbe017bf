"""The real ``m4-proxy`` console script as a subprocess: readiness, end to end, start-up failures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import msgpack
import pytest
from proxy_harness import WAIT, free_port, m4_on_pty, register

from x8manager.rpc import M4Client, RpcService


def proxy_command() -> list[str]:
    script = Path(sys.executable).parent / "m4-proxy"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "x8manager.proxy.daemon"]  # what the console script runs


async def start_daemon(*args: str,
                       env: dict[str, str] | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """Start m4-proxy; return it with its stderr up to the ready line (or its exit).

    The router socket and the monitor port are off unless *args* turn them on: their defaults
    are fixed (/var/run/arduino-router.sock, 127.0.0.1:7500) and tests run side by side.
    """
    process = await asyncio.create_subprocess_exec(
        *proxy_command(), "--router-socket", "", "--monitor-listen", "", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    assert process.stderr is not None
    seen = ""
    async with asyncio.timeout(WAIT):
        while line := (await process.stderr.readline()).decode():
            seen += line
            if " ready: " in line:
                break
    return process, seen


def ready_ports(log: str) -> tuple[int, int]:
    line = next(line for line in log.splitlines() if " ready: " in line)
    words = line.replace(",", "").split()
    return int(words[words.index("register") + 2]), int(words[words.index("call") + 2])


async def stop_daemon(process: asyncio.subprocess.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    assert process.stderr is not None
    async with asyncio.timeout(WAIT):
        rest = (await process.stderr.read()).decode()
        return await process.wait(), rest


def test_daemon_end_to_end_with_sd_notify(tmp_path: Path) -> None:
    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        m4.bind("temperature", lambda: 21.5)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify"))
        notify.setblocking(False)
        process, log = await start_daemon(
            "--device", device, "--bind", "127.0.0.1", "--register-port", "0", "--call-port", "0",
            env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        try:
            assert process.returncode is None, log
            register_port, call_port = ready_ports(log)
            message = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(notify, 4096), WAIT)
            assert message.startswith(b"READY=1")
            # Linux → M4 with the sync client (one connection per call, as against the original).
            result = await asyncio.to_thread(M4Client("127.0.0.1", call_port).call, "temperature")
            assert result == 21.5
            # M4 → Linux through a registered service.
            service = RpcService(0, host="127.0.0.1")
            service.add("multiply", lambda a, b: a * b)
            serving = asyncio.create_task(service.serve(register_port=register_port))
            await asyncio.wait_for(service.wait_registered(), WAIT)
            reply = await m4.call_raw("multiply", 6, 7)
            assert msgpack.unpackb(reply.raw)[3] == 42
            service_port = service.port
            assert msgpack.unpackb(await register(register_port, msgpack.packb([0, 1, "list", []])))[3] \
                == {"multiply": service.port}
            serving.cancel()
            await service.close()
        finally:
            code, rest = await stop_daemon(process)
            notify.close()
            await m4.stop()
        assert code == 0, rest
        line = f"Registering service on port  {service_port}  with functions  map[multiply:{service_port}]"
        assert line in rest
    asyncio.run(scenario())


def _startup_failure(args: list[str]) -> tuple[int, str]:
    async def run() -> tuple[int, str]:
        process, log = await start_daemon(*args)
        async with asyncio.timeout(WAIT):
            code = await process.wait()
        return code, log
    return asyncio.run(run())


def test_missing_device_exits_non_zero(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent")
    code, log = _startup_failure(["--device", absent, "--register-port", "0", "--call-port", "0"])
    assert code != 0
    assert "cannot open M4 device" in log and "No such file or directory" in log


def test_regular_file_is_not_a_device(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    code, log = _startup_failure(["--device", str(plain), "--register-port", "0", "--call-port", "0"])
    assert code != 0 and "not a character device" in log


@pytest.mark.parametrize("which", ["--call-port", "--register-port"])
def test_port_in_use_exits_non_zero(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--register-port" if which == "--call-port" else "--call-port"
        code, log = _startup_failure(
            ["--device", "/dev/null", "--bind", "127.0.0.1", which, str(port), other, "0"])
    assert code != 0
    assert "cannot listen" in log and str(port) in log and "in use" in log


def test_bad_tcp_device_and_unreachable_tcp_link() -> None:
    code, log = _startup_failure(["--device", "tcp:nohostport", "--register-port", "0", "--call-port", "0"])
    assert code != 0 and "expected tcp:HOST:PORT" in log
    code, log = _startup_failure(["--device", f"tcp:127.0.0.1:{free_port()}", "--bind", "127.0.0.1",
                                  "--register-port", "0", "--call-port", "0"])
    assert code != 0 and "cannot connect to M4 link" in log


def test_daemon_router_front_and_monitor_flags(tmp_path: Path) -> None:
    async def scenario() -> str:
        m4, device = await m4_on_pty(tmp_path)
        router_socket = f"/tmp/x8-router-{os.getpid()}.sock"  # short: UNIX paths have 108 bytes
        args = ["--device", device, "--bind", "127.0.0.1", "--register-port", "0", "--call-port", "0",
                "--router-socket", router_socket, "--router-listen", "127.0.0.1:0",
                "--monitor-listen", "127.0.0.1:0"]
        process, log = await start_daemon(*args)
        try:
            assert process.returncode is None, log
            assert f"router front: {router_socket}, tcp 127.0.0.1:" in log
            assert "monitor port: 127.0.0.1:" in log
            reader, writer = await asyncio.open_unix_connection(router_socket)
            writer.write(msgpack.packb([0, 1, "$/version", []]))
            reply = msgpack.unpackb(await asyncio.wait_for(reader.read(4096), WAIT))
            assert reply[:3] == [1, 1, None] and reply[3].startswith("x8manager m4-proxy ")
            writer.close()
            # A second router on the same socket is a start-up error: exit 1, the first keeps it.
            second, second_log = await start_daemon(*args)
            assert await asyncio.wait_for(second.wait(), WAIT) == 1
            assert second.stderr is not None
            assert "another router" in second_log + (await second.stderr.read()).decode()
        finally:
            code, rest = await stop_daemon(process)
            await m4.stop()
        assert code == 0, rest
        return router_socket

    assert not os.path.exists(asyncio.run(scenario()))
