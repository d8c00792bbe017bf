"""Talking to the proxy the way apps do: the registry on the register port, calls on the call port."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from x8manager.rpc.framing import Response, StreamDecoder, pack_request

__all__ = ["CallOutcome", "call", "dial", "registry", "unprovided"]

# A name no sketch binds: a running sketch with RPC.begin() answers rpclib's "could not find
# function" at once, so any answer at all proves the whole path up to the sketch works.
PROBE_METHOD = "__x8_doctor_probe__"
NOT_FOUND = "could not find function"


@dataclass(frozen=True)
class CallOutcome:
    answered: bool
    error: Any = None
    result: Any = None
    reason: str = ""  # why there was no answer


def _exchange(host: str, port: int, request: bytes, timeout: float, *, close_after: bool) -> CallOutcome:
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            decoder = StreamDecoder()
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    return CallOutcome(False, reason="the proxy closed the connection without an answer")
                for frame in decoder.feed_frames(data):
                    if isinstance(frame.message, Response):
                        return CallOutcome(True, frame.message.error, frame.message.result)
                if close_after:
                    continue
    except TimeoutError:
        pass
    except OSError as error:
        return CallOutcome(False, reason=f"cannot talk to {host}:{port}: {error.strerror or error}")
    return CallOutcome(False, reason=f"no answer within {timeout:g} s")


def call(host: str, port: int, method: str, params: list[Any], timeout: float) -> CallOutcome:
    """One call through the call port, as ``msgpackrpc`` clients make it."""
    return _exchange(host, port, pack_request(1, method, params), timeout, close_after=True)


def registry(host: str, port: int, timeout: float) -> dict[str, int] | str:
    """``list`` on the register port: name -> port, or why it could not be had."""
    outcome = _exchange(host, port, pack_request(1, "list", []), timeout, close_after=False)
    if not outcome.answered:
        return outcome.reason
    if outcome.error is not None:
        return f"the proxy refused 'list': {outcome.error!r}"
    if not isinstance(outcome.result, dict):
        return "the proxy's 'list' reply is not a table (Arduino's m4_proxy has no 'list')"
    return {str(name): int(value) for name, value in outcome.result.items() if isinstance(value, int)}


def unprovided(host: str, port: int, timeout: float) -> dict[str, dict[str, Any]] | str:
    """``unprovided`` on the register port: the methods the M4 called that no Linux program
    provides (name -> counts), or why it could not be had."""
    outcome = _exchange(host, port, pack_request(1, "unprovided", []), timeout, close_after=False)
    if not outcome.answered:
        return outcome.reason
    if outcome.error is not None or not isinstance(outcome.result, dict):
        return "this proxy does not report the methods the M4 called in vain"
    return {str(name): entry for name, entry in outcome.result.items() if isinstance(entry, dict)}


def dial(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
