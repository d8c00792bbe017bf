"""QMP power control against a real QEMU (no guest: ``-machine none``), and the machine's argv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import wait_for
from x8manager.qemu import Login, Machine, Profile, QmpClient, QmpError


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
def test_qmp_pauses_resumes_and_quits_a_real_qemu(tmp_path: Path) -> None:
    socket_path = tmp_path / "qmp.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-S", "-machine", "none", "-display", "none",
                             "-qmp", f"unix:{socket_path},server=on,wait=off"])
    try:
        wait_for(lambda: socket_path.exists() or qemu.poll() is not None, "QEMU to open its QMP socket")
        assert qemu.poll() is None, f"QEMU exited with {qemu.returncode}"
        qmp = QmpClient(str(socket_path))
        assert qmp.execute("query-status")["running"] is False
        qmp.execute("cont")
        assert qmp.execute("query-status")["running"] is True
        with pytest.raises(QmpError, match="no-such-command"):
            qmp.execute("no-such-command")
        qmp.execute("quit")
        assert qemu.wait(timeout=30) == 0
        qmp.close()
    finally:
        qemu.kill()
        qemu.wait()


def test_argv_is_a_list_with_local_only_forwards_and_a_paused_start(tmp_path: Path) -> None:
    profile = Profile(name="t", qemu="qemu-system-x86_64", args=("-m", "256"), login=Login(),
                      boot_timeout=1, command_timeout=1)
    machine = Machine(profile, workdir=tmp_path, host_forwards={15001: 5001})
    argv = machine.argv()
    assert argv[:3] == ["qemu-system-x86_64", "-m", "256"]
    assert "-S" in argv
    assert "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:15001-:5001" in argv
    assert "virtserialport,chardev=m4,name=m4" in argv
    assert f"socket,id=m4,path={tmp_path / 'm4.sock'},server=on,wait=off" in argv


def test_extra_args_may_not_replace_the_kernel_command_line(tmp_path: Path) -> None:
    profile = Profile(name="t", qemu="qemu-system-x86_64", args=(), login=Login(), boot_timeout=1,
                      command_timeout=1)
    with pytest.raises(Exception, match="-append"):
        Machine(profile, workdir=tmp_path, extra_args=("-append", "init=/bin/sh"))
