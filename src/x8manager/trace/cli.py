"""``x8-trace``: print every message between Linux and the M4 as the proxy sees it.

Attaches to the running proxy's trace socket (no restart); the proxy traces only while a client is
attached. Exit codes: 0 stopped (Ctrl-C, --count reached, the proxy went away), 1 cannot attach,
2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["DEFAULT_SOCKET", "EventFilter", "format_event", "main"]

DEFAULT_SOCKET = "/run/m4-proxy/trace.sock"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
READ_CHUNK = 64 * 1024
# A line longer than this is not an event of ours: skipped, not held in memory.
MAX_LINE = 64 * 1024


@dataclass
class EventFilter:
    """Which events to print: any of *methods*, any of *apps* (empty = all). Drop notes always pass."""

    methods: list[str] = field(default_factory=list)
    apps: list[str] = field(default_factory=list)

    def passes(self, event: dict[str, Any]) -> bool:
        if event.get("type") == "dropped":
            return True
        if self.methods and event.get("method") not in self.methods:
            return False
        return not self.apps or any(_app_matches(wanted, str(event.get("app", ""))) for wanted in self.apps)


def _app_matches(wanted: str, app: str) -> bool:
    """A port number matches the service registered with it; other text, part of the label
    (``router client 2``, ``pid 812``)."""
    if wanted.isdigit():
        return app == f"service on port {wanted}"
    return wanted.lower() in app.lower()


def format_event(event: dict[str, Any]) -> str:
    """One line of text for a human."""
    stamp = event.get("time")
    when = (time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"
            if isinstance(stamp, int | float) else "--:--:--.---")
    if event.get("type") == "dropped":
        return f"{when}  {event.get('count', '?')} events dropped (this trace read too slowly)"
    parts = [when, f"{event.get('dir', '?'):<9}", f"{event.get('front') or '-':<13}",
             f"{event.get('type', '?'):<12}"]
    msgid = event.get("msgid")
    parts.append(f"#{msgid}" if msgid is not None else "#-")
    if event.get("caller_msgid") is not None:
        parts[-1] += f" (caller #{event['caller_msgid']})"
    parts.append(str(event.get("method", "?")))
    parts.append(f"{event.get('size', 0)} B")
    if event.get("latency_ms") is not None:
        parts.append(f"{event['latency_ms']:.3f} ms")
    if event.get("held_ms") is not None:
        parts.append(f"held {event['held_ms']:.0f} ms for a provider")
    if event.get("app"):
        parts.append(f"[{event['app']}]")
    if event.get("error"):
        parts.append(f"error: {event['error']}")
    return "  ".join(parts)


def read_events(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """The events on *sock* until the proxy closes it."""
    pending = b""
    skipping = False
    while True:
        data = sock.recv(READ_CHUNK)
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if skipping:
                skipping = False
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event
        if len(pending) > MAX_LINE:
            pending, skipping = b"", True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="x8-trace",
        description="Print every message between Linux and the M4, both ways, live from the running "
                    "m4-proxy: time, direction, front, msgid, method, size, reply latency, errors.",
        epilog="Needs root (the trace socket is mode 0600). Exit codes: 0 stopped, 1 cannot attach, "
               "2 usage error.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help=f"the proxy's trace socket ({DEFAULT_SOCKET})")
    parser.add_argument("--method", action="append", default=[], metavar="NAME",
                        help="only messages of this method (repeatable)")
    parser.add_argument("--app", action="append", default=[], metavar="APP",
                        help="only messages to or from this app: a registered port number, or part of a "
                             "router client's label such as 'router client 2' or 'pid 812' (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line, as the proxy sends it")
    parser.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop after N printed events (default: until Ctrl-C)")
    return parser


def _attach(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def trace(sock: socket.socket, wanted: EventFilter, *, as_json: bool, count: int, out: TextIO) -> None:
    printed = 0
    for event in read_events(sock):
        if not wanted.passes(event):
            continue
        out.write((json.dumps(event, ensure_ascii=False) if as_json else format_event(event)) + "\n")
        out.flush()
        printed += 1
        if count and printed >= count:
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code not in (0, None) else EXIT_OK
    if args.count < 0:
        print("x8-trace: --count must not be negative", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = _attach(args.socket)
    except PermissionError:
        print(f"x8-trace: {args.socket}: permission denied; the trace socket is root's (run with sudo)",
              file=sys.stderr)
        return EXIT_FAILED
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"x8-trace: no proxy serves a trace at {args.socket}: is m4-proxy running "
              "(systemctl status m4-proxy), and started without --trace-socket ''?", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"x8-trace: cannot attach to {args.socket}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if not args.json:
        print(f"x8-trace: attached to {args.socket}; Ctrl-C stops", file=sys.stderr)
    with sock, contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        trace(sock, EventFilter(args.method, args.app), as_json=args.json, count=args.count, out=sys.stdout)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
