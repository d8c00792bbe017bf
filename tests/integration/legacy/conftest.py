"""Fixtures for the legacy-client tests: the msgpack-rpc-python 0.4.1 venv, the real m4-proxy
daemon and the virtual M4 (the stand-in for the M4 sketch), each a real subprocess.

The types are in tests.support.legacy (tests import them from there, not from this conftest);
the daemons are started by tests.support.live, as for every other test of the live processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.legacy import Legacy, Proxy, Sim, legacy_python
from tests.support.live import m4proxy, m4sim
from x8manager.m4sim import ControlClient, parse_endpoint


@pytest.fixture(scope="session")
def legacy_venv_python() -> Path:
    """The legacy venv's python (built once per session, cached under out/legacy-venv)."""
    return legacy_python()


@pytest.fixture
def m4(tmp_path: Path) -> Iterator[Sim]:
    """m4-sim on a pty, with its control surface."""
    with m4sim(tmp_path) as live:
        control = ControlClient(parse_endpoint(live.control))
        try:
            yield Sim(live.pty, control, live.log)
        finally:
            control.close()
    assert live.process.returncode == 0, live.log.read_text()


@pytest.fixture
def proxy(m4: Sim, tmp_path: Path) -> Iterator[Proxy]:
    """The real m4-proxy daemon on the virtual M4's pty, on free loopback ports."""
    with m4proxy(m4.pty, tmp_path) as live:
        yield Proxy(live.register_port, live.call_port, live.log)
    assert live.process.returncode == 0, live.log.read_text()


@pytest.fixture
def legacy(legacy_venv_python: Path, tmp_path: Path) -> Legacy:
    return Legacy(legacy_venv_python, tmp_path)
