"""Run the real ``m4-flasher daemon`` process against the SWD-probe stand-in (shared by these tests)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
ELF_DIR = ROOT / "tests" / "fixtures" / "elf"
STANDIN = ROOT / "tests" / "standins" / "openocd-standin"
GOOD = (ELF_DIR / "sketch-ok.elf").read_bytes()


def variant(number: int) -> bytes:
    """A valid sketch with a distinct sha256: trailing bytes after the ELF data change nothing."""
    return GOOD + f"\nvariant {number}\n".encode()


class Rig:
    """Paths, the stand-in's state, and the daemon/CLI processes of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.upload = root / "tmp" / "arduino" / "m4-user-sketch.elf"
        self.state_dir = root / "state"
        self.probe = root / "probe"
        self.lock = root / "lock" / "x8-h7-swd.lock"
        self.socket = root / "request.sock"  # the daemon's request API (never the system's /run path)
        self.daemon: subprocess.Popen[str] | None = None
        self.daemon_log = root / "daemon.log"  # a file, not a pipe: a chatty daemon never blocks on it
        self.env = dict(os.environ)
        self.env.update(
            OPENOCD_STANDIN_DIR=str(self.probe),
            OPENOCD_STANDIN_MODE_FILE=str(self.probe / "mode"),
            OPENOCD_STANDIN_CONNECT_SECONDS="0.05",
            OPENOCD_STANDIN_PROGRAM_SECONDS="0.05",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("OPENOCD_STANDIN_MODE", None)
        self.env.pop("JOURNAL_STREAM", None)
        self.probe.mkdir(parents=True)
        self._notify: socket.socket | None = None

    def common_args(self) -> list[str]:
        return ["--state-dir", str(self.state_dir), "--lock", str(self.lock), "--socket", str(self.socket)]

    def set_mode(self, mode: str) -> None:
        (self.probe / "mode").write_text(mode + "\n")

    def start(self, *extra: str, wait_ready: bool = True, nofile: int | None = None) -> subprocess.Popen[str]:
        """Start the daemon; *nofile*: its descriptor limit (the unit's ``LimitNOFILE=``)."""
        notify_path = self.root / f"notify-{time.monotonic_ns()}.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        env = dict(self.env, NOTIFY_SOCKET=str(notify_path))
        argv = [
            sys.executable,
            "-m",
            "x8manager.flasher.cli",
            "daemon",
            "--watch",
            str(self.upload),
            "--openocd",
            str(STANDIN),
            "--retry-delay",
            "0",
            "--timeout",
            "20",
            *self.common_args(),
            *extra,
        ]
        with open(self.daemon_log, "a") as log:
            log.write(f"--- m4-flasher daemon {' '.join(extra)}\n")
            log.flush()
            limit = (
                None
                if nofile is None
                else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
            )
            # preexec_fn only sets a limit (no locks taken): safe with the few threads a test may run.
            self.daemon = subprocess.Popen(argv, env=env, stderr=log, text=True, preexec_fn=limit)  # noqa: PLW1509
        if wait_ready:
            self.wait_notify("READY=1")
        return self.daemon

    def wait_notify(self, text: str, limit: float = 30) -> str:
        """The next sd_notify datagram containing *text* (READY=1, STOPPING=1, STATUS=...)."""
        assert self._notify is not None
        self._notify.settimeout(limit)
        while True:
            message = self._notify.recv(4096).decode()
            if text in message:
                return message

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        try:
            code = self.daemon.wait(timeout=30)
        finally:
            if self._notify is not None:
                self._notify.close()
        self.daemon = None
        return code, self.log_of_last_start()

    def log_of_last_start(self) -> str:
        """What the daemon last started wrote to stderr (its log lines when not under systemd)."""
        text = self.daemon_log.read_text() if self.daemon_log.exists() else ""
        return text[text.rfind("--- m4-flasher daemon") :].partition("\n")[2]

    def _cli_argv(self, args: tuple[str, ...]) -> list[str]:
        command, *rest = args
        return [sys.executable, "-m", "x8manager.flasher.cli", command, *self.common_args(), *rest]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cli_argv(args), check=False, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def cli_process(self, *args: str) -> subprocess.Popen[str]:
        """The CLI started, not awaited: the test reads its stderr lines while it runs."""
        return subprocess.Popen(
            self._cli_argv(args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_for_line(self, process: subprocess.Popen[str], words: str) -> str:
        """The first stderr line of *process* holding *words*; fails if it ends without one."""
        assert process.stderr is not None
        while words not in (line := process.stderr.readline()):
            assert line, f"{process.args[3:5]} ended without saying {words!r}"
        return line

    def sketch_file(self, data: bytes, name: str = "sketch.elf") -> Path:
        """*data* as a file a client hands to ``m4-flasher flash FILE``."""
        path = self.root / "build" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path

    def upload_bytes(self, data: bytes) -> None:
        """What adb push does: create/truncate, write, close (one IN_CLOSE_WRITE)."""
        self.upload.parent.mkdir(parents=True, exist_ok=True)
        with open(self.upload, "wb") as handle:
            handle.write(data)

    def status(self) -> dict[str, Any]:
        path = self.state_dir / "status.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def chip(self) -> dict[str, Any]:
        path = self.probe / "chip.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def runs(self) -> list[dict[str, Any]]:
        path = self.probe / "invocations.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def last_good_elf(self) -> bytes:
        """The ELF last-good.json names (the commit point of the last good sketch)."""
        record = json.loads((self.state_dir / "last-good.json").read_text())
        return (self.state_dir / record["elf"]).read_bytes()

    def history(self) -> list[dict[str, Any]]:
        return list(self.status().get("history", []))

    def end_leftover_standins(self) -> None:
        """Stand-ins run in their own session: one a killed daemon left behind (held or hung) is ended
        here, by the pid it recorded and only if it still runs a sketch from this test's directory."""
        (self.probe / "release").touch()
        for run in self.runs():
            pid = run.get("pid")
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.root).encode() in command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def outcome_for(self, sha256: str, result: str | None = None) -> dict[str, Any] | None:
        for entry in self.history():
            if entry.get("sketch", {}).get("sha256") == sha256 and result in (None, entry["result"]):
                return entry
        return None


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    instance = Rig(tmp_path)
    yield instance
    if instance.daemon is not None and instance.daemon.poll() is None:
        instance.daemon.kill()
        instance.daemon.wait(timeout=30)
    instance.end_leftover_standins()
    if instance.daemon_log.exists():
        print(instance.daemon_log.read_text())  # shown by pytest only when the test failed
