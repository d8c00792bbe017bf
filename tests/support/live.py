"""The real daemons as subprocesses on loopback: m4-sim on a pty and m4-proxy in front of it.

For tests that need what a user runs (fd counts, the journal-bound log, signals), not the
in-process proxy of ``tests/integration/proxy/proxy_harness.py``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support import free_port, stop_process

START_TIMEOUT = 30.0
T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, within: float = 10.0) -> T:
    """Poll *check* until it returns something other than None; fail with *what* at the deadline."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.02)


def stop(process: subprocess.Popen[str]) -> int:
    return stop_process(process)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class LiveM4:
    process: subprocess.Popen[str]
    pty: str
    control: str  # tcp:HOST:PORT of its control surface
    log: Path


@dataclass
class LiveProxy:
    process: subprocess.Popen[str]
    register_port: int
    call_port: int
    log: Path
    router_socket: str
    trace_socket: str


@contextlib.contextmanager
def m4sim(tmp: Path, *args: str) -> Iterator[LiveM4]:
    """m4-sim on a pty with its control surface on loopback."""
    log = tmp / "m4-sim.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "x8manager.m4sim.cli", "--pty", "--control", "tcp:127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
    info: dict[str, str] = {}
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.strip() == "ready":
                break
            key, _, value = line.strip().partition("=")
            info[key] = value
        else:
            raise AssertionError(f"m4-sim did not start:\n{log.read_text()}")
        yield LiveM4(process, info["pty"], info["control"], log)
    finally:
        stop(process)
        process.stdout.close()


def _port_open(port: int) -> bool | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return None


@contextlib.contextmanager
def m4proxy(device: str, tmp: Path, *args: str) -> Iterator[LiveProxy]:
    """The m4-proxy daemon on *device*, bound to loopback on free ports, its router and trace
    sockets in *tmp* (not the host's /var/run and /run, which parallel test runs would share)."""
    log = tmp / "m4-proxy.log"
    register_port, call_port = free_port(), free_port()
    router_socket, trace_socket = str(tmp / "router.sock"), str(tmp / "trace.sock")
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "x8manager.proxy.cli", "--device", device, "--bind", "127.0.0.1",
             "--register-port", str(register_port), "--call-port", str(call_port),
             # The router and trace sockets in the test's directory, the monitor port off: test
             # runs side by side do not collide on fixed default paths and ports.
             "--router-socket", router_socket, "--trace-socket", trace_socket, "--monitor-listen", "",
             *args],
            stdout=stderr, stderr=stderr, text=True)
    try:
        for port in (register_port, call_port):
            eventually(lambda port=port: None if process.poll() is not None else _port_open(port),
                       f"m4-proxy listening on {port}", START_TIMEOUT)
            if process.poll() is not None:
                raise AssertionError(f"m4-proxy exited with {process.returncode}:\n{log.read_text()}")
        yield LiveProxy(process, register_port, call_port, log, router_socket, trace_socket)
    finally:
        stop(process)
