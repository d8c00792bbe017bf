"""``x8-apps``: scaffold, lint and run the compose apps of a Portenta X8.

Exit codes: 0 success (lint: clean); 1 the operation failed (lint: problems found); 2 usage error or
unreadable input; 3 Docker (CLI or engine) is not available; 4 the app is managed by aktualizr-lite
and ``--force`` was not given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..common.logs import setup_logging
from . import device, rpcview, scaffold
from .findings import format_human, format_json
from .lint import lint_paths
from .rules import RULES
from .schema import SchemaUnavailable, compose_schema

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("x8-apps")


def _add_lint(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("lint", help="check compose files against the Compose spec and X8 rules",
                                 description="Check compose files: YAML, the Compose specification, "
                                 "then the Portenta X8 rules. PATH is a compose file, an app folder or "
                                 "a containers.git root. Exit 0 clean, 1 problems, 2 unreadable input.")
    parser.add_argument("paths", metavar="PATH", nargs="+", type=Path)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--ignore", metavar="RULE", action="append", default=[],
                        help="skip a rule by id or name (repeatable), e.g. --ignore X8111")
    parser.add_argument("--schema", metavar="FILE",
                        help="the Compose specification JSON schema to use (default: the one "
                        "check-jsonschema ships; env X8_APPS_COMPOSE_SCHEMA)")
    parser.set_defaults(handler=_run_lint)


def _run_lint(args: argparse.Namespace) -> int:
    unknown = [rule for rule in args.ignore
               if rule not in RULES and rule not in {r.name for r in RULES.values()}]
    if unknown:
        print(f"x8-apps lint: unknown rule {', '.join(unknown)} (see x8-apps rules)", file=sys.stderr)
        return EXIT_USAGE
    try:
        schema = compose_schema(args.schema)
    except SchemaUnavailable as error:
        print(f"x8-apps lint: cannot check the Compose specification: {error}", file=sys.stderr)
        return EXIT_USAGE
    report = lint_paths(args.paths, schema, ignore=args.ignore)
    for problem in report.unreadable:
        print(f"x8-apps lint: {problem}", file=sys.stderr)
    if args.format == "json":
        sys.stdout.write(format_json(report.findings, report.files))
    else:
        sys.stdout.write(format_human(report.findings, len(report.files)))
    if report.unreadable or report.refused:
        return EXIT_USAGE
    return EXIT_FAILED if report.has_problems else EXIT_OK


def _add_rules(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("rules", help="list the lint rules")
    parser.set_defaults(handler=_run_rules)


def _run_rules(args: argparse.Namespace) -> int:
    for rule in RULES.values():
        print(f"{rule.rule}  {rule.name:28} {rule.severity.value:8} {rule.summary}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    # argparse exits 2 on usage errors, which is our code for them too.
    parser = argparse.ArgumentParser(
        prog="x8-apps", description="Scaffold, lint and run the compose apps of a Portenta X8.",
        epilog="Exit codes: 0 success (lint: clean), 1 failure (lint: problems found), 2 usage error or "
        "unreadable input, 3 no Docker engine, 4 app managed by aktualizr-lite (use --force).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scaffold.add_parser(commands)
    _add_lint(commands)
    _add_rules(commands)
    device.add_parsers(commands)
    rpcview.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks --compose against its choices, but not a default taken from the environment.
    compose = getattr(args, "compose", "auto")
    if compose not in device.COMPOSE_CHOICES:
        parser.error(f"$X8_APPS_COMPOSE={compose!r}: use one of {', '.join(device.COMPOSE_CHOICES)}")
    setup_logging("x8-apps", verbose=args.verbose)
    handler = args.handler
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
