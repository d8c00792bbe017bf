"""openocd command line, verdicts, and the runner's time limit / cancellation (with the stand-in)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flasher_unit_support import ELF_DIR, STANDIN

from tests.support import wait_for
from x8manager.flasher.openocd import (
    OpenocdCommand,
    OpenocdRun,
    Verdict,
    classify,
    kill_orphaned_run,
    run_openocd,
)

GOOD = ELF_DIR / "sketch-ok.elf"


def _argv(elf: Path = GOOD) -> list[str]:
    return OpenocdCommand(program=str(STANDIN)).argv(elf)


def test_argv_is_an_argument_list_with_adapter_and_target_halves() -> None:
    argv = OpenocdCommand().argv(Path("/var/lib/m4-flasher/spool/a b.elf"))
    assert argv[0] == "openocd"
    assert argv[argv.index("-f") + 1] == "x8-swd-imx-gpio.cfg"
    assert argv[-2:] == ["-c", "program {/var/lib/m4-flasher/spool/a b.elf} verify reset exit"]
    assert Path(argv[argv.index("-s") + 1], "x8-stm32h7-target.cfg").is_file()


def test_shipped_config_is_split_adapter_and_target() -> None:
    command = OpenocdCommand()
    adapter = (command.config_dir / command.adapter_config).read_text()
    target = (command.config_dir / command.target_config).read_text()
    assert "adapter driver imx_gpio" in adapter and "imx_gpio_swd_nums 15 8" in adapter
    assert "imx_gpio_srst_num 10" in adapter and "0x30200000" in adapter
    assert "transport" not in adapter and "stm32h7x" not in adapter
    assert "transport select swd" in target and "stm32h7x_dual_bank.cfg" in target
    assert "reset_config srst_only srst_push_pull" in target
    assert command.missing_files() == []


def test_paths_that_would_break_the_tcl_word_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be passed to openocd"):
        OpenocdCommand().argv(Path("/tmp/evil}; shutdown; {x.elf"))


def _run(lines: list[str], exit_code: int | None, **flags: bool) -> OpenocdRun:
    run = OpenocdRun(argv=["openocd"], exit_code=exit_code, **flags)
    for line in lines:
        run.tail.append(line)
        run.seen.append(line.lower())
        if "programming started" in line.lower():
            run.programming_started = True
    return run


@pytest.mark.parametrize(
    ("lines", "code", "verdict"),
    [
        (
            ["** Programming Started **", "** Programming Finished **", "** Verified OK **"],
            0,
            Verdict.SUCCESS,
        ),
        (["** Programming Started **", "** Programming Finished **"], 0, Verdict.FAILED),  # never verified
        (["** Verified OK **"], 1, Verdict.FAILED),  # exit code decides too
        (["Error: Error connecting DP: cannot read IDR", "** OpenOCD init failed **"], 1, Verdict.TRANSIENT),
        (["** Programming Started **", "** Verify Failed **"], 1, Verdict.FAILED),
        (["Error: Can't find x8-stm32h7-target.cfg"], 1, Verdict.FAILED),
        (["Error: The specified debug interface was not found (imx_gpio)"], 1, Verdict.FAILED),
        ([], -11, Verdict.TRANSIENT),  # died from SIGSEGV
        (["something odd"], 1, Verdict.FAILED),
    ],
)
def test_classify(lines: list[str], code: int, verdict: Verdict) -> None:
    result = classify(_run(lines, code))
    assert result.verdict is verdict
    assert result.reason


def test_classify_timeout_says_at_which_stage() -> None:
    assert "before programming began" in classify(_run([], -9, timed_out=True)).reason
    assert classify(_run(["** Programming Started **"], -9, timed_out=True)).verdict is Verdict.TIMEOUT


def test_missing_program_is_a_clear_failure() -> None:
    run = asyncio.run(run_openocd(["/nonexistent/openocd", "-v"], time_limit=5))
    verdict = classify(run)
    assert verdict.verdict is Verdict.FAILED
    assert "could not start openocd" in verdict.reason


def test_success_with_the_standin(standin_env: Path) -> None:
    run = asyncio.run(run_openocd(_argv(), time_limit=20))
    assert run.exit_code == 0 and run.programming_started
    assert classify(run).verdict is Verdict.SUCCESS
    chip = json.loads((standin_env / "chip.json").read_text())
    assert chip["state"] == "programmed" and chip["size"] == GOOD.stat().st_size


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _recorded_pids(directory: Path) -> list[int]:
    lines = (directory / "invocations.jsonl").read_text().splitlines()
    return [json.loads(line)["pid"] for line in lines]


def test_hung_openocd_that_ignores_sigterm_is_killed_at_the_time_limit(
    standin_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENOCD_STANDIN_MODE", "hang-hard")
    # No stopwatch: run_openocd returning at all (pytest-timeout fails a hang) and the recorded
    # process being gone (it ignored SIGTERM, so only the SIGKILL after the grace ended it) say
    # the time limit was enforced.
    run = asyncio.run(run_openocd(_argv(), time_limit=3.0))  # room for its start-up under load
    assert run.timed_out
    assert classify(run).verdict is Verdict.TIMEOUT
    (pid,) = _recorded_pids(standin_env)
    assert _pid_gone(pid)


def test_cancel_before_programming_stops_the_run(standin_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENOCD_STANDIN_MODE", "hang")

    async def scenario() -> OpenocdRun:
        cancel = asyncio.Event()

        def on_line(line: str) -> None:
            if "Open On-Chip Debugger" in line:
                cancel.set()  # openocd is up and connecting: replace it now

        return await run_openocd(_argv(), time_limit=30, cancel=cancel, on_line=on_line)

    run = asyncio.run(scenario())
    assert run.cancelled and not run.programming_started
    assert classify(run).verdict is Verdict.CANCELLED


def test_cancel_after_programming_started_lets_the_write_finish(
    standin_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENOCD_STANDIN_PROGRAM_SECONDS", "0.5")

    async def scenario() -> OpenocdRun:
        cancel = asyncio.Event()
        started = asyncio.Event()

        def on_line(line: str) -> None:
            if "Programming Started" in line:
                started.set()

        task = asyncio.create_task(run_openocd(_argv(), time_limit=30, cancel=cancel, on_line=on_line))
        await started.wait()
        cancel.set()
        return await task

    run = asyncio.run(scenario())
    assert not run.cancelled
    assert classify(run).verdict is Verdict.SUCCESS


def test_crash_is_reported_as_a_signal(standin_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENOCD_STANDIN_MODE", "crash")
    run = asyncio.run(run_openocd(_argv(), time_limit=20))
    verdict = classify(run)
    assert run.exit_code == -11
    assert verdict.verdict is Verdict.TRANSIENT and "SIGSEGV" in verdict.reason


def test_lying_openocd_that_exits_zero_is_not_believed(
    standin_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENOCD_STANDIN_MODE", "lie")
    run = asyncio.run(run_openocd(_argv(), time_limit=20))
    assert run.exit_code == 0
    assert classify(run).verdict is Verdict.FAILED


def _wait_for_cmdline(pid: int) -> None:
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes(), f"pid {pid} to show its command line")


def test_orphan_kill_only_hits_a_process_running_that_sketch(tmp_path: Path) -> None:
    elf = tmp_path / "spool" / "000001-42-abcdef.elf"
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    # Stands for an openocd whose command line names the sketch ("program {ELF} ...").
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(elf)], start_new_session=True
    )
    try:
        # Right after exec, /proc/PID/cmdline can still read empty: wait until both show theirs.
        _wait_for_cmdline(other.pid)
        _wait_for_cmdline(orphan.pid)
        assert not kill_orphaned_run(other.pid, str(elf)), "a reused pid must not be killed"
        assert other.poll() is None
        assert kill_orphaned_run(orphan.pid, str(elf))
        assert orphan.wait(timeout=10) == -9
    finally:
        for process in (other, orphan):
            process.kill()
            process.wait(timeout=10)
