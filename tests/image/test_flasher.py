"""The IDE's upload path: a valid sketch is flashed (through the SWD stand-in) and reported; a corrupt
one is refused, reported, and the chip keeps what it had."""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8

from .flashing import chip, status, upload, wait_for_result

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]


def test_uploaded_sketch_is_flashed_and_reported(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    sha256 = upload(virtual_x8, "sketch-ok.elf")
    result = wait_for_result(console, sha256)
    assert result["result"] == "success", result
    assert chip(console).get("sha256") == sha256
    assert chip(console).get("state") == "programmed"
    human = console.check("m4-flasher status")
    assert "success" in human and sha256[:12] in human


def test_corrupt_sketch_is_refused_and_reported(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    before = chip(console)
    sha256 = upload(virtual_x8, "truncated.elf")
    result = wait_for_result(console, sha256)
    assert result["result"] == "rejected", result
    assert result.get("reason"), "a rejection must say why"
    assert chip(console) == before, "a rejected sketch must not touch the chip"
    _, code = console.run("m4-flasher status")
    assert status(console)["result"] == "rejected"
    assert code in (0, 1, 3)
