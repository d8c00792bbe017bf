"""A shell on a serial console, driven with pexpect (labgrid's ShellDriver idea).

The console is any file descriptor (QEMU's serial UNIX socket, a pty, a real UART). Login copes
with autologin, a login prompt and a password prompt. After login the driver turns echo, the
prompt and bracketed paste off, so the console carries nothing but command output. Every command is
wrapped in a random marker written split in two (``'ab''cd'``), so neither an echo nor a kernel
message can fake the start or the end of the output, and the exit code travels with the end marker.
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
import time
from dataclasses import dataclass
from typing import Any, TextIO

import pexpect
import pexpect.fdpexpect

__all__ = ["CommandFailed", "Console", "ConsoleError", "ConsoleTimeout", "Login"]

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>])")
_PROMPT = r"[#$] $"
_LOGIN = r"login: $"
_PASSWORD = r"[Pp]assword(?: for [^:]+)?: $"


class ConsoleError(RuntimeError):
    """The console failed: login refused, the machine went away, or the shell is out of step."""


class ConsoleTimeout(ConsoleError):
    """The console did not show what was expected in time; the message has the last output."""


class CommandFailed(ConsoleError):
    """A command run with :meth:`Console.check` exited non-zero."""

    def __init__(self, command: str, exit_code: int, output: str) -> None:
        super().__init__(f"command exited {exit_code}: {command}\n--- output ---\n{output.rstrip()}")
        self.command = command
        self.exit_code = exit_code
        self.output = output


@dataclass(frozen=True)
class Login:
    """How to get a root shell: *user*/*password*, then ``sudo -i`` when *become_root*."""

    user: str = "root"
    password: str | None = None
    become_root: bool = False


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class Console:
    def __init__(self, fd: int, *, timeout: float = 30.0, logfile: TextIO | None = None) -> None:
        self.timeout = timeout
        self.spawn = pexpect.fdpexpect.fdspawn(
            fd, timeout=timeout, encoding="utf-8", codec_errors="replace", maxread=65536
        )
        self.spawn.logfile_read = logfile
        self.logged_in = False

    def _tail(self) -> str:
        before = self.spawn.before if isinstance(self.spawn.before, str) else ""
        return strip_ansi(before)[-2000:]

    def expect(self, patterns: list[str] | str, timeout: float) -> int:
        wanted: list[Any] = [patterns] if isinstance(patterns, str) else list(patterns)
        try:
            return int(self.spawn.expect(wanted, timeout=timeout))
        except pexpect.TIMEOUT as exc:
            raise ConsoleTimeout(f"no {patterns!r} on the console within {timeout:.0f}s; "
                                 f"last output:\n{self._tail()}") from exc
        except pexpect.EOF as exc:
            raise ConsoleError(f"console closed (machine gone?) while waiting for {patterns!r}; "
                               f"last output:\n{self._tail()}") from exc

    def send(self, text: str) -> None:
        self.spawn.send(text)

    def login(self, login: Login, timeout: float) -> None:
        """Wait for a shell (autologin) or a login prompt, log in, and prepare the shell for commands."""
        deadline = time.monotonic() + timeout
        user_sent = password_sent = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConsoleTimeout(f"no shell on the console within {timeout:.0f}s; last output:\n"
                                     f"{self._tail()}")
            try:
                index = self.spawn.expect([_PROMPT, _LOGIN, _PASSWORD], timeout=min(remaining, 10))
            except pexpect.TIMEOUT:
                # An idle console may be sitting at a prompt printed before we connected.
                self.send("\n")
                continue
            except pexpect.EOF as exc:
                raise ConsoleError(f"console closed during login; last output:\n{self._tail()}") from exc
            if index == 0:
                break
            if index == 1:
                # agetty --autologin prints "login: root (automatic login)": do not type over it.
                try:
                    self.spawn.expect(r"automatic login", timeout=1.0)
                    continue
                except pexpect.TIMEOUT:
                    pass
                if user_sent and password_sent:
                    raise ConsoleError(f"login as {login.user!r} refused; last output:\n{self._tail()}")
                self.send(login.user + "\n")
                user_sent = True
            else:
                self.send((login.password or "") + "\n")
                password_sent = True
        if login.become_root:
            self.send("sudo -i\n")
            index = self.expect([_PASSWORD, r"# $"], timeout=30)
            if index == 0:
                self.send((login.password or "") + "\n")
                self.expect(r"# $", timeout=30)
        # One line, so it works whatever the prompt looks like; from here on only markers count.
        self.send("stty -echo columns 4096; export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat "
                  "SYSTEMD_COLORS=0 LC_ALL=C.UTF-8; bind 'set enable-bracketed-paste off' 2>/dev/null; "
                  "PS1= PS2=; unset PROMPT_COMMAND\n")
        self.logged_in = True
        self.run("dmesg -n 1", timeout=30)

    def run(self, command: str, timeout: float | None = None) -> tuple[str, int]:
        """Run *command* in the shell; return (output, exit code). Output has stderr too, no CRs."""
        marker = secrets.token_hex(6)
        split = f"'{marker[:6]}''{marker[6:]}'"
        self.send(f"echo {split}B\n{{ {command}\n}} </dev/null; __x8rc=$?; echo; echo {split}E $__x8rc\n")
        wait = self.timeout if timeout is None else timeout
        pattern = rf"{marker}B\r?\n(.*?)\r?\n{marker}E (\d+)\r?\n"
        try:
            self.expect(pattern, timeout=wait)
        except ConsoleTimeout as exc:
            # Interrupt what hangs so the next command finds a shell, and say which command it was.
            self._interrupt_and_resync()
            raise ConsoleTimeout(f"command did not finish within {wait:.0f}s: {command}\n{exc}") from exc
        match = self.spawn.match
        if not isinstance(match, re.Match):
            raise ConsoleError(f"console out of step after {command!r}: no marker match")
        output = strip_ansi(str(match.group(1))).replace("\r\n", "\n").replace("\r", "")
        return output, int(match.group(2))

    def _interrupt_and_resync(self, attempts: int = 3, wait: float = 10.0) -> None:
        """Ctrl-C what hangs, then wait until the shell echoes a fresh marker.

        A Ctrl-C can land while bash is still reading the wrapped command (it then drops the rest
        of the tty's input, or waits for a continuation line): only a marker that comes back shows
        the next command will be read from a clean prompt.
        """
        for _ in range(attempts):
            self.send("\x03")
            marker = secrets.token_hex(6)
            self.send(f"\necho '{marker[:6]}''{marker[6:]}'S\n")
            try:
                self.expect(rf"{marker}S\r?\n", timeout=wait)
            except ConsoleTimeout:
                continue
            return

    def check(self, command: str, timeout: float | None = None) -> str:
        """Run *command*; return its output, raise :class:`CommandFailed` if it exits non-zero."""
        output, code = self.run(command, timeout)
        if code != 0:
            raise CommandFailed(command, code, output)
        return output

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write *data* to *path* on the machine (base64 through the console, in line-sized chunks)."""
        encoded = base64.b64encode(data).decode()
        staging = shlex.quote(path + ".b64")
        self.check(f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0] or '/')} && : > {staging}")
        chunk = 2048  # well below the tty's 4095-character line limit
        for start in range(0, len(encoded), chunk):
            self.check(f"printf %s {encoded[start:start + chunk]} >> {staging}")
        target = shlex.quote(path)
        self.check(f"base64 -d {staging} > {target} && rm {staging} && chmod {mode:o} {target}")
