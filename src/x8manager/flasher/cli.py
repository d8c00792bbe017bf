"""``m4-flasher``: the daemon and the commands people run (status, flash, rollback).

Coordination between a command and a running daemon needs no socket: both take the H7 lock
around every flash and both keep their records in the same state directory. The daemon writes
its settings to ``<state-dir>/daemon.json`` so a manual ``flash`` uses the same openocd, config
and status file unless told otherwise.

Exit codes: 0 done (flashed and verified), 1 the flash failed or the H7 stayed busy,
2 usage or set-up error, 3 the file was rejected (the chip was not touched).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from x8manager.common.logs import setup_logging
from x8manager.flasher.lock import DEFAULT_LOCK_PATH, LockTimeout, lock_holder
from x8manager.flasher.state import StateDir
from x8manager.flasher.swdconfig import (
    ADAPTER_CONFIG_NAME,
    TARGET_CONFIG_NAME,
    OpenocdCommand,
    packaged_config_dir,
)

# asyncio, the ELF check and the daemon are imported by the commands that use them: `m4-flasher
# status` is polled by people and tests, and on a slow board it starts several times faster.
if TYPE_CHECKING:
    from x8manager.flasher.pipeline import Flasher, FlasherSettings, Outcome

__all__ = ["main"]

log = logging.getLogger("x8manager.flasher")

DEFAULT_WATCH = Path("/tmp/arduino/m4-user-sketch.elf")
DEFAULT_STATE_DIR = Path("/var/lib/m4-flasher")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3

# Options a command takes from the daemon's recorded settings when not given explicitly.
_INHERITED = {
    "openocd": "openocd",
    "openocd_config_dir": "config_dir",
    "adapter_config": "adapter_config",
    "target_config": "target_config",
    "status": "status",
    "lock": "lock",
    "timeout": "timeout",
    "retries": "retries",
}
_DEFAULTS: dict[str, Any] = {
    "openocd": "openocd",
    "openocd_config_dir": None,
    "adapter_config": ADAPTER_CONFIG_NAME,
    "target_config": TARGET_CONFIG_NAME,
    "status": None,
    "lock": str(DEFAULT_LOCK_PATH),
    "timeout": 90.0,
    "retries": 2,
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"spool, status, last good sketch (default {DEFAULT_STATE_DIR})",
    )
    common.add_argument("--status", help="status JSON file (default <state-dir>/status.json)")
    common.add_argument("--openocd", help="openocd program (default: the daemon's, else 'openocd')")
    common.add_argument("--openocd-config-dir", help="where the config files are (default: shipped ones)")
    common.add_argument("--adapter-config", help=f"adapter config file (default {ADAPTER_CONFIG_NAME})")
    common.add_argument("--target-config", help=f"target config file (default {TARGET_CONFIG_NAME})")
    common.add_argument("--lock", help=f"H7 programming lock file (default {DEFAULT_LOCK_PATH})")
    common.add_argument("--timeout", type=float, help="time limit of one openocd run in seconds (default 90)")
    common.add_argument(
        "--retries", type=int, help="extra attempts after a transient probe error (default 2)"
    )
    common.add_argument("--retry-delay", type=float, default=1.0, help="seconds before a retry (grows)")
    common.add_argument("--lock-timeout", type=float, default=600.0, help="how long to wait for the H7 lock")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(
        prog="m4-flasher", description="Validate and flash Portenta X8 M4 sketches."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    daemon = commands.add_parser("daemon", parents=[common], help="watch the upload path and flash uploads")
    daemon.add_argument(
        "--watch", type=Path, default=DEFAULT_WATCH, help=f"upload path (default {DEFAULT_WATCH})"
    )
    status = commands.add_parser(
        "status", parents=[common], help="show the last flash and the last good sketch"
    )
    status.add_argument("--json", action="store_true", help="print the status file as JSON")
    flash = commands.add_parser("flash", parents=[common], help="validate and flash FILE now")
    flash.add_argument("file", type=Path, metavar="FILE")
    commands.add_parser("rollback", parents=[common], help="flash the last sketch that flashed well")
    return parser


def _resolve(args: argparse.Namespace, inherit: bool) -> None:
    """Fill unset options from the daemon's settings (commands) or the defaults (daemon)."""
    recorded = StateDir(args.state_dir).read_settings() if inherit else {}
    for option, key in _INHERITED.items():
        if getattr(args, option) is None:
            setattr(args, option, recorded.get(key, _DEFAULTS[option]))


def _settings(args: argparse.Namespace) -> FlasherSettings:
    from x8manager.flasher.pipeline import FlasherSettings  # noqa: PLC0415 - see the imports

    openocd = OpenocdCommand(
        program=args.openocd,
        config_dir=Path(args.openocd_config_dir) if args.openocd_config_dir else packaged_config_dir(),
        adapter_config=args.adapter_config,
        target_config=args.target_config,
    )
    return FlasherSettings(
        state_dir=args.state_dir,
        status_path=Path(args.status) if args.status else None,
        openocd=openocd,
        lock_path=Path(args.lock),
        attempt_timeout=float(args.timeout),
        retries=int(args.retries),
        retry_delay=args.retry_delay,
        lock_timeout=args.lock_timeout,
    )


