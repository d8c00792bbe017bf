"""Process helpers for the apps' integration tests: children whose output lines are collected, and
waiting on conditions with a deadline (never fixed sleeps)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import stop_process, wait_for

BIN = Path(sys.executable).parent
DEADLINE = 20.0


def wait_until(predicate: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    wait_for(predicate, what, within)


@dataclass
class Process:
    """A child process whose stdout and stderr lines are collected by reader threads."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, argv: list[str], **kwargs: object) -> Process:
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 **kwargs)  # type: ignore[call-overload]
        process = cls(name, popen)
        for stream in (popen.stdout, popen.stderr):
            threading.Thread(target=process._collect, args=(stream,), daemon=True).start()
        return process

    def _collect(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            if self.popen.poll() is not None and not found:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}): {self.output}")
            found.extend(m for line in list(self.lines) if (m := regex.search(line)))
            return bool(found)

        wait_until(seen, f"{self.name} to print {pattern!r}; so far: {self.output}")
        return found[0]

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-30:])

    def stop(self) -> None:
        stop_process(self.popen, within=10)


def start_virtual_m4(processes: list[Process]) -> tuple[str, str]:
    """Start ``m4-sim`` on a pty with a control socket; return (pty path, control address).

    The process is appended to *processes* first, so the caller's clean-up stops it on any failure.
    """
    sim = Process.start("m4-sim", [str(BIN / "m4-sim"), "--pty", "--control", "tcp:127.0.0.1:0"])
    processes.append(sim)
    pty = sim.wait_for_line(r"^pty=(\S+)").group(1)
    control = sim.wait_for_line(r"^control=(\S+)").group(1)
    sim.wait_for_line(r"^ready$")
    return pty, control
