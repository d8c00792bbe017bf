#!/usr/bin/python3
"""The guest's side of tests/image/test_real_sketch.py, run under systemd-run in the twin.

    real_sketch_guest.py service              a Linux service the sketch calls (registered on port 5000)
    real_sketch_guest.py monitor OUT          append what the monitor port (the sketch's Serial) sends to OUT
    real_sketch_guest.py linux-calls STOP OUT Linux -> M4 calls (M4Client, port 5001) until STOP exists;
                                              OUT is a JSON report, rewritten after every call
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from x8manager.common.logs import setup_logging
from x8manager.rpc import M4Client, RpcService

MONITOR = ("127.0.0.1", 7500)
# The held first call is answered when the second arrives; this only bounds it if none ever does.
HOLD_AT_MOST = 600.0


def serve() -> None:
    """``held_once(tag)``: the first call is answered only when the next one arrives, so its reply is
    late for a sketch that gave up on it, and leaves before the next call's; every later call answers
    at once. ``answer(caller, n)``: ``[caller, n]``."""
    service = RpcService(0, host="127.0.0.1")
    next_call = asyncio.Event()
    late_reply_sent = asyncio.Event()
    calls = 0

    async def held_once(tag: str) -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            next_call.set()
            await late_reply_sent.wait()
            return tag
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(next_call.wait(), HOLD_AT_MOST)
        # RpcService writes this reply before the waiting call runs again: the late reply goes first.
        late_reply_sent.set()
        return tag

    async def answer(caller: int, n: int) -> list[int]:
        return [caller, n]

    service.add("held_once", held_once)
    service.add("answer", answer)
    service.run()


def monitor(out: Path) -> None:
    with socket.create_connection(MONITOR) as sock, out.open("ab") as sink:
        while data := sock.recv(4096):
            sink.write(data)
            sink.flush()


def linux_calls(stop: Path, out: Path) -> None:
    client = M4Client(timeout=120)
    calls = 0
    wrong: list[list[Any]] = []
    while True:
        done = stop.exists()  # looked at before the call: at least one call follows the stop request
        try:
            got: Any = client.call("add", calls, 1000)
        except Exception as exc:  # any failure is a wrong answer, reported with its text
            got = f"{type(exc).__name__}: {exc}"
        if got != calls + 1000:
            wrong.append([calls, got])
        calls += 1
        staging = out.with_suffix(".new")
        staging.write_text(json.dumps({"calls": calls, "wrong": wrong[:20], "done": done}))
        os.replace(staging, out)
        if done:
            return


def main(argv: list[str]) -> None:
    setup_logging("x8-real-sketch")
    command, *args = argv
    if command == "service":
        serve()
    elif command == "monitor":
        monitor(Path(args[0]))
    elif command == "linux-calls":
        linux_calls(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
