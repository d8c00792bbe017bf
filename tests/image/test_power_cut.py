"""A hard reset (QMP system_reset) in the middle of a flash; the next boot reports and recovers it.

The SWD stand-in is told to hang while programming, so the reset lands with the chip half written.
"""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8, poll

from .flashing import STANDIN_MODE_FILE, chip, status, upload

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]


def test_power_cut_during_flash_is_reported_and_recovered(virtual_x8: VirtualX8) -> None:
    machine = virtual_x8.machine
    console = machine.require_console()
    console.check(f"mkdir -p /etc/x8-test && echo hang-programming > {STANDIN_MODE_FILE}")
    sha256 = upload(virtual_x8, "sketch-ok-2.elf")
    poll("the flash is under way (stand-in programming)",
         lambda: True if status(console).get("state") == "flashing"
         and chip(console).get("state") == "programming" else None, timeout=120)
    # The next boot's openocd must work; the hanging one already read its mode. Only what reached
    # the disk survives the reset, as on real hardware: sync this one change, nothing else.
    console.check(f"rm -f {STANDIN_MODE_FILE} && sync")
    machine.hard_reset()
    machine.wait_ready()

    def recovered() -> dict[str, object] | None:
        current = status(console)
        return current if current.get("state") != "flashing" and current.get("source") == "recovery" else None

    final = poll("the flasher recovered the interrupted flash", recovered, timeout=240)
    results = [entry.get("result") for entry in final.get("history", [])]
    assert "interrupted" in results, f"the interruption must be reported: {final}"
    assert final["result"] == "success", final
    assert chip(console).get("state") == "programmed"
    assert chip(console).get("sha256") == sha256
    failed = console.check("systemctl list-units --failed --no-legend --plain").strip()
    assert failed == "", f"failed units after the reset:\n{failed}"
