"""The x8-apps console script: x8-apps needs the "apps" extra (PyYAML, jsonschema), which a core
`pip install x8manager` lacks; then it says which extra to install (x8manager.common.extras)."""

from __future__ import annotations

from x8manager.common.extras import run_console_script


def main() -> int:
    def x8_apps() -> int:
        from .cli import main as cli_main  # noqa: PLC0415 - imported under the guard: it imports yaml

        return cli_main()

    return run_console_script("x8-apps", x8_apps)
