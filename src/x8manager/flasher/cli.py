"""``m4-flasher``: the daemon and the commands people run (status, flash, rollback).

A command and a running daemon coordinate two ways. ``flash FILE`` flashes in this process: both
take the H7 lock around every flash and keep their records in the same state directory; the
daemon writes its settings to ``<state-dir>/daemon.json`` so a manual ``flash`` uses the same
openocd, config and status file unless told otherwise. ``flash FILE --wait`` instead hands the
file to the daemon over its request socket (health check, ``--if-changed``, JSON result).

Exit codes: 0 done (flashed and verified, or unchanged), 1 the flash or its health check failed,
the H7 stayed busy, or the outcome is unknown, 2 usage or set-up error, 3 the file was rejected
(the chip was not touched).
"""

from __future__ import annotations

import argparse
import grp
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from x8manager.common.logs import setup_logging
from x8manager.flasher.lock import lock_holder
from x8manager.flasher.records import DaemonSettings, Status
from x8manager.flasher.settings import (
    DEFAULT_SOCKET_PATH,
    DEFAULT_STATE_DIR,
    DEFAULT_WATCH,
    FlasherSettings,
)
from x8manager.flasher.state import StateDir
from x8manager.flasher.swdconfig import OpenocdCommand, packaged_config_dir

# asyncio, the ELF check and the daemon are imported by the commands that use them: `m4-flasher
# status` is polled by people and tests, and on a slow board it starts several times faster.
if TYPE_CHECKING:
    from x8manager.flasher.pipeline import Flasher, Outcome
    from x8manager.flasher.records import HealthCheck

__all__ = ["main"]

