"""Helpers shared by the tests: import them as ``from tests.support import free_port, wait_for``.

Tests wait on conditions, never on sleeps: ``wait_for`` (blocking) and ``wait_until`` (asyncio) poll
a condition until it holds and fail with what was awaited after a deadline. ``free_port`` gives a
TCP port on 127.0.0.1 that nothing listens on (load and tests stay on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from x8manager.common.net import free_local_port as free_port

__all__ = ["WAIT", "free_port", "stop_process", "wait_for", "wait_until"]

# The default deadline of a wait: only a failing test waits that long, so generous for a loaded
# 2-core CI machine.
WAIT = 30.0
T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, within: float = WAIT) -> T:
    """Poll *condition* until it returns something truthy and return that; fail after *within* s."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.02)


async def wait_until(condition: Callable[[], object], what: str, within: float = WAIT) -> None:
    """Let the event loop run until *condition* holds; fail after *within* seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.005)


def stop_process(process: subprocess.Popen[Any], within: float = 15.0) -> int:
    """SIGTERM *process*, SIGKILL it if it is still there after *within* s; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
