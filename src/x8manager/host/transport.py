"""How the host reaches the device: one class per transport, both driving the system's own clients.

:class:`SshTransport` runs ``ssh``/``scp`` and :class:`AdbTransport` runs ``adb shell/push/forward``,
always with argument lists (never a local shell). A command for the device is an argument list too,
quoted once with :func:`shlex.join` for the device's ``sh``. A transport that fails (host unreachable,
connection lost, no adb, no device) raises :class:`TransportError` with the client's own message;
SSH runs with BatchMode, ConnectTimeout and ServerAliveInterval, so a lost connection ends a command
within seconds instead of hanging it.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

from x8manager.common.net import free_local_port

from .address import AdbAddress, DeviceAddress, SshAddress

__all__ = ["AdbTransport", "SshTransport", "Transport", "TransportError", "open_transport"]

CONNECT_TIMEOUT = 10  # seconds for ssh to reach the device
ALIVE_INTERVAL = 5  # seconds between SSH keepalives; ALIVE_COUNT missed ones end the connection
ALIVE_COUNT = 3
SSH_FAILED = 255  # ssh's own exit code for "could not connect / connection lost"
FORWARD_READY_TIMEOUT = 20.0


class TransportError(RuntimeError):
    """The transport itself failed: the device was not reached, or the connection went away."""


def _last_lines(data: bytes, count: int = 3) -> str:
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no message"


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait until 127.0.0.1:*port* accepts connections, or fail when *process* (the tunnel) exits."""
    deadline = time.monotonic() + FORWARD_READY_TIMEOUT
    while True:
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr is not None else b""
            raise TransportError(f"{what} failed: {_last_lines(stderr)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TransportError(f"{what}: not listening within {FORWARD_READY_TIMEOUT:.0f}s")
        time.sleep(0.1)


class Transport(ABC):
    """Runs commands on the device, copies files to it, and forwards its TCP ports to this host."""

    address: DeviceAddress

    @abstractmethod
    def command_argv(self, remote: Sequence[str]) -> list[str]:
        """The local argument list that runs the argument list *remote* on the device."""

    @abstractmethod
    def push_file_argv(self, local: Path, remote: str) -> list[str]:
        """The local argument list that copies the file *local* to the path *remote* on the device."""

    @abstractmethod
    def _transport_failed(self, returncode: int, stderr: bytes) -> bool:
        """Whether the client failed itself, rather than passing on the remote command's exit code."""

    @abstractmethod
    def forward(self, remote_port: int) -> contextlib.AbstractContextManager[int]:
        """Forward a local port to 127.0.0.1:*remote_port* on the device; the context yields the port."""

    @abstractmethod
    def push_tree(self, local_dir: Path, remote_dir: str, timeout: float = 300) -> None:
        """Replace the directory *remote_dir* on the device with a copy of *local_dir*."""

    def _exec(self, argv: list[str], *, input: bytes | None = None, timeout: float | None = None,
              capture: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                argv, input=input, timeout=timeout, check=False,
                stdin=None if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
        except FileNotFoundError as error:
            raise TransportError(self.missing_client_message(argv[0])) from error
        except subprocess.TimeoutExpired as error:
            raise TransportError(f"{self.address}: no answer within {timeout:.0f}s from: "
                                 f"{shlex.join(argv)}") from error
        if self._transport_failed(result.returncode, result.stderr or b""):
            detail = _last_lines(result.stderr) if capture else "see the message above"
            raise TransportError(f"{self.address}: {detail}")
        return result

    def missing_client_message(self, program: str) -> str:
        return f"{program} not found on this host: install it"

    def run(self, remote: Sequence[str], *, input: bytes | None = None,
            timeout: float | None = 120) -> subprocess.CompletedProcess[bytes]:
        """Run *remote* on the device, capturing its output; its exit code is the result's."""
        return self._exec(self.command_argv(remote), input=input, timeout=timeout)

    def run_attached(self, remote: Sequence[str], timeout: float | None = None) -> int:
        """Run *remote* with its output going straight to this terminal; return its exit code."""
        return self._exec(self.command_argv(remote), timeout=timeout, capture=False).returncode

    def push_file(self, local: Path, remote: str, timeout: float = 300) -> None:
        result = self._exec(self.push_file_argv(local, remote), timeout=timeout)
        if result.returncode != 0:
            raise TransportError(f"{self.address}: copying {local} to {remote} failed: "
                                 f"{_last_lines(result.stderr + result.stdout)}")


class SshTransport(Transport):
    """The system's OpenSSH client; ``ssh_config`` (``-F``) for keys and host aliases if given."""

    address: SshAddress

    def __init__(self, address: SshAddress, ssh_config: Path | None = None,
                 connect_timeout: int = CONNECT_TIMEOUT) -> None:
        self.address = address
        self.ssh_config = ssh_config
        self.connect_timeout = connect_timeout

    def options(self) -> list[str]:
        """Options shared by ssh and scp: no prompts, bounded connect, keepalives."""
        config = ["-F", str(self.ssh_config)] if self.ssh_config is not None else []
        return [*config, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}"]

    def _port(self, flag: str) -> list[str]:
        return [flag, str(self.address.port)] if self.address.port is not None else []

    @property
    def destination(self) -> str:
        return f"{self.address.user}@{self.address.host}"

    def command_argv(self, remote: Sequence[str]) -> list[str]:
        return ["ssh", *self.options(), *self._port("-p"), "-T", self.destination, "--", shlex.join(remote)]

    def push_file_argv(self, local: Path, remote: str) -> list[str]:
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return ["scp", *self.options(), *self._port("-P"), "-q", str(local),
                f"{self.address.user}@{host}:{remote}"]

    def forward_argv(self, local_port: int, remote_port: int) -> list[str]:
        return ["ssh", *self.options(), *self._port("-p"), "-N", "-o", "ExitOnForwardFailure=yes",
                "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}", self.destination]

    def _transport_failed(self, returncode: int, stderr: bytes) -> bool:
        return returncode == SSH_FAILED

    def missing_client_message(self, program: str) -> str:
        return f"{program} not found on this host: install OpenSSH's client (Debian: openssh-client)"

    @contextlib.contextmanager
    def forward(self, remote_port: int) -> Iterator[int]:
        local_port = free_local_port()
        argv = self.forward_argv(local_port, remote_port)
        try:
            tunnel = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        except FileNotFoundError as error:
            raise TransportError(self.missing_client_message("ssh")) from error
        try:
            _wait_listening(local_port, tunnel, f"SSH tunnel to {self.address} port {remote_port}")
            yield local_port
        finally:
            if tunnel.poll() is None:
                tunnel.terminate()
                try:
                    tunnel.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    tunnel.kill()
                    tunnel.wait()
            if tunnel.stderr is not None:
                tunnel.stderr.close()

    def push_tree(self, local_dir: Path, remote_dir: str, timeout: float = 300) -> None:
        """A tar stream into one ssh command that unpacks beside *remote_dir*, then swaps it in."""
        archive = subprocess.run(["tar", "-C", str(local_dir), "-cf", "-", "."], capture_output=True,
                                 check=False)
        if archive.returncode != 0:
            raise TransportError(f"tar of {local_dir} failed: {_last_lines(archive.stderr)}")
        result = self.run(["sh", "-c", UNPACK_SCRIPT, "x8-unpack", remote_dir], input=archive.stdout,
                          timeout=timeout)
        if result.returncode != 0:
            raise TransportError(f"{self.address}: unpacking into {remote_dir} failed: "
                                 f"{_last_lines(result.stderr + result.stdout)}")


# Unpack stdin into DIR.x8-new, then replace DIR with it, so a broken copy never replaces a good app.
UNPACK_SCRIPT = ('set -e; dir=$1; rm -rf "$dir.x8-new"; mkdir -p "$dir.x8-new"; tar -xf - -C "$dir.x8-new"; '
                 'rm -rf "$dir"; mv "$dir.x8-new" "$dir"')


class AdbTransport(Transport):
    """The Android Debug Bridge client (``adb``); the X8's adbd runs as the LmP user (fio)."""

    address: AdbAddress

    def __init__(self, address: AdbAddress) -> None:
        self.address = address

    def base(self) -> list[str]:
        return ["adb", *(["-s", self.address.serial] if self.address.serial else [])]

    def command_argv(self, remote: Sequence[str]) -> list[str]:
        return [*self.base(), "shell", shlex.join(remote)]

    def push_file_argv(self, local: Path, remote: str) -> list[str]:
        return [*self.base(), "push", str(local), remote]

    def forward_argv(self, remote_port: int) -> list[str]:
        # tcp:0: adb picks a free local port and prints it.
        return [*self.base(), "forward", "tcp:0", f"tcp:{remote_port}"]

    def remove_forward_argv(self, local_port: int) -> list[str]:
        return [*self.base(), "forward", "--remove", f"tcp:{local_port}"]

    def _transport_failed(self, returncode: int, stderr: bytes) -> bool:
        # adb's own failures ("error: no devices/emulators found", "adb: error: ...") come on stderr
        # with exit code 1 and nothing from the device.
        text = stderr.decode(errors="replace").lstrip()
        return returncode != 0 and (text.startswith("error:") or text.startswith("adb: error:"))

    def missing_client_message(self, program: str) -> str:
        return f"{program} not found on this host: install the adb client (Debian: apt install adb)"

    @contextlib.contextmanager
    def forward(self, remote_port: int) -> Iterator[int]:
        result = self._exec(self.forward_argv(remote_port), timeout=30)
        text = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0 or not text.isdigit():
            raise TransportError(f"{self.address}: adb forward to port {remote_port} failed: "
                                 f"{_last_lines(result.stderr + result.stdout)}")
        local_port = int(text)
        try:
            yield local_port
        finally:
            with contextlib.suppress(TransportError):
                self._exec(self.remove_forward_argv(local_port), timeout=30)

    def push_tree(self, local_dir: Path, remote_dir: str, timeout: float = 300) -> None:
        staging = f"{remote_dir}.x8-new"
        self.run(["rm", "-rf", staging], timeout=60)
        # adb push DIR REMOTE makes REMOTE a copy of DIR when REMOTE does not exist yet.
        self.push_file(local_dir, staging, timeout=timeout)
        swap = 'rm -rf "$1" && mv "$1.x8-new" "$1"'
        result = self.run(["sh", "-c", swap, "x8-swap", remote_dir], timeout=60)
        if result.returncode != 0:
            raise TransportError(f"{self.address}: replacing {remote_dir} failed: "
                                 f"{_last_lines(result.stderr + result.stdout)}")


def open_transport(address: DeviceAddress, ssh_config: Path | None = None) -> Transport:
    if isinstance(address, AdbAddress):
        return AdbTransport(address)
    return SshTransport(address, ssh_config)
