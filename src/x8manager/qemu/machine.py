"""A QEMU virtual machine for tests: argument list, serial console and M4 link on UNIX sockets, QMP power.

Like labgrid's QEMUDriver, QEMU starts paused (``-S``) with every socket a server that does not
wait, so the driver connects the console before the first byte is printed and then sends
``cont``. Power is QMP: :meth:`Machine.hard_reset` is a cut of power and a press of reset in one
(``system_reset``, no shutdown of the guest).

The M4 link is a virtio serial port named ``m4`` (the guest's ``/dev/virtio-ports/m4``, standing
for ``/dev/x8h7_ui``); on the host it is the UNIX socket :attr:`Machine.m4_socket` that
``m4-sim --connect unix:PATH`` opens. A second port ``swd`` (``/dev/virtio-ports/swd``, socket
:attr:`Machine.swd_socket`) is the stand-in SWD wire: the SWD-probe stand-in in the guest sends
each flashed sketch down it and ``m4-sim --swd unix:PATH`` boots it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from x8manager.common.net import free_local_port

from .console import Console, ConsoleError, Login
from .qmp import QmpClient, QmpError

__all__ = ["Machine", "MachineError", "Profile", "SshAccess", "debian_profile", "free_local_port",
           "lmp_profile"]


class MachineError(RuntimeError):
    """QEMU failed to start, or exited; the message carries QEMU's stderr."""


@dataclass(frozen=True)
class SshAccess:
    """How to log in over SSH: *user*, the guest's *port*; the client key and the known host key when
    the image was built with them (else the tests authorize a key of their own through the console)."""

    user: str
    port: int = 22
    identity: Path | None = None
    known_hosts: Path | None = None
    host_key_alias: str | None = None


@dataclass(frozen=True)
class Profile:
    """What to boot and how to log in; the driver adds consoles, sockets and networking."""

    name: str
    qemu: str
    args: tuple[str, ...]
    login: Login
    boot_timeout: float
    command_timeout: float
    virtio_serial: str = "virtio-serial-pci"
    nic_model: str = "virtio-net-pci"
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    ssh: SshAccess | None = None


def debian_profile(image_dir: Path, *, memory_mib: int = 1536, cpus: int = 2) -> Profile:
    """The offline Debian test image made by ``scripts/build-test-image`` (amd64, TCG)."""
    manifest_path = image_dir / "image.json"
    if not manifest_path.exists():
        raise MachineError(
            f"no test image in {image_dir} (image.json missing): run scripts/build-test-image")
    manifest = json.loads(manifest_path.read_text())
    login = manifest.get("login", {})
    disk = image_dir / manifest.get("disk", "disk.ext4")
    args = (
        # /dev/kvm exists on CI machines but guests hang under it: always TCG.
        "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mib),
        "-kernel", str(image_dir / "vmlinuz"), "-initrd", str(image_dir / "initrd.img"),
        "-append", manifest.get("kernel_cmdline", "root=/dev/vda rw console=ttyS0,115200"),
        # snapshot=on: writes go to a temporary overlay, the built image never changes.
        "-drive", f"file={disk},format=raw,if=virtio,snapshot=on,cache=unsafe",
        "-device", "virtio-rng-pci",
    )
    ssh = manifest.get("ssh")
    return Profile(
        name="debian", qemu="qemu-system-x86_64", args=args,
        login=Login(user=login.get("user", "root"), password=login.get("password", "x8"),
                    become_root=bool(login.get("become_root", False))),
        boot_timeout=300.0, command_timeout=60.0,
        description=f"Debian test image {disk} (wheel {manifest.get('wheel')})",
        ssh=None if ssh is None else SshAccess(
            user=ssh["user"], port=int(ssh.get("port", 22)),
            identity=image_dir / ssh["identity"] if ssh.get("identity") else None,
            known_hosts=image_dir / ssh["known_hosts"] if ssh.get("known_hosts") else None,
            host_key_alias=ssh.get("host_key_alias")),
    )


def lmp_profile(wic: Path, bios: Path, *, memory_mib: int = 2048) -> Profile:
    """A kas-built LmP image for ``qemuarm64-secureboot``: flash.bin (ATF+OP-TEE+U-Boot) and the wic.

    secure=on cannot use KVM: aarch64 TCG, so boots take minutes. Root is locked on LmP: log in as
    ``fio`` and ``sudo -i``. QEMU 7.2 (Debian 12) spells ``acpi=off`` as ``-no-acpi``.
    """
    for path in (wic, bios):
        if not path.exists():
            raise MachineError(f"LmP image file {path} does not exist")
    args = (
        "-accel", "tcg", "-machine", "virt,secure=on", "-no-acpi", "-cpu", "cortex-a57", "-smp", "2",
        "-m", str(memory_mib), "-bios", str(bios),
        "-drive", f"id=disk0,file={wic},if=none,format=raw,snapshot=on",
        "-device", "virtio-blk-device,drive=disk0",
        "-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0",
    )
    return Profile(
        name="lmp", qemu="qemu-system-aarch64", args=args,
        login=Login(user="fio", password="fio", become_root=True),
        boot_timeout=900.0, command_timeout=180.0,
        virtio_serial="virtio-serial-device", nic_model="virtio-net-device",
        description=f"LmP qemuarm64-secureboot {wic} + {bios}",
        ssh=SshAccess(user="fio"),
    )



