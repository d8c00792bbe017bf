"""``x8 upload``: the sketch is checked here with the flasher's own ELF check, copied to the device's
upload path, and the flasher's verdict for *that* file (by SHA-256) is awaited and returned."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x8manager.flasher.elfcheck import SketchRejected, validate_sketch

from .transport import Transport

__all__ = ["UPLOAD_PATH", "UploadError", "Verdict", "check_locally", "upload_sketch"]

UPLOAD_PATH = "/tmp/arduino/m4-user-sketch.elf"  # where the IDE's adb push puts it; the flasher watches it
STAGING_PATH = "/tmp/arduino/.m4-user-sketch.elf.x8-upload"  # same directory: the mv is atomic
VERDICT_TIMEOUT = 180.0
POLL_INTERVAL = 0.5
# The flasher's results and x8 upload's exit codes: 0 flashed and verified, 3 refused, 1 anything else.
EXIT_FOR_RESULT = {"success": 0, "rejected": 3}
EXIT_FAILED = 1
EXIT_REJECTED = 3
# The fields that tell one flasher result from the next (the same sketch may be flashed twice).
RESULT_FIELDS = ("result", "finished_at", "started_at", "received_at", "sketch", "reason")


class UploadError(RuntimeError):
    """The upload could not be made or judged (no flasher on the device, no verdict in time)."""


@dataclass(frozen=True)
class Verdict:
    result: str
    reason: str
    sha256: str
    status: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return EXIT_FOR_RESULT.get(self.result, EXIT_FAILED)


def check_locally(data: bytes) -> str | None:
    """The flasher's own ELF check: None when the sketch is acceptable, else the flasher's reason."""
    try:
        validate_sketch(data)
    except SketchRejected as rejected:
        return str(rejected)
    return None


def flasher_status(transport: Transport) -> dict[str, Any]:
    result = transport.run(["m4-flasher", "status", "--json"], timeout=60)
    if result.returncode == 127:
        raise UploadError(f"{transport.address}: m4-flasher is not installed on the device")
    if result.returncode != 0:
        raise UploadError(f"{transport.address}: m4-flasher status failed (exit {result.returncode}): "
                          f"{result.stderr.decode(errors='replace').strip()[-500:]}")
    try:
        status: dict[str, Any] = json.loads(result.stdout or b"{}")
    except ValueError as error:
        raise UploadError(f"{transport.address}: m4-flasher status --json: no JSON: {error}") from error
    return status


def _result_of(status: dict[str, Any]) -> dict[str, Any]:
    return {field: status.get(field) for field in RESULT_FIELDS}


def upload_sketch(transport: Transport, sketch: Path, timeout: float = VERDICT_TIMEOUT) -> Verdict:
    """Copy *sketch* to the upload path and wait for the flasher's verdict on its SHA-256."""
    sha256 = hashlib.sha256(sketch.read_bytes()).hexdigest()
    before = _result_of(flasher_status(transport))
    prepared = transport.run(["mkdir", "-p", str(Path(UPLOAD_PATH).parent)], timeout=60)
    if prepared.returncode != 0:
        raise UploadError(f"{transport.address}: cannot create {Path(UPLOAD_PATH).parent}: "
                          f"{prepared.stderr.decode(errors='replace').strip()}")
    transport.push_file(sketch, STAGING_PATH)
    moved = transport.run(["mv", "-f", STAGING_PATH, UPLOAD_PATH], timeout=60)
    if moved.returncode != 0:
        raise UploadError(f"{transport.address}: cannot move the sketch to {UPLOAD_PATH}: "
                          f"{moved.stderr.decode(errors='replace').strip()}")
    deadline = time.monotonic() + timeout
    while True:
        status = flasher_status(transport)
        sketch_info = status.get("sketch") or {}
        finished = status.get("state") != "flashing" and "result" in status
        if finished and sketch_info.get("sha256") == sha256 and _result_of(status) != before:
            return Verdict(result=str(status["result"]), reason=str(status.get("reason", "")),
                           sha256=sha256, status=status)
        if time.monotonic() > deadline:
            raise UploadError(f"no verdict from m4-flasher on sketch {sha256[:12]} within {timeout:.0f}s "
                              f"(its state: {status.get('state')!r}); is m4-flasher running?")
        time.sleep(POLL_INTERVAL)


