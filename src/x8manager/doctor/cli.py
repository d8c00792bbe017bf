"""``x8-doctor`` / ``x8 doctor``: check the M4 RPC path bottom-up and name the broken layer.

Exit codes: 0 healthy (warnings allowed), 1 a problem was found, 2 usage error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from x8manager.doctor.checks import Options, diagnose
from x8manager.doctor.host import Host

__all__ = ["main"]

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="x8-doctor",
        description="Find which layer of the M4 RPC path is broken (H7 firmware, x8h7 driver, proxy, "
                    "sketch, apps), bottom-up, and say how to fix it.",
        epilog="Exit codes: 0 healthy, 1 a problem found, 2 usage error.")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="read /proc, /sys, /dev, /run and /var below this directory (tests)")
    parser.add_argument("--host", default="127.0.0.1", help="where the proxy listens (127.0.0.1)")
    parser.add_argument("--register-port", type=int, default=5000, help="the proxy's register port (5000)")
    parser.add_argument("--call-port", type=int, default=5001, help="the proxy's call port (5001)")
    parser.add_argument("--expect", action="append", default=[], metavar="METHOD",
                        help="a method the sketch must bind (repeatable); the apps' compose files add "
                             "theirs (label io.x8manager.expect-methods, or M4_PROCEDURES)")
    parser.add_argument("--compose", action="append", type=Path, default=[], metavar="FILE",
                        help="compose file(s) to check (default: the apps in /var/sota/compose-apps)")
    parser.add_argument("--router-socket", metavar="PATH",
                        help="the proxy's router front socket to check, below --root (default: the one "
                             "the running m4-proxy was started with, else /var/run/arduino-router.sock; "
                             "'' skips the check)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per network probe (3)")
    parser.add_argument("--since", default="-10min", help="journal window for recent errors (-10min)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code not in (0, None) else EXIT_OK
    if not args.root.is_dir():
        print(f"x8-doctor: --root {args.root}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    if args.timeout <= 0:
        print("x8-doctor: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    # The flasher's own CLI, installed or (from a checkout) as a module of this interpreter.
    flasher: tuple[str, ...] = ("m4-flasher",)
    if not shutil.which("m4-flasher"):
        flasher = (sys.executable, "-m", "x8manager.flasher.cli")
    options = Options(host=args.host, register_port=args.register_port, call_port=args.call_port,
                      timeout=args.timeout, since=args.since, expect=args.expect, compose=args.compose,
                      flasher=flasher, router_socket=args.router_socket)
    report = diagnose(Host(args.root), options)
    sys.stdout.write(report.as_json() if args.json else report.as_text())
    return EXIT_OK if report.healthy else EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
