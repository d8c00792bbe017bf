"""The device as ``x8 doctor`` sees it: files under a root, processes, sockets, and commands.

Paths such as ``/proc/modules`` are read below ``root`` (``/`` on a device, a temporary tree in
tests). Commands (systemctl, journalctl, m4-flasher) go through one ``run`` function so a test
can hand in what they print on an X8.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Command", "Host", "Process", "run_command"]

COMMAND_TIMEOUT = 10.0
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Command:
    """What a command printed; ``returncode`` None when it could not be run at all."""

    returncode: int | None
    stdout: str
    stderr: str = ""


def run_command(argv: Sequence[str]) -> Command:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        return Command(None, "", f"{argv[0]}: not installed")
    except (OSError, subprocess.TimeoutExpired) as error:
        return Command(None, "", f"{argv[0]}: {error}")
    return Command(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Process:
    pid: int
    comm: str  # any process can set its own name: only the executable and owner tell who it is
    exe: str  # the executable's path (without " (deleted)"), "" when unreadable (another user's, not root)
    cmdline: tuple[str, ...]
    uid: int | None = None  # the real user id from /proc/PID/status, None when unreadable

    @property
    def description(self) -> str:
        command = " ".join(self.cmdline)[:80] or self.comm
        return f"pid {self.pid} ({self.comm}: {command})"


class Host:
    def __init__(self, root: Path, run: Callable[[Sequence[str]], Command] = run_command) -> None:
        self.root = root
        self.run = run

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def read(self, absolute: str) -> str | None:
        """The text of a file, None when it does not exist; other errors propagate (OSError)."""
        try:
            return self.path(absolute).read_text(errors="replace")
        except FileNotFoundError:
            return None

    # -- /proc ------------------------------------------------------------------------------

    def _pids(self) -> Iterator[int]:
        try:
            names = os.listdir(self.path("/proc"))
        except OSError:
            return
        for name in names:
            if name.isdigit():
                yield int(name)

    def processes(self) -> Iterator[Process]:
        for pid in self._pids():
            base = f"/proc/{pid}"
            try:
                comm = (self.read(f"{base}/comm") or "").strip()
                raw = self.path(f"{base}/cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            try:
                exe = os.readlink(self.path(f"{base}/exe")).removesuffix(" (deleted)")
            except OSError:
                exe = ""
            # NUL-terminated arguments; an empty one (--router-socket '') is kept.
            parts = raw.split(b"\0")
            if parts and not parts[-1]:
                parts.pop()
            cmdline = tuple(part.decode(errors="replace") for part in parts)
            yield Process(pid, comm, exe, cmdline, self._uid(base))

    def _uid(self, base: str) -> int | None:
        """The real uid on the ``Uid:`` line of /proc/PID/status (real, effective, saved, fs)."""
        try:
            status = self.read(f"{base}/status") or ""
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                fields = line.split()
                return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        return None

    def holders(self, device: str) -> list[Process]:
        """Processes with *device* open (their /proc/PID/fd links point at it)."""
        try:
            target = os.path.realpath(self.path(device))
        except OSError:
            return []
        wanted = {target, device}
        found = []
        for process in self.processes():
            fd_dir = self.path(f"/proc/{process.pid}/fd")
            try:
                links = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in links:
                try:
                    if os.readlink(fd_dir / fd) in wanted:
                        found.append(process)
                        break
                except OSError:
                    continue
        return found

    def modules(self) -> set[str] | None:
        text = self.read("/proc/modules")
        return None if text is None else {line.split()[0] for line in text.splitlines() if line.strip()}

    def listening_tcp_ports(self) -> set[int] | None:
        """Ports in LISTEN state from /proc/net/tcp and tcp6; None when neither is readable."""
        ports: set[int] = set()
        seen = False
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                text = self.read(table)
            except OSError:
                continue
            if text is None:
                continue
            seen = True
            for line in text.splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == TCP_LISTEN:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
        return ports if seen else None

    # -- systemd ----------------------------------------------------------------------------

    def unit(self, name: str) -> dict[str, str] | None:
        """``systemctl show`` properties of a unit; None when systemd cannot be asked."""
        done = self.run(["systemctl", "show", name, "--no-pager",
                         "-p", "LoadState,ActiveState,SubState,Result,ExecMainStatus,MainPID"])
        if done.returncode != 0:
            return None
        properties = dict(line.partition("=")[::2] for line in done.stdout.splitlines() if "=" in line)
        return properties or None

    def journal_errors(self, unit: str, since: str) -> list[str] | None:
        """Error-priority journal lines of *unit* since *since*; None when the journal cannot be read."""
        done = self.run(["journalctl", "-u", unit, "-p", "err", "--since", since, "-o", "short-iso",
                         "--no-pager", "-q"])
        if done.returncode != 0:
            return None
        return [line for line in done.stdout.splitlines() if line.strip()]
