"""The flasher's settings and their defaults, in one place (the CLI's options and help use these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from x8manager.flasher.elfcheck import MAX_SKETCH_FILE_BYTES
from x8manager.flasher.lock import DEFAULT_LOCK_PATH
from x8manager.flasher.swdconfig import OpenocdCommand

__all__ = ["DEFAULT_SOCKET_PATH", "DEFAULT_STATE_DIR", "DEFAULT_WATCH", "FlasherSettings"]

DEFAULT_WATCH = Path("/tmp/arduino/m4-user-sketch.elf")
DEFAULT_STATE_DIR = Path("/var/lib/m4-flasher")
DEFAULT_SOCKET_PATH = Path("/run/m4-flasher/request.sock")


@dataclass(frozen=True)
class FlasherSettings:
    """Everything a Flasher needs; the defaults here are the only defaults."""

    state_dir: Path = DEFAULT_STATE_DIR
    status_path: Path | None = None
    openocd: OpenocdCommand = field(default_factory=OpenocdCommand)
    lock_path: Path = DEFAULT_LOCK_PATH
    attempt_timeout: float = 90.0
    retries: int = 2  # extra attempts after a transient probe error
    retry_delay: float = 1.0
    lock_timeout: float = 600.0
    max_file_bytes: int = MAX_SKETCH_FILE_BYTES
