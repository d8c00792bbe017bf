"""Run openocd to program a sketch and decide, from its exit code *and* its output, what happened.

The command line comes from :mod:`x8manager.flasher.swdconfig`. openocd's ``program`` prints
``** Programming Started **``, ``** Verified OK **`` and on failure ``** ... Failed **`` lines;
a run counts as good only when openocd exits 0 *and* reported a verified write. openocd runs in
its own process group so a hung run can be killed whole at its time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from x8manager.flasher.swdconfig import (
    ADAPTER_CONFIG_NAME,
    TARGET_CONFIG_NAME,
    OpenocdCommand,
    packaged_config_dir,
)

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "TARGET_CONFIG_NAME",
    "OpenocdCommand",
    "OpenocdRun",
    "RunVerdict",
    "Verdict",
    "classify",
    "kill_orphaned_run",
    "packaged_config_dir",
    "run_openocd",
]

LOG_TAIL_LINES = 40
_KILL_GRACE_SECONDS = 2.0

_SIGNAL_NUMBERS = {int(sig) for sig in signal.Signals}
PROGRAMMING_STARTED = "** Programming Started **"
VERIFIED_OK = "** Verified OK **"

# Output that means the probe/link hiccuped and a second try may work: the SWD line did not
# answer, the target did not halt in time, a transfer failed. Matched case-insensitively.
_TRANSIENT_MARKERS = (
    "error connecting dp",
    "cannot read idr",
    "could not initialize the debug port",
    "init mode failed",
    "unable to reset target",
    "openocd init failed",
    "target not examined",
    "timed out while waiting for target halted",
    "failed to read memory",
    "failed to write memory",
    "swd ack",
    "no response from target",
    "dap transaction stalled",
    "jtag scan chain interrogation failed",
)
# Output that will not change on a retry: configuration, missing files, a failed write/verify
# after the link worked.
_PERMANENT_MARKERS = (
    "invalid command name",
    "can't find",
    "couldn't open",
    "the specified debug interface was not found",
    "** programming failed **",
    "** verify failed **",
)


@dataclass
class OpenocdRun:
    """What one openocd process did."""

    argv: Sequence[str]
    exit_code: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    programming_started: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    seen: list[str] = field(default_factory=list)  # lowercase lines that matter for classification
    started_at: float = 0.0
    spawned_at: float = 0.0  # time.time() once exec succeeded (Popen returns only after the exec)
    duration: float = 0.0
    start_error: str | None = None


class Verdict(enum.Enum):
    SUCCESS = "success"
    TRANSIENT = "transient"  # worth another attempt
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RunVerdict:
    verdict: Verdict
    reason: str


def _remember(run: OpenocdRun, line: str) -> None:
    run.tail.append(line)
    lowered = line.lower()
    if PROGRAMMING_STARTED.lower() in lowered:
        run.programming_started = True
    if "error" in lowered or "**" in lowered or "fail" in lowered:
        run.seen.append(lowered)


def _first_error(run: OpenocdRun) -> str:
    for line in run.tail:
        if line.lower().startswith("error") or "failed" in line.lower():
            return line.strip()
    return run.tail[-1].strip() if run.tail else "no output"


def classify(run: OpenocdRun) -> RunVerdict:
    """Turn a finished run into a verdict with a reason a person understands."""
    if run.start_error is not None:
        return RunVerdict(Verdict.FAILED, f"could not start openocd: {run.start_error}")
    if run.cancelled:
        return RunVerdict(
            Verdict.CANCELLED,
            "stopped before programming began (a newer upload replaced it, or the flasher is stopping)",
        )
    if run.timed_out:
        stage = "while programming" if run.programming_started else "before programming began"
        return RunVerdict(Verdict.TIMEOUT, f"openocd hung {stage} and was killed at its time limit")
    text = "\n".join(run.seen)
    verified = VERIFIED_OK.lower() in text
    if run.exit_code == 0 and verified and "** verify failed **" not in text:
        return RunVerdict(Verdict.SUCCESS, "programmed, verified and reset: the M4 runs the new sketch")
    if run.exit_code is not None and run.exit_code < 0:
        signame = signal.Signals(-run.exit_code).name if -run.exit_code in _SIGNAL_NUMBERS else "?"
        return RunVerdict(Verdict.TRANSIENT, f"openocd died from signal {signame} ({-run.exit_code})")
    detail = _first_error(run)
    if any(marker in text for marker in _PERMANENT_MARKERS):
        return RunVerdict(Verdict.FAILED, f"openocd failed (exit {run.exit_code}): {detail}")
    if any(marker in text for marker in _TRANSIENT_MARKERS):
        return RunVerdict(Verdict.TRANSIENT, f"probe/link error (exit {run.exit_code}): {detail}")
    if run.exit_code == 0:
        return RunVerdict(Verdict.FAILED, "openocd exited 0 but never reported a verified write")
    return RunVerdict(Verdict.FAILED, f"openocd failed (exit {run.exit_code}): {detail}")


def kill_orphaned_run(pid: int, elf: str) -> bool:
    """Kill the process group of an openocd left running by a flasher that died (SIGKILL).

    Only when ``pid`` still runs a command line naming *elf* (a pid may have been reused).
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not any(elf.encode() in part for part in cmdline):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
        return True
    return False


def _kill_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the whole process group, SIGKILL it if it does not go within the grace period."""
    _kill_group(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), _KILL_GRACE_SECONDS)
    except TimeoutError:
        _kill_group(process, signal.SIGKILL)
        await process.wait()
    # Children that ignored SIGTERM but outlived the leader still share the group.
    _kill_group(process, signal.SIGKILL)


async def run_openocd(
    argv: Sequence[str],
    *,
    time_limit: float,
    cancel: asyncio.Event | None = None,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    env: dict[str, str] | None = None,
) -> OpenocdRun:
    """Run openocd once; stop it at *time_limit*, or when *cancel* is set before programming starts."""
    run = OpenocdRun(argv=list(argv), started_at=time.time())
    began = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    except OSError as error:
        run.start_error = f"{argv[0]}: {error.strerror or error}"
        return run
    run.spawned_at = time.time()
    if on_start is not None:
        on_start(process.pid)
    assert process.stdout is not None
    stdout = process.stdout

    async def pump() -> None:
        while True:
            raw = await stdout.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            _remember(run, line)
            if on_line is not None:
                on_line(line)

    async def cancelled_before_programming() -> None:
        assert cancel is not None
        while True:
            await cancel.wait()
            if not run.programming_started:
                return
            # Already writing: a half-written bank helps nobody, so this run finishes.
            await asyncio.Event().wait()

    pump_task = asyncio.create_task(pump())
    waiters: set[asyncio.Task[object]] = {asyncio.create_task(process.wait())}
    cancel_task = asyncio.create_task(cancelled_before_programming()) if cancel is not None else None
    if cancel_task is not None:
        waiters.add(cancel_task)
    try:
        done, _ = await asyncio.wait(waiters, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            run.timed_out = True
            await _stop(process)
        elif cancel_task is not None and cancel_task in done and process.returncode is None:
            run.cancelled = True
            await _stop(process)
        else:
            # The leader exited; anything it left behind in its group must not keep the pins.
            _kill_group(process, signal.SIGKILL)
        # The pipe closes once every process of the group is gone.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pump_task, _KILL_GRACE_SECONDS)
    finally:
        for task in (*waiters, pump_task):
            task.cancel()
        if process.returncode is None:
            _kill_group(process, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
    run.exit_code = process.returncode
    run.duration = time.monotonic() - began
    return run
