"""The console driver against a real bash on a pty (the same byte stream a serial console carries)."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from x8manager.qemu import CommandFailed, Console, ConsoleTimeout, Login


@pytest.fixture
def shell() -> Iterator[Console]:
    controller, terminal = pty.openpty()
    env = {"PATH": os.environ["PATH"], "HOME": "/", "TERM": "vt220", "PS1": "root@test:~# "}
    process = subprocess.Popen(["bash", "--norc", "--noprofile", "-i"], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=env, start_new_session=True)
    os.close(terminal)
    console = Console(controller, timeout=20)
    try:
        yield console
    finally:
        process.kill()
        process.wait()
        os.close(controller)


def test_login_finds_the_prompt_and_commands_return_output_and_exit_code(shell: Console) -> None:
    shell.login(Login(user="root"), timeout=20)
    assert shell.run("echo hello; echo world") == ("hello\nworld\n", 0)
    assert shell.run("exit_with() { return $1; }; exit_with 7")[1] == 7
    output, code = shell.run("echo to-stderr >&2; false")
    assert code == 1 and "to-stderr" in output


def test_output_that_looks_like_a_marker_or_has_no_newline_is_kept(shell: Console) -> None:
    shell.login(Login(), timeout=20)
    assert shell.run("printf 'no newline'") == ("no newline", 0)
    assert shell.run("echo 'E 0'; echo B") == ("E 0\nB\n", 0)


def test_check_raises_with_the_command_and_its_output(shell: Console) -> None:
    shell.login(Login(), timeout=20)
    with pytest.raises(CommandFailed) as failure:
        shell.check("echo why; exit_code() { return 3; }; exit_code")
    assert failure.value.exit_code == 3 and "why" in failure.value.output


def test_a_hanging_command_times_out_and_the_shell_stays_usable(shell: Console) -> None:
    shell.login(Login(), timeout=20)
    with pytest.raises(ConsoleTimeout, match="sleep 30"):
        shell.run("sleep 30", timeout=0.5)
    assert shell.run("echo alive")[0] == "alive\n"


def test_write_file_carries_binary_data_intact(shell: Console, tmp_path: Path) -> None:
    shell.login(Login(), timeout=20)
    data = bytes(range(256)) * 40  # several chunks
    target = tmp_path / "sub" / "blob.bin"
    shell.write_file(str(target), data, 0o600)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600
