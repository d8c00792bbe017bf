"""Fixtures for the legacy-client tests: the msgpack-rpc-python 0.4.1 venv, the real m4-proxy
daemon and the virtual M4 (the stand-in for the M4 sketch), each a real subprocess."""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support import free_port
from tests.support.live import stop
from x8manager.m4sim import ControlClient, parse_endpoint

ROOT = Path(__file__).resolve().parents[3]
LEGACY = ROOT / "tests" / "legacy"
START_TIMEOUT = 30.0
T = TypeVar("T")


def _load_make_venv():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("legacy_make_venv", LEGACY / "make_venv.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    """The legacy venv's python (built once, cached under out/legacy-venv)."""
    python: Path = _load_make_venv().ensure_venv()
    return python


def wait_for_port(port: int, process: subprocess.Popen[str], log: Path) -> None:
    """Poll until *port* accepts connections, failing early if *process* died."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} not open after {START_TIMEOUT} s:\n{log.read_text()}")


def read_fd(fd: int, within: float = 10.0) -> bytes:
    """One read from a (non-blocking) descriptor, waiting at most *within* seconds for data."""
    ready, _, _ = select.select([fd], [], [], within)
    assert ready, f"nothing to read within {within} s"
    return os.read(fd, 1024)


@dataclass
class Sim:
    pty: str
    control: ControlClient
    log: Path


@pytest.fixture
def m4(tmp_path: Path) -> Iterator[Sim]:
    """m4-sim on a pty, with its control surface."""
    log = tmp_path / "m4-sim.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "x8manager.m4sim.cli", "--pty", "--control", "tcp:127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    info: dict[str, str] = {}
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == "ready":
            break
        key, _, value = line.strip().partition("=")
        info[key] = value
    else:
        raise AssertionError(f"m4-sim did not start:\n{log.read_text()}")
    control = ControlClient(parse_endpoint(info["control"]))
    try:
        yield Sim(info["pty"], control, log)
    finally:
        control.close()
        assert stop(process) == 0, log.read_text()


@dataclass
class Proxy:
    register_port: int
    call_port: int
    log: Path


@pytest.fixture
def proxy(m4: Sim, tmp_path: Path) -> Iterator[Proxy]:
    """The real m4-proxy daemon on the virtual M4's pty, on free loopback ports."""
    log = tmp_path / "m4-proxy.log"
    register_port, call_port = free_port(), free_port()
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "x8manager.proxy.cli",
                "--device",
                m4.pty,
                "--bind",
                "127.0.0.1",
                "--register-port",
                str(register_port),
                "--call-port",
                str(call_port),
                "--router-socket",  # fixed default paths/ports: off, tests run side by side
                "",
                "--monitor-listen",
                "",
            ],
            stdout=stderr,
            stderr=stderr,
            text=True,
        )
    try:
        wait_for_port(register_port, process, log)
        wait_for_port(call_port, process, log)
        yield Proxy(register_port, call_port, log)
    finally:
        assert stop(process) == 0, log.read_text()


@dataclass
class Legacy:
    python: Path
    tmp: Path

    def run(self, script: str, *args: str | int, timeout: float = 60, **env: str) -> list[str]:
        """Run a tests/legacy script to completion in the legacy venv; return its stdout lines."""
        done = subprocess.run(
            [str(self.python), str(LEGACY / script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **env),
        )
        assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done.stdout.splitlines()

    def start(self, script: str, *args: str | int) -> subprocess.Popen[str]:
        """Start a long-running tests/legacy script; its stderr goes to a log file."""
        log = open(self.tmp / f"{script}.log", "w")  # noqa: SIM115 - closed with the process below
        process = subprocess.Popen(
            [str(self.python), str(LEGACY / script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        return process


@pytest.fixture
def legacy(legacy_python: Path, tmp_path: Path) -> Iterator[Legacy]:
    yield Legacy(legacy_python, tmp_path)
