"""The proxy tests' rig; it lives in tests/support/proxy.py, shared with the router tests."""

from tests.support import free_port
from tests.support.proxy import (
    M4_THREAD_ID,
    WAIT,
    bare_m4,
    exchange,
    m4_on_pty,
    register,
    running_proxy,
    serving,
    wait_for,
)

__all__ = ["M4_THREAD_ID", "WAIT", "bare_m4", "exchange", "free_port", "m4_on_pty", "register",
           "running_proxy", "serving", "wait_for"]
