"""The m4-flasher console script: validating a sketch (daemon, flash, rollback) needs the "flasher"
extra (pyelftools), which a core `pip install x8manager` lacks; then it says which extra to
install (x8manager.common.extras) instead of a traceback. `m4-flasher status` works without it."""

from __future__ import annotations

from x8manager.common.extras import run_console_script


def main() -> int:
    def m4_flasher() -> int:
        from .cli import main as cli_main  # noqa: PLC0415 - imported under the guard

        return cli_main()

    return run_console_script("m4-flasher", m4_flasher)
