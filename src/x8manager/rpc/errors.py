"""Exceptions raised by the client and server library."""

from __future__ import annotations

from typing import Any

__all__ = ["RpcConnectionError", "RpcError", "RpcTimeout", "X8RpcError"]


class X8RpcError(Exception):
    """Base of every error the RPC library raises."""


class RpcError(X8RpcError):
    """The remote side answered with an error; ``error`` holds what it sent (any msgpack value)."""

    def __init__(self, method: str, error: Any) -> None:
        text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        super().__init__(f"{method}: remote error: {text}")
        self.method = method
        self.error = error


class RpcTimeout(X8RpcError, TimeoutError):
    """No reply in time. Also a ``TimeoutError``, so ``except TimeoutError`` keeps working."""


class RpcConnectionError(X8RpcError, ConnectionError):
    """The peer could not be reached, or the connection broke before a reply."""
