"""The ``m4-proxy`` executable: decides what the process loads, then runs :func:`.cli.main`.

The proxy never speaks TLS, but ``import asyncio`` imports :mod:`ssl` whenever it can, and
with it OpenSSL (libssl, libcrypto and the ``_ssl`` module): about 4.5 MB of the daemon's
resident memory, a fifth of it, for code it never runs. asyncio is written to work without
ssl (its ``except ImportError: ssl = None``), and ``sys.modules["ssl"] = None`` is Python's
documented way to make an import fail, so the daemon marks ssl absent before anything
imports asyncio. uvloop imports ssl itself, so ``--event-loop uvloop|auto`` keeps it.

This is only the executable's choice: programs that import :mod:`x8manager.proxy` (tests,
tools) get ssl as usual.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "needs_ssl"]


def needs_ssl(argv: list[str]) -> bool:
    """Whether the command line picks an event loop that needs ssl (uvloop imports it)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--event-loop", default="asyncio")
    known, _ = probe.parse_known_args(argv)
    return bool(known.event_loop != "asyncio")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not needs_ssl(args) and "asyncio" not in sys.modules:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # None: "not importable"
    from x8manager.proxy.cli import main as run  # noqa: PLC0415 - only after the line above

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
