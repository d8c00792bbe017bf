"""Helpers of the flasher scenarios: upload a sketch the way the IDE does, read the flasher's status."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from x8manager.qemu import Console
from x8manager.qemu.virtual_x8 import VirtualX8, poll

ELF_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "elf"
UPLOAD_PATH = "/tmp/arduino/m4-user-sketch.elf"
STANDIN_MODE_FILE = "/etc/x8-test/openocd-mode"
STANDIN_CHIP = "/var/lib/openocd-standin/chip.json"


def sha256_of(name: str) -> str:
    return hashlib.sha256((ELF_FIXTURES / name).read_bytes()).hexdigest()


def upload(x8: VirtualX8, name: str) -> str:
    """Stage the fixture in the guest, then copy it to the upload path in one write as the login user
    (fio: the X8's adbd runs as fio, so ``adb push`` writes as fio)."""
    console = x8.machine.require_console()
    staged = f"/tmp/{name}"
    console.write_file(staged, (ELF_FIXTURES / name).read_bytes())
    console.check(x8.as_user(f"mkdir -p /tmp/arduino && cp {shlex.quote(staged)} {UPLOAD_PATH}"))
    return sha256_of(name)


def status(console: Console) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(console.check("m4-flasher status --json"))
    return result


def chip(console: Console) -> dict[str, Any]:
    output, code = console.run(f"cat {STANDIN_CHIP}")
    return json.loads(output) if code == 0 else {}


def wait_for_result(console: Console, sha256: str, timeout: float = 120) -> dict[str, Any]:
    """The status once the flasher has finished with the sketch *sha256* (any result)."""

    def finished() -> dict[str, Any] | None:
        current = status(console)
        sketch = current.get("sketch") or {}
        if current.get("state") != "flashing" and sketch.get("sha256") == sha256 and "result" in current:
            return current
        return None

    result: dict[str, Any] = poll(f"m4-flasher reports a result for {sha256[:12]}", finished, timeout)
    return result
