"""Command lines of both transports, and what happens when the transport itself fails.

adb: Debian ships the adb client but no adbd runs here, so adb is tested by its command lines and
its error handling (no client installed); the same steps run for real over SSH in tests/image.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from x8manager.common.net import free_local_port
from x8manager.host.address import AdbAddress, SshAddress
from x8manager.host.transport import AdbTransport, SshTransport, TransportError


def test_ssh_command_line_bounds_every_wait_and_quotes_the_remote_argv_once() -> None:
    ssh = SshTransport(SshAddress("x8.local", "fio", 2222), ssh_config=Path("/tmp/cfg"))
    argv = ssh.command_argv(["m4-flasher", "status", "--json", "it's"])
    assert argv[0] == "ssh"
    assert argv[1:3] == ["-F", "/tmp/cfg"]
    for option in ("BatchMode=yes", "ConnectTimeout=10", "ServerAliveInterval=5", "ServerAliveCountMax=3"):
        assert option in argv
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[-3:-1] == ["fio@x8.local", "--"]
    assert shlex.split(argv[-1]) == ["m4-flasher", "status", "--json", "it's"]


def test_scp_uses_capital_p_and_brackets_ipv6() -> None:
    scp = SshTransport(SshAddress("fe80::1", "fio", 2200)).push_file_argv(Path("a.elf"), "/tmp/x")
    assert scp[0] == "scp" and scp[scp.index("-P") + 1] == "2200"
    assert scp[-2:] == ["a.elf", "fio@[fe80::1]:/tmp/x"]
    assert "BatchMode=yes" in scp


def test_ssh_without_port_leaves_it_to_the_ssh_config() -> None:
    argv = SshTransport(SshAddress("x8")).command_argv(["true"])
    assert "-p" not in argv and "-F" not in argv


def test_ssh_tunnel_command_line() -> None:
    argv = SshTransport(SshAddress("x8", "fio", 22)).forward_argv(40000, 5001)
    assert "-N" in argv and "ExitOnForwardFailure=yes" in argv
    assert argv[argv.index("-L") + 1] == "127.0.0.1:40000:127.0.0.1:5001"


def test_adb_command_lines_with_and_without_serial() -> None:
    plain, serial = AdbTransport(AdbAddress()), AdbTransport(AdbAddress("ABC"))
    assert plain.command_argv(["ls", "a b"]) == ["adb", "shell", "ls 'a b'"]
    assert serial.command_argv(["true"]) == ["adb", "-s", "ABC", "shell", "true"]
    assert serial.push_file_argv(Path("s.elf"), "/tmp/arduino/x") == ["adb", "-s", "ABC", "push", "s.elf",
                                                                     "/tmp/arduino/x"]
    assert serial.forward_argv(5001) == ["adb", "-s", "ABC", "forward", "tcp:0", "tcp:5001"]
    assert serial.remove_forward_argv(41234) == ["adb", "-s", "ABC", "forward", "--remove", "tcp:41234"]


def test_adb_own_errors_are_transport_errors_remote_exit_codes_are_not() -> None:
    adb = AdbTransport(AdbAddress())
    assert adb._transport_failed(1, b"adb: error: failed to get feature set: no devices/emulators found\n")
    assert adb._transport_failed(1, b"error: device 'X' not found\n")
    assert not adb._transport_failed(1, b"ls: cannot access 'x': No such file or directory\n")
    assert not adb._transport_failed(0, b"")


def test_missing_adb_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TransportError, match=r"adb not found on this host: install the adb client"):
        AdbTransport(AdbAddress()).run(["true"])


def test_unreachable_ssh_host_fails_fast_with_ssh_s_message() -> None:
    closed = free_local_port()  # nothing listens there
    ssh = SshTransport(SshAddress("127.0.0.1", "fio", closed), connect_timeout=5)
    with pytest.raises(TransportError, match=r"ssh://fio@127.0.0.1:\d+: .*(refused|closed)"):
        ssh.run(["true"], timeout=30)


def _x8(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "x8manager.host.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env)


def test_cli_wrong_address_is_usage_error_without_traceback() -> None:
    result = _x8("--device", "x8.local", "status")
    assert result.returncode == 2
    assert "unknown device address 'x8.local'" in result.stderr and "Traceback" not in result.stderr


def test_cli_unreachable_host_exits_1_without_traceback() -> None:
    result = _x8("--device", f"ssh://fio@127.0.0.1:{free_local_port()}", "status")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("x8: ssh://fio@127.0.0.1:") and "Traceback" not in result.stderr


def test_cli_missing_adb_exits_1_without_traceback(tmp_path: Path) -> None:
    result = _x8("--device", "adb", "call", "add", "2", "3", env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "adb not found on this host" in result.stderr and "Traceback" not in result.stderr


def test_cli_corrupt_sketch_is_rejected_locally_with_the_flasher_reason(tmp_path: Path) -> None:
    sketch = tmp_path / "broken.elf"
    sketch.write_bytes(b"\x7fELF" + b"\0" * 20)
    # The device is never contacted: the flasher's own check refuses the file here.
    result = _x8("--device", f"ssh://fio@127.0.0.1:{free_local_port()}", "upload", str(sketch))
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("rejected: ") and "not sent" in result.stdout
