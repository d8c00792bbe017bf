"""The X8's SWD configuration for openocd, shipped as package data, and the command line that uses it.

Two files: the adapter half (imx_gpio bit-banging on the i.MX8M Mini's GPIO1, pins, speed, NRST)
and the target half (SWD transport, the STM32H747's two flash banks, reset configuration), so a
test can pair the real target half with a host-side adapter. The command is an argument list,
never a shell line: ``openocd -s DIR -f ADAPTER -f TARGET -c "program {ELF} verify reset exit"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = ["ADAPTER_CONFIG_NAME", "TARGET_CONFIG_NAME", "OpenocdCommand", "packaged_config_dir"]

ADAPTER_CONFIG_NAME = "x8-swd-imx-gpio.cfg"
TARGET_CONFIG_NAME = "x8-stm32h7-target.cfg"


def packaged_config_dir() -> Path:
    """The directory holding the shipped openocd config files (package data)."""
    return Path(str(resources.files("x8manager.flasher")))


@dataclass(frozen=True)
class OpenocdCommand:
    """Everything that makes up one openocd invocation."""

    program: str = "openocd"
    config_dir: Path = field(default_factory=packaged_config_dir)
    adapter_config: str = ADAPTER_CONFIG_NAME
    target_config: str = TARGET_CONFIG_NAME

    def argv(self, elf: Path) -> list[str]:
        # The ELF path goes into a Tcl word in braces; braces or backslashes would end it early.
        text = str(elf)
        if any(char in text for char in "{}\\\n"):
            raise ValueError(f"sketch path {text!r} cannot be passed to openocd safely")
        return [
            self.program,
            "-s",
            str(self.config_dir),
            "-f",
            self.adapter_config,
            "-f",
            self.target_config,
            "-c",
            f"program {{{text}}} verify reset exit",
        ]

    def missing_files(self) -> list[str]:
        """Config files that do not exist (relative names are looked up in config_dir)."""
        missing = []
        for name in (self.adapter_config, self.target_config):
            path = Path(name) if os.path.isabs(name) else self.config_dir / name
            if not path.is_file():
                missing.append(str(path))
        return missing
