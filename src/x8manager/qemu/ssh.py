"""SSH into the guest as its login user, through the machine's host forward of the guest's SSH port.

The Debian test image carries a client key and its host key (made by ``scripts/build-test-image``,
kept in ``out/image/ssh``); for an image without them (LmP) :meth:`GuestSsh.authorize` puts a key of
this session into the user's ``authorized_keys`` and reads the host key through the console. Either
way :attr:`GuestSsh.config` is an ``ssh_config`` for ``ssh -F`` that pins that host key, so every
client (the tests' own ``ssh``, the ``x8`` host CLI) checks the host it talks to.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from .console import Console
from .machine import Machine, MachineError, SshAccess
from .virtual_x8 import poll

__all__ = ["GuestSsh"]

SESSION_ALIAS = "x8-guest"


class GuestSsh:
    def __init__(self, machine: Machine, access: SshAccess, workdir: Path) -> None:
        port = machine.host_port(access.port)
        if port is None:
            raise MachineError(f"the machine forwards no host port to the guest's SSH port {access.port}")
        self.port = port
        self.user = access.user
        self.access = access
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.identity = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.config = workdir / "ssh_config"
        self.alias = access.host_key_alias or SESSION_ALIAS
        if access.identity is not None and access.known_hosts is not None:
            # A copy owned by whoever runs the tests, mode 0600, or ssh refuses the key.
            shutil.copyfile(access.identity, self.identity)
            self.identity.chmod(0o600)
            shutil.copyfile(access.known_hosts, self.known_hosts)
        self._write_config()

    @property
    def device(self) -> str:
        """The address of the guest for ``x8 --device``."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.config.write_text(
            "Host *\n"
            f"  IdentityFile {self.identity}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            f"  HostKeyAlias {self.alias}\n"
            "  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n")

    def authorize(self, console: Console) -> None:
        """For an image without the build's keys: authorize a new key, pin the guest's host key."""
        if self.identity.exists():
            return
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "x8 image tests",
                        "-f", str(self.identity)], check=True)
        public = self.identity.with_suffix(".pub").read_text().strip()
        home = console.check(f"getent passwd {shlex.quote(self.user)} | cut -d: -f6").strip()
        dot_ssh = shlex.quote(f"{home}/.ssh")
        console.check(f"mkdir -p {dot_ssh} && echo {shlex.quote(public)} >> {dot_ssh}/authorized_keys && "
                      f"chown -R {shlex.quote(self.user)}: {dot_ssh} && chmod 700 {dot_ssh}")
        host_key = console.check("cat /etc/ssh/ssh_host_ed25519_key.pub").split()
        self.known_hosts.write_text(f"{self.alias} {host_key[0]} {host_key[1]}\n")

    def argv(self, command: str) -> list[str]:
        return ["ssh", "-F", str(self.config), "-p", str(self.port), "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", f"{self.user}@127.0.0.1", "--", command]

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until a command runs over SSH (sshd may still be starting after boot)."""

        def answered() -> bool | None:
            result = self.run("true", timeout=30)
            if result.returncode != 0:
                raise MachineError(f"ssh exited {result.returncode}: {result.stderr.strip()}")
            return True

        poll(f"SSH as {self.user} on 127.0.0.1:{self.port}", answered, timeout, interval=1.0)