def _report(outcome: Outcome) -> int:
    sketch = outcome.record.get("sketch") or {}
    sha = str(sketch.get("sha256", "?"))[:12]
    print(f"{outcome.result.value}: sketch {sha} ({sketch.get('size', '?')} bytes): {outcome.reason}")
    if not outcome.ok and outcome.record.get("openocd_log_tail"):
        print("openocd output (last lines):", file=sys.stderr)
        for tail_line in outcome.record["openocd_log_tail"][-15:]:
            print(f"  {tail_line}", file=sys.stderr)
    if outcome.ok:
        return EXIT_OK
    return EXIT_REJECTED if outcome.result.value == "rejected" else EXIT_FAILED


async def _flash_file(flasher: Flasher, path: Path, source: str) -> int:
    from x8manager.flasher.elfcheck import SketchRejected  # noqa: PLC0415 - see the imports

    try:
        data = flasher.snapshot(path)
    except OSError as error:
        print(f"m4-flasher: cannot read {path}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    flasher.state.prepare()
    try:
        job = flasher.admit(data, source=source, origin=str(path))
    except SketchRejected as error:
        return _report(flasher.reject(data, error, source=source, origin=str(path)))
    try:
        outcome = await flasher.flash(job)
    except LockTimeout as error:
        print(f"m4-flasher: {error}", file=sys.stderr)
        return EXIT_FAILED
    return _report(outcome)


def _cmd_flash(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - see the imports

    from x8manager.flasher.pipeline import Flasher  # noqa: PLC0415

    return asyncio.run(_flash_file(Flasher(_settings(args)), args.file, "manual"))


def _cmd_rollback(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - see the imports

    from x8manager.flasher.pipeline import Flasher  # noqa: PLC0415

    flasher = Flasher(_settings(args))
    record = flasher.state.last_good()
    if record is None:
        print("m4-flasher: there is no last good sketch to roll back to", file=sys.stderr)
        return EXIT_USAGE
    print(f"rolling back to sketch {str(record.get('sha256'))[:12]} (flashed {record.get('flashed_at')})")
    return asyncio.run(_flash_file(flasher, flasher.state.last_good_elf, "rollback"))


def _describe_status(status: dict[str, Any], state: StateDir, lock: Path) -> list[str]:
    lines = []
    holder = lock_holder(lock)
    marker = state.read_marker()
    if holder:
        lines.append(f"H7 programming lock: held by {holder}")
    if marker is not None and not holder:
        sha = str((marker.get("sketch") or {}).get("sha256", "?"))[:12]
        lines.append(
            f"INTERRUPTED: the flash of sketch {sha} did not finish; the daemon (or the next "
            "flash/rollback) will restore a consistent state"
        )
    in_progress = status.get("in_progress")
    if status.get("state") == "flashing" and in_progress and holder:
        sha = str((in_progress.get("sketch") or {}).get("sha256", "?"))[:12]
        lines.append(
            f"flashing sketch {sha} ({in_progress.get('source')}) since {in_progress.get('started_at')}"
        )
    if "result" in status:
        sketch = status.get("sketch") or {}
        lines.append(
            f"last result: {status['result']} ({status.get('source')}, finished {status.get('finished_at')})"
        )
        lines.append(f"  reason: {status.get('reason')}")
        lines.append(f"  sketch: sha256 {sketch.get('sha256')} ({sketch.get('size')} bytes)")
        if status["result"] != "success" and status.get("openocd_log_tail"):
            lines.append("  openocd output (last lines):")
            lines.extend(f"    {line}" for line in status["openocd_log_tail"][-10:])
    else:
        lines.append("no flash recorded yet")
    history = status.get("history") or []
    if len(history) > 1:
        lines.append("recent:")
        for entry in history[:5]:
            sha = str((entry.get("sketch") or {}).get("sha256", "?"))[:12]
            result, source = entry.get("result"), entry.get("source")
            lines.append(f"  {entry.get('finished_at')}  {result:<11} {sha}  {source}")
    good = status.get("last_good") or state.last_good()
    if good:
        lines.append(
            f"last good sketch: sha256 {good.get('sha256')} ({good.get('size')} bytes), "
            f"flashed {good.get('flashed_at')}"
        )
    else:
        lines.append("last good sketch: none")
    return lines


def _cmd_status(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir, Path(args.status) if args.status else None)
    try:
        status = state.read_status() or {}
    except (OSError, ValueError) as error:
        print(f"m4-flasher: cannot read the status: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print("\n".join(_describe_status(status, state, Path(args.lock))))
    return EXIT_OK


def _cmd_daemon(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - see the imports

    from x8manager.flasher.daemon import FlasherDaemon, StartupError  # noqa: PLC0415
    from x8manager.flasher.pipeline import Flasher  # noqa: PLC0415

    daemon = FlasherDaemon(Flasher(_settings(args)), args.watch)
    try:
        asyncio.run(daemon.run())
    except StartupError as error:
        log.critical("cannot start: %s", error)
        return EXIT_USAGE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("m4-flasher", verbose=args.verbose)
    _resolve(args, inherit=args.command != "daemon")
    handlers = {"daemon": _cmd_daemon, "status": _cmd_status, "flash": _cmd_flash, "rollback": _cmd_rollback}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        # A state directory, lock or status file this user may not write (run as root?), a full disk.
        where = f" ({error.filename})" if error.filename else ""
        print(f"m4-flasher {args.command}: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
