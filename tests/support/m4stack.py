"""The virtual M4 (``m4-sim`` on a pty) behind the real ``m4-proxy``, as processes, for any test.

``M4Stack`` starts both, learns the pty and the proxy's ports from their output, and stops them.
The sketch's procedures are ``m4-sim --bind-echo NAME`` ones (they return their arguments).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support import stop_process

__all__ = ["M4Stack"]

BIN = Path(sys.executable).parent
DEADLINE = 20.0


class _Child:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        regex = re.compile(pattern)
        end = time.monotonic() + DEADLINE
        while True:
            for line in list(self.lines):
                if found := regex.search(line):
                    return found
            if self.popen.poll() is not None or time.monotonic() > end:
                tail = "\n".join(self.lines[-20:])
                raise AssertionError(
                    f"{self.name} never printed {pattern!r} (exit {self.popen.poll()}):\n{tail}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        stop_process(self.popen, within=10)


class M4Stack:
    """m4-sim + m4-proxy on 127.0.0.1; ``call_port`` is the proxy's port 5001 stand-in."""

    def __init__(self, *, bind: tuple[str, ...] = (), swd: Path | None = None) -> None:
        """*swd*: the virtual M4 also listens for the stand-in SWD wire at this UNIX socket, so a
        flash through the SWD-probe stand-in (``OPENOCD_STANDIN_SWD=unix:PATH``) boots the sketch."""
        self.children: list[_Child] = []
        try:
            extra = [arg for name in bind for arg in ("--bind-echo", name)]
            if swd is not None:
                extra += ["--swd-listen", f"unix:{swd}"]
            sim = _Child("m4-sim", [str(BIN / "m4-sim"), "--pty", "--no-demo", *extra])
            self.children.append(sim)
            pty = sim.wait_for_line(r"^pty=(\S+)").group(1)
            sim.wait_for_line(r"^ready$")
            proxy = _Child(
                "m4-proxy",
                [
                    str(BIN / "m4-proxy"),
                    "--device",
                    pty,
                    "--bind",
                    "127.0.0.1",
                    "--register-port",
                    "0",
                    "--call-port",
                    "0",
                ],
            )
            self.children.append(proxy)
            ready = proxy.wait_for_line(r" ready: .*")
            words = ready.group(0).replace(",", "").split()
            self.register_port = int(words[words.index("register") + 2])
            self.call_port = int(words[words.index("call") + 2])
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