def _wait_for(condition: str, check: object, timeout: float, process: subprocess.Popen[bytes],
              stderr_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not callable(check) or not check():
        if process.poll() is not None:
            raise MachineError(f"QEMU exited with code {process.returncode} before {condition}:\n"
                               f"{stderr_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise MachineError(f"QEMU did not reach '{condition}' within {timeout:.0f}s")
        time.sleep(0.05)


class Machine:
    """One running QEMU; use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, profile: Profile, *, workdir: Path | None = None,
                 host_forwards: dict[int, int] | None = None, console_log: TextIO | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        if any(arg == "-append" for arg in extra_args):
            raise MachineError(
                "extra_args must not contain -append: the profile owns the kernel command line")
        self.profile = profile
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="x8-qemu-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host_forwards = dict(host_forwards or {})
        self.console_log = console_log
        self.extra_args = extra_args
        self.console_socket = self.workdir / "console.sock"
        self.qmp_socket = self.workdir / "qmp.sock"
        self.m4_socket = self.workdir / "m4.sock"
        self.swd_socket = self.workdir / "swd.sock"
        self.stderr_path = self.workdir / "qemu.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: QmpClient | None = None
        self._console_sock: socket.socket | None = None
        self.console: Console | None = None
        self.boots = 0

    def argv(self) -> list[str]:
        """QEMU's argument list (never a shell string)."""
        nic = f"user,model={self.profile.nic_model}"
        for host_port, guest_port in sorted(self.host_forwards.items()):
            nic += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
        return [
            self.profile.qemu, *self.profile.args,
            "-S", "-display", "none", "-monitor", "none", "-nodefaults", "-no-user-config",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-chardev", f"socket,id=console,path={self.console_socket},server=on,wait=off",
            "-serial", "chardev:console",
            "-device", self.profile.virtio_serial,
            "-chardev", f"socket,id=m4,path={self.m4_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=m4,name=m4",
            "-chardev", f"socket,id=swd,path={self.swd_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=swd,name=swd",
            "-nic", nic,
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start QEMU paused, connect QMP and the console, then let the guest run."""
        if shutil.which(self.profile.qemu) is None:
            raise MachineError(f"{self.profile.qemu} not found: install it (Debian: "
                               f"{'qemu-system-x86' if 'x86' in self.profile.qemu else 'qemu-system-arm'})")
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                            stdout=stderr, stderr=stderr)
        process = self.process
        _wait_for("QMP socket", self.qmp_socket.exists, 30, process, self.stderr_path)
        try:
            self.qmp = QmpClient(str(self.qmp_socket))
        except QmpError as exc:
            self.stop()
            raise MachineError(f"QEMU started but QMP failed: {exc}") from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.console_socket))
        self._console_sock = sock
        self.console = Console(sock.fileno(), timeout=self.profile.command_timeout,
                               logfile=self.console_log)
        self.qmp.execute("cont")

    def wait_ready(self) -> float:
        """Log in and wait until systemd says boot is done; return seconds taken for this call.

        ``systemctl is-system-running --wait`` answers ``running`` or ``degraded`` (a unit failed);
        both mean boot is over; which one it was is for the tests to judge.
        """
        started = time.monotonic()
        console = self.require_console()
        console.login(self.profile.login, timeout=self.profile.boot_timeout)
        output, _ = console.run("systemctl is-system-running --wait", timeout=self.profile.boot_timeout)
        state = output.strip().splitlines()[-1] if output.strip() else ""
        if state not in ("running", "degraded"):
            raise ConsoleError(f"systemd did not finish booting: is-system-running says {state!r}")
        self.boots += 1
        return time.monotonic() - started

    def host_port(self, guest_port: int) -> int | None:
        """The port on 127.0.0.1 forwarded to *guest_port*, if any."""
        return next((host for host, guest in self.host_forwards.items() if guest == guest_port), None)

    def console_socket_fd(self) -> int:
        """The serial console's socket, for bridging it to a terminal (bypassing the driver)."""
        if self._console_sock is None:
            raise MachineError("machine not started")
        return self._console_sock.fileno()

    def require_console(self) -> Console:
        if self.console is None:
            raise MachineError("machine not started")
        return self.console

    # --- power (QMP) ----------------------------------------------------------------------
    def _qmp(self) -> QmpClient:
        if self.qmp is None:
            raise MachineError("machine not started")
        return self.qmp

    def pause(self) -> None:
        self._qmp().execute("stop")

    def resume(self) -> None:
        self._qmp().execute("cont")

    def hard_reset(self) -> None:
        """Reset without warning the guest (a power cut); the disk keeps what reached it."""
        self._qmp().execute("system_reset")
        self.require_console().logged_in = False

    def journal(self, lines: int = 3000) -> str:
        """The guest's journal of this boot (for failure reports); never raises."""
        try:
            console = self.require_console()
            if not console.logged_in:
                return "(journal unavailable: no shell on the console)"
            output, _ = console.run(f"journalctl -b --no-pager -o short-monotonic | tail -n {lines}",
                                    timeout=120)
            return output
        except Exception as exc:
            return f"(journal unavailable: {exc})"

    def stop(self) -> None:
        """Quit QEMU (QMP quit, then kill) and remove the sockets."""
        if self.qmp is not None:
            with contextlib.suppress(QmpError):  # QEMU may be gone already
                self.qmp.execute("quit")
            self.qmp.close()
            self.qmp = None
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._console_sock is not None:
            self._console_sock.close()
            self._console_sock = None
        self.console = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