log = logging.getLogger("x8manager.flasher")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
DEFAULTS = FlasherSettings()
_DEFAULT_OPENOCD = OpenocdCommand()


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULTS.state_dir,
        help=f"spool, status, last good sketch (default {DEFAULT_STATE_DIR})",
    )
    common.add_argument("--status", help="status JSON file (default <state-dir>/status.json)")
    common.add_argument(
        "--openocd", help=f"openocd program (default: the daemon's, else {_DEFAULT_OPENOCD.program!r})"
    )
    common.add_argument("--openocd-config-dir", help="where the config files are (default: shipped ones)")
    common.add_argument(
        "--adapter-config", help=f"adapter config file (default {_DEFAULT_OPENOCD.adapter_config})"
    )
    common.add_argument(
        "--target-config", help=f"target config file (default {_DEFAULT_OPENOCD.target_config})"
    )
    common.add_argument("--lock", help=f"H7 programming lock file (default {DEFAULTS.lock_path})")
    common.add_argument(
        "--timeout",
        type=float,
        help=f"time limit of one openocd run in seconds (default {DEFAULTS.attempt_timeout:g})",
    )
    common.add_argument(
        "--retries",
        type=int,
        help=f"extra attempts after a transient probe error (default {DEFAULTS.retries})",
    )
    common.add_argument(
        "--retry-delay", type=float, default=DEFAULTS.retry_delay, help="seconds before a retry (grows)"
    )
    common.add_argument(
        "--lock-timeout", type=float, default=DEFAULTS.lock_timeout, help="how long to wait for the H7 lock"
    )
    common.add_argument("--socket", help=f"the daemon's request socket (default {DEFAULT_SOCKET_PATH})")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(
        prog="m4-flasher", description="Validate and flash Portenta X8 M4 sketches."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    daemon = commands.add_parser("daemon", parents=[common], help="watch the upload path and flash uploads")
    daemon.add_argument(
        "--watch", type=Path, default=DEFAULT_WATCH, help=f"upload path (default {DEFAULT_WATCH})"
    )
    daemon.add_argument("--no-socket", action="store_true", help="serve no request socket")
    daemon.add_argument(
        "--socket-group", help="group that may use the request socket (mode 0660; default: root only, 0600)"
    )
    daemon.add_argument(
        "--request-idle-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close a request connection that sends nothing for S seconds (default 30)",
    )
    status = commands.add_parser(
        "status", parents=[common], help="show the last flash and the last good sketch"
    )
    status.add_argument("--json", action="store_true", help="print the status file as JSON")
    flash = commands.add_parser("flash", parents=[common], help="validate and flash FILE now")
    flash.add_argument("file", type=Path, metavar="FILE")
    flash.add_argument("--wait", action="store_true", help="hand FILE to the daemon and wait for its result")
    flash.add_argument("--json", action="store_true", help="print the result as JSON (with --wait)")
    flash.add_argument(
        "--if-changed", action="store_true", help="no chip write if the M4 runs this verified sketch (--wait)"
    )
    flash.add_argument("--health-method", metavar="NAME", help="after the flash, NAME() must answer (--wait)")
    flash.add_argument(
        "--health-bound",
        metavar="NAME",
        action="append",
        default=[],
        help="the sketch must bind NAME (--wait)",
    )
    flash.add_argument(
        "--health-timeout", type=float, metavar="S", help="seconds for the health check (default 10; --wait)"
    )
    flash.add_argument(
        "--proxy",
        default="127.0.0.1:5001",
        metavar="HOST:PORT",
        help="the proxy's call port for health checks",
    )
    commands.add_parser("rollback", parents=[common], help="flash the last sketch that flashed well")
    return parser


def _resolve(args: argparse.Namespace, inherit: bool) -> None:
    """Fill unset options from the daemon's settings (commands) or the defaults (daemon)."""
    recorded = StateDir(args.state_dir).read_settings() if inherit else DaemonSettings()

    def pick(option: str, inherited: Any, default: Any) -> None:
        if getattr(args, option) is None:
            setattr(args, option, inherited if inherited is not None else default)

    pick("openocd", recorded.openocd, _DEFAULT_OPENOCD.program)
    pick("openocd_config_dir", recorded.config_dir, None)
    pick("adapter_config", recorded.adapter_config, _DEFAULT_OPENOCD.adapter_config)
    pick("target_config", recorded.target_config, _DEFAULT_OPENOCD.target_config)
    pick("status", recorded.status, None)
    pick("lock", recorded.lock, str(DEFAULTS.lock_path))
    pick("timeout", recorded.timeout, DEFAULTS.attempt_timeout)
    pick("retries", recorded.retries, DEFAULTS.retries)
    pick("socket", recorded.socket, str(DEFAULT_SOCKET_PATH))


def _settings(args: argparse.Namespace) -> FlasherSettings:
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


def _exit_code(result: str) -> int:
    if result in ("success", "unchanged"):
        return EXIT_OK
    return EXIT_REJECTED if result == "rejected" else EXIT_FAILED


def _report(outcome: Outcome) -> int:
    record = outcome.record
    size = "?" if record.sketch.size is None else record.sketch.size
    print(f"{outcome.result.value}: sketch {record.sketch.short} ({size} bytes): {outcome.reason}")
    if not outcome.ok and record.openocd_log_tail:
        print("openocd output (last lines):", file=sys.stderr)
        for tail_line in record.openocd_log_tail[-15:]:
            print(f"  {tail_line}", file=sys.stderr)
    return _exit_code(outcome.result.value)


def _say_waiting(holder: str) -> None:
    # The daemon (or the M7 programmer) has the SWD pins: say why nothing happens yet.
    print(f"m4-flasher: waiting for the H7 lock, held by {holder}", file=sys.stderr, flush=True)


async def _flash_file(flasher: Flasher, path: Path, source: str) -> int:
    from x8manager.flasher.elfcheck import SketchRejected  # noqa: PLC0415 - see the imports
    from x8manager.flasher.lock import LockTimeout  # noqa: PLC0415
    from x8manager.flasher.safefile import UnsafeFile  # noqa: PLC0415

    try:
        # The user's own path: directories may be symlinks, the file itself may not.
        data = flasher.snapshot(path, strict=False)
    except UnsafeFile as error:
        print(f"m4-flasher: refused: {error.strerror}", file=sys.stderr)
        return EXIT_REJECTED
    except OSError as error:
        print(f"m4-flasher: cannot read {path}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    flasher.state.prepare()
    try:
        job = flasher.admit(data, source=source, origin=str(path))
    except SketchRejected as error:
        return _report(flasher.reject(data, error, source=source, origin=str(path)))
    try:
        outcome = await flasher.flash(job, on_wait=_say_waiting)
    except LockTimeout as error:
        print(f"m4-flasher: {error}", file=sys.stderr)
        return EXIT_FAILED
    return _report(outcome)


def _health(args: argparse.Namespace) -> HealthCheck | None:
    from x8manager.flasher.records import HealthCheck  # noqa: PLC0415 - see the imports

    if not (args.health_method or args.health_bound or args.health_timeout is not None):
        return None
    host, _, port = args.proxy.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--proxy {args.proxy!r}: expected HOST:PORT")
    return HealthCheck(
        method=args.health_method,
        bound=tuple(args.health_bound),
        timeout=args.health_timeout if args.health_timeout is not None else 10.0,
        host=host,
        port=int(port),
    )


def _flash_through_daemon(args: argparse.Namespace) -> int:
    from x8manager.flasher.request import RequestError, send_request  # noqa: PLC0415
    from x8manager.flasher.safefile import UnsafeFile, read_regular_file  # noqa: PLC0415

    try:
        health = _health(args)
    except ValueError as error:
        print(f"m4-flasher: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Read with this user's rights: the daemon (root) never opens a path a client names.
        data = read_regular_file(args.file, DEFAULTS.max_file_bytes, strict=False)
    except UnsafeFile as error:
        return _print_result(
            args, {"ok": False, "result": "rejected", "reason": f"refused: {error.strerror}"}
        )
    except OSError as error:
        print(f"m4-flasher: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    if len(data) > DEFAULTS.max_file_bytes:
        reason = f"{args.file} is too large: more than the {DEFAULTS.max_file_bytes}-byte limit for a sketch"
        return _print_result(args, {"ok": False, "result": "rejected", "reason": reason})

    def progress(event: dict[str, Any]) -> None:
        if args.json:
            return
        kind = event.get("event")
        if kind == "waiting":
            print(f"m4-flasher: {event.get('reason')}", file=sys.stderr, flush=True)
        elif kind in ("flashing", "health", "rollback"):
            detail = event.get("check") or str(event.get("sha256", ""))[:12]
            print(f"m4-flasher: {kind} {detail}", file=sys.stderr, flush=True)

    try:
        result = send_request(
            Path(args.socket),
            data,
            origin=str(Path(args.file).absolute()),
            if_changed=args.if_changed,
            health=health,
            progress=progress,
        )
    except RequestError as error:
        return _print_result(args, {"ok": False, "result": "unknown", "reason": str(error)})
    return _print_result(args, result)


def _print_result(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        sha = str(result.get("sha256") or "?")[:12]
        print(f"{result.get('result')}: sketch {sha}: {result.get('reason')}")
    return _exit_code(str(result.get("result")))


def _cmd_flash(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - see the imports

    from x8manager.flasher.pipeline import Flasher  # noqa: PLC0415

    if args.wait:
        return _flash_through_daemon(args)
    if args.json or args.if_changed or args.health_method or args.health_bound or args.health_timeout:
        print("m4-flasher flash: --json, --if-changed and --health-* need --wait", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_flash_file(Flasher(_settings(args)), args.file, "manual"))


def _cmd_rollback(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - see the imports

    from x8manager.flasher.pipeline import Flasher  # noqa: PLC0415

    flasher = Flasher(_settings(args))
    good = flasher.state.last_good()
    if good is None:
        print("m4-flasher: there is no last good sketch to roll back to", file=sys.stderr)
        return EXIT_USAGE
    print(f"rolling back to sketch {good.sha256[:12]} (flashed {good.flashed_at})")
    return asyncio.run(_flash_file(flasher, flasher.state.last_good_elf, "rollback"))


def _describe_status(status: Status, state: StateDir, lock: Path) -> list[str]:
    lines = []
    holder = lock_holder(lock)
    # The lock and the marker are root's (0600): another user sees only what status.json says.
    private = (lock.exists() and not os.access(lock, os.R_OK)) or (
        state.marker_path.exists() and not os.access(state.marker_path, os.R_OK)
    )
    marker = None if private else state.read_marker()
    if holder:
        lines.append(f"H7 programming lock: held by {holder}")
    if marker is not None and not holder and marker.awaiting_health:
        lines.append(
            f"INTERRUPTED: sketch {marker.record.sketch.short} was written, but its health check did not "
            "finish; the daemon (or the next flash/rollback) will put the last good sketch back"
        )
    elif marker is not None and not holder:
        lines.append(
            f"INTERRUPTED: the flash of sketch {marker.record.sketch.short} did not finish; the daemon "
            "(or the next flash/rollback) will restore a consistent state"
        )
    running = status.in_progress
    if status.state == "flashing" and running is not None and (holder or private):
        lines.append(f"flashing sketch {running.sketch.short} ({running.source}) since {running.started_at}")
    latest = status.latest
    if latest is not None:
        lines.append(f"last result: {latest.result} ({latest.source}, finished {latest.finished_at})")
        lines.append(f"  reason: {latest.reason}")
        lines.append(f"  sketch: sha256 {latest.sketch.sha256 or '?'} ({latest.sketch.size} bytes)")
        if latest.health is not None:
            lines.append(f"  health: {'healthy' if latest.health.get('healthy') else 'FAILED'}")
        if latest.result not in ("success", "written") and latest.openocd_log_tail:
            lines.append("  openocd output (last lines):")
            lines.extend(f"    {line}" for line in latest.openocd_log_tail[-10:])
    else:
        lines.append("no flash recorded yet")
    if len(status.history) > 1:
        lines.append("recent:")
        for entry in status.history[:5]:
            lines.append(f"  {entry.finished_at}  {entry.result:<11} {entry.sketch.short}  {entry.source}")
    good = status.last_good or state.last_good()
    if good:
        lines.append(f"last good sketch: sha256 {good.sha256} ({good.size} bytes), flashed {good.flashed_at}")
    else:
        lines.append("last good sketch: none")
    return lines


def _cmd_status(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir, Path(args.status) if args.status else None)
    try:
        raw = state.read_status() or {}
    except (OSError, ValueError) as error:
        print(f"m4-flasher: cannot read the status: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(raw, indent=2, sort_keys=True))
    else:
        print("\n".join(_describe_status(Status.from_json(raw), state, Path(args.lock))))
    return EXIT_OK


def _cmd_daemon(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - see the imports

    from x8manager.flasher.daemon import FlasherDaemon, StartupError  # noqa: PLC0415
    from x8manager.flasher.pipeline import Flasher  # noqa: PLC0415
    from x8manager.flasher.request import RequestLimits  # noqa: PLC0415

    group = None
    if args.socket_group:
        try:
            group = grp.getgrnam(args.socket_group).gr_gid
        except KeyError:
            log.critical("cannot start: --socket-group %s: no such group", args.socket_group)
            return EXIT_USAGE
    socket_path = None if args.no_socket else Path(args.socket)
    if not 0 < args.request_idle_timeout <= 3600:
        log.critical("cannot start: --request-idle-timeout must be more than 0 and at most 3600 s")
        return EXIT_USAGE
    limits = RequestLimits(idle_seconds=args.request_idle_timeout)
    daemon = FlasherDaemon(Flasher(_settings(args)), args.watch, socket_path, group, limits)
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
