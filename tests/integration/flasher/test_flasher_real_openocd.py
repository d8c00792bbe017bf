"""Debian's real openocd accepts the shipped config and the flasher's command line.

Debian's x86 openocd has no imx_gpio driver and this machine has no SWD wires, so the adapter
half is swapped for linuxgpiod on a GPIO chip that does not exist: a bit-banging adapter like
imx_gpio that supports SWD. openocd then reads the shipped target half, selects SWD, sets up the
dual-bank H7 and the reset configuration, and fails only at ``init``, where hardware is needed.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from flasher_daemon_rig import ELF_DIR

from x8manager.flasher.openocd import OpenocdCommand, Verdict, classify, run_openocd

# linuxgpiod in openocd 0.12 syntax; chip 99 does not exist, so nothing real is ever touched.
HOST_ADAPTER = """\
adapter driver linuxgpiod
adapter gpio swclk 15 -chip 99
adapter gpio swdio 8 -chip 99
adapter gpio srst 10 -chip 99
"""
CONFIG_ERRORS = (
    "invalid command name",
    "can't find",
    "syntax error",
    "unknown",
    "wrong # args",
    "deprecated",
)


def _openocd() -> str:
    program = shutil.which("openocd")
    assert program, "openocd is needed (scripts/deps/apt.txt installs Debian's package)"
    return program


def test_shipped_target_config_and_command_line_reach_init(tmp_path: Path) -> None:
    adapter = tmp_path / "host-adapter.cfg"
    adapter.write_text(HOST_ADAPTER)
    elf = tmp_path / "a folder with spaces" / "sketch.elf"
    elf.parent.mkdir()
    shutil.copyfile(ELF_DIR / "sketch-ok.elf", elf)
    command = OpenocdCommand(program=_openocd(), adapter_config=str(adapter))
    run = asyncio.run(run_openocd(command.argv(elf), time_limit=60))
    output = "\n".join(run.tail)
    assert run.exit_code == 1, output
    lowered = output.lower()
    assert not [error for error in CONFIG_ERRORS if error in lowered], output
    # The target half was applied: SWD transport, srst-only push-pull reset (+ the target's nogate).
    assert "srst_only" in output and "srst_push_pull" in output, output
    # ... and openocd stopped where the hardware starts, inside "program", not while parsing.
    assert "Cannot open LinuxGPIOD chip 99" in output or "gpio" in lowered, output
    assert "** OpenOCD init failed **" in output, output
    assert not run.programming_started
    verdict = classify(run)
    assert verdict.verdict is Verdict.TRANSIENT, verdict  # a probe that does not answer is retried


def test_shipped_adapter_config_names_the_imx_gpio_driver(tmp_path: Path) -> None:
    command = OpenocdCommand(program=_openocd())
    run = asyncio.run(run_openocd(command.argv(tmp_path / "sketch.elf"), time_limit=60))
    output = "\n".join(run.tail)
    # Debian's x86 build lacks imx_gpio (the X8's openocd is built with --enable-imx_gpio): the
    # shipped file is found and read up to its driver line, and the failure is called permanent.
    assert "The specified debug interface was not found (imx_gpio)" in output, output
    assert run.exit_code == 1
    assert classify(run).verdict is Verdict.FAILED
