"""``x8``: the Portenta X8 from a laptop, over SSH or adb.

  x8 upload SKETCH.elf        check, copy, await the flasher's verdict (exit 0 flashed, 1 failed, 3 rejected)
  x8 call METHOD [ARG...]     call a procedure bound on the M4; the result as JSON (ARGs are JSON, else text)
  x8 notify METHOD [ARG...]   the same without waiting for a result
  x8 apps push APP_DIR        copy a compose app, build it on the device, start it, show its logs
  x8 status                   the proxy, the flasher and the apps
  x8 doctor [ARG...]          the device's own x8-doctor, its exit code passed on
  x8 monitor                  the M4's Serial both ways (the proxy's monitor port)
  x8 trace [ARG...]           every message on the M4 link, live (the device's x8-trace, as root)

Everything after doctor or trace goes to the device's tool unchanged, options included
(x8 doctor --json, x8 trace --method add; x8 doctor --help shows x8-doctor's own help); a "--"
right after the command is dropped.

The device: --device adb[:SERIAL] or ssh://[USER@]HOST[:PORT] (default $X8_DEVICE); with SSH, keys and
host aliases come from your ssh configuration, or --ssh-config FILE ($X8_SSH_CONFIG).
Exit codes: 0 done, 1 failed (including the device not reached), 2 usage, 3 sketch rejected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .address import AddressError, parse_device, ssh_config_from_env
from .transport import Transport, TransportError, open_transport

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
CALL_PORT = 5001  # the proxy's port for calls into the M4 (x8manager.rpc.DEFAULT_CALL_PORT)
MISSING_COMMAND = 127  # sh's exit code for a command that is not installed
# Commands that hand every argument after them to the device's own tool.
PASS_THROUGH = ("doctor", "trace")
# x8's own options that take a value, as they may come before the command.
_VALUE_OPTIONS = ("--device", "--ssh-config")


def say(message: str) -> None:
    print(f"x8: {message}", file=sys.stderr, flush=True)


def _argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_upload(transport: Transport, args: argparse.Namespace) -> int:
    from .upload import EXIT_REJECTED as REJECTED  # noqa: PLC0415
    from .upload import UploadError, check_locally, upload_sketch  # noqa: PLC0415

    sketch: Path = args.sketch
    try:
        data = sketch.read_bytes()
    except OSError as error:
        say(f"cannot read {sketch}: {error.strerror or error}")
        return EXIT_USAGE
    try:
        if not args.no_local_check:
            reason = check_locally(data)
            if reason is not None:
                print(f"rejected: {sketch} (checked here, not sent): {reason}")
                return REJECTED
        print(f"uploading {sketch} ({len(data)} bytes) to {transport.address}", flush=True)
        verdict = upload_sketch(transport, sketch, timeout=args.timeout)
    except UploadError as error:
        say(str(error))
        return EXIT_FAILED
    print(f"{verdict.result}: sketch {verdict.sha256[:12]}: {verdict.reason}")
    tail = verdict.status.get("openocd_log_tail") or []
    if verdict.result != "success" and tail:
        print("openocd output (last lines):", file=sys.stderr)
        for line in tail[-10:]:
            print(f"  {line}", file=sys.stderr)
    return verdict.exit_code


def cmd_call(transport: Transport, args: argparse.Namespace) -> int:
    from x8manager.rpc import M4Client  # noqa: PLC0415
    from x8manager.rpc.errors import RpcError, X8RpcError  # noqa: PLC0415

    arguments = [_argument(text) for text in args.args]
    with transport.forward(CALL_PORT) as port:
        client = M4Client("127.0.0.1", port, timeout=args.timeout)
        try:
            if args.command == "notify":
                client.notify(args.method, *arguments)
                return EXIT_OK
            result = client.call(args.method, *arguments)
        except RpcError as error:
            print(json.dumps({"error": str(error)}))
            return EXIT_FAILED
        except X8RpcError as error:
            say(f"{args.method}: {error}")
            return EXIT_FAILED
    print(json.dumps(result))
    return EXIT_OK


def _device_output(transport: Transport, argv: list[str]) -> tuple[int, str]:
    result = transport.run(argv, timeout=120)
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace").rstrip()


def cmd_status(transport: Transport, args: argparse.Namespace) -> int:
    from .apps_push import DEV_ROOT_NAME  # noqa: PLC0415

    _, services = _device_output(transport, ["systemctl", "is-active", "m4-proxy", "m4-flasher"])
    json_flag = ["--json"] if args.json else []
    flasher_code, flasher = _device_output(transport, ["m4-flasher", "status", *json_flag])
    apps_argv = ["sh", "-c", f'X8_APPS_DEV_ROOT="$HOME/{DEV_ROOT_NAME}" exec x8-apps list "$@"', "x8-apps",
                 *(["--format", "json"] if args.json else [])]
    apps_code, apps = _device_output(transport, apps_argv)
    states = dict(zip(("m4-proxy", "m4-flasher"), services.split(), strict=False))
    if args.json:
        report: dict[str, Any] = {"device": str(transport.address), "services": states}
        report["flasher"] = _json_or_text(flasher) if flasher_code == 0 else {"error": flasher}
        report["apps"] = _json_or_text(apps) if apps_code == 0 else {"error": apps}
        print(json.dumps(report, indent=2))
    else:
        print(f"device: {transport.address}")
        print("services: " + ", ".join(f"{name} {state}" for name, state in states.items()))
        print("flasher:")
        print("\n".join(f"  {line}" for line in flasher.splitlines()))
        print("apps:")
        print("\n".join(f"  {line}" for line in apps.splitlines()) or "  (none)")
    healthy = all(state == "active" for state in states.values()) and flasher_code == 0
    return EXIT_OK if healthy else EXIT_FAILED


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_doctor(transport: Transport, args: argparse.Namespace) -> int:
    script = 'command -v x8-doctor >/dev/null 2>&1 || exit 127; exec x8-doctor "$@"'
    code = transport.run_attached(["sh", "-c", script, "x8-doctor", *args.device_args])
    if code == MISSING_COMMAND:
        say(f"{transport.address} has no x8-doctor: it comes with a newer x8manager on the device")
        return EXIT_FAILED
    return code


def cmd_trace(transport: Transport, args: argparse.Namespace) -> int:
    # The trace socket is root's: a non-root login (fio on LmP) goes through sudo, without a
    # prompt (the transport has no terminal for one): sudo says so if it needs a password.
    script = ('command -v x8-trace >/dev/null 2>&1 || exit 127; '
              'if [ "$(id -u)" = 0 ]; then exec x8-trace "$@"; fi; exec sudo -n x8-trace "$@"')
    code = transport.run_attached(["sh", "-c", script, "x8-trace", *args.device_args])
    if code == MISSING_COMMAND:
        say(f"{transport.address} has no x8-trace: it comes with a newer x8manager on the device")
        return EXIT_FAILED
    return code


def cmd_apps_push(transport: Transport, args: argparse.Namespace) -> int:
    from .apps_push import AppError, plan_push, push_app  # noqa: PLC0415

    try:
        plan = plan_push(args.app_dir, args.factory)
    except AppError as error:
        say(str(error))
        return EXIT_USAGE
    return push_app(transport, plan, args.build_arg, args.follow)


def cmd_monitor(transport: Transport, args: argparse.Namespace) -> int:
    from .monitor import pump_terminal  # noqa: PLC0415

    with transport.forward(args.port) as port:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError as error:
            say(f"cannot connect to the monitor port {args.port} on {transport.address}: {error}")
            return EXIT_FAILED
        with sock:
            sock.settimeout(None)
            say(f"the M4's Serial on {transport.address} (port {args.port}); Ctrl-C quits")
            with contextlib.suppress(KeyboardInterrupt):
                pump_terminal(sock, sys.stdin.fileno(), sys.stdout.fileno())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .monitor import DEFAULT_MONITOR_PORT  # noqa: PLC0415

    # No abbreviations (--dev): split_pass_through must know x8's options by their full names.
    parser = argparse.ArgumentParser(prog="x8", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=os.environ.get("X8_DEVICE"),
                        help="adb[:SERIAL] or ssh://[USER@]HOST[:PORT] (default $X8_DEVICE)")
    parser.add_argument("--ssh-config", type=Path,
                        default=ssh_config_from_env(),
                        help="an ssh_config file for ssh -F (default $X8_SSH_CONFIG, else your own)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upload = commands.add_parser("upload", help="flash a sketch and report the flasher's verdict")
    upload.add_argument("sketch", type=Path, metavar="SKETCH.elf")
    upload.add_argument("--no-local-check", action="store_true",
                        help="send the file without checking it here (the device's flasher still does)")
    upload.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the verdict")
    upload.set_defaults(handler=cmd_upload)

    for verb, what in (("call", "call a procedure on the M4 and print its result as JSON"),
                       ("notify", "send a notification to the M4 (no result)")):
        call = commands.add_parser(verb, help=what)
        call.add_argument("method")
        call.add_argument("args", nargs="*", metavar="ARG", help="JSON values (2, \"a\", [1]); else text")
        call.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
        call.set_defaults(handler=cmd_call)

    apps = commands.add_parser("apps", help="compose apps on the device")
    apps_commands = apps.add_subparsers(dest="apps_command", required=True, metavar="APPS_COMMAND")
    push = apps_commands.add_parser("push", help="copy, build and start a compose app, then show its logs")
    push.add_argument("app_dir", type=Path, metavar="APP_DIR")
    push.add_argument("--follow", "-f", action="store_true", help="follow the logs until Ctrl-C")
    push.add_argument("--factory", help="FACTORY for the compose file's images (default $FACTORY or local)")
    push.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                      help="passed to docker build (repeatable)")
    push.set_defaults(handler=cmd_apps_push)

    status = commands.add_parser("status", help="the proxy, the flasher and the apps on the device")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    # Their arguments never reach argparse (split_pass_through): ARG is for the usage text only.
    doctor = commands.add_parser("doctor", usage="x8 doctor [ARG...]",
                                 help="run x8-doctor ARG... on the device (x8 doctor --help: its options)")
    doctor.set_defaults(handler=cmd_doctor)

    trace = commands.add_parser("trace", usage="x8 trace [ARG...]",
                                help="run x8-trace ARG... on the device: every message on the M4 link")
    trace.set_defaults(handler=cmd_trace)

    monitor = commands.add_parser("monitor", help="the M4's Serial both ways")
    monitor.add_argument("--port", type=int, default=DEFAULT_MONITOR_PORT,
                         help=f"the proxy's monitor port on the device (default {DEFAULT_MONITOR_PORT})")
    monitor.set_defaults(handler=cmd_monitor)
    return parser


def split_pass_through(argv: list[str]) -> tuple[list[str], list[str]]:
    """x8's own arguments (up to and including a :data:`PASS_THROUGH` command) and the device
    tool's, unchanged but for one leading ``--``. argparse cannot do this: REMAINDER after a
    subcommand still takes ``--json`` for an option of x8's and refuses it."""
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument in _VALUE_OPTIONS:
            index += 2
        elif argument.startswith("-"):
            index += 1  # -h, --device=..., or a mistake argparse names
        elif argument in PASS_THROUGH:
            rest = argv[index + 1:]
            return argv[:index + 1], rest[1:] if rest[:1] == ["--"] else rest
        else:
            break
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, device_args = split_pass_through(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    args.device_args = device_args
    try:
        address = parse_device(args.device)
    except AddressError as error:
        say(str(error))
        return EXIT_USAGE
    if args.ssh_config is not None and not args.ssh_config.is_file():
        say(f"--ssh-config {args.ssh_config}: no such file")
        return EXIT_USAGE
    transport = open_transport(address, args.ssh_config)
    try:
        code: int = args.handler(transport, args)
    except TransportError as error:
        say(str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
