"""MessagePack-RPC for the Portenta X8: framing, M4 clients, and a service helper for apps.

Apps call the M4 through the proxy with :class:`M4Client` (sync) or :class:`AsyncM4Client`,
and expose procedures to the M4 with :class:`RpcService`. The framing helpers
(:mod:`x8manager.rpc.framing`) are shared with the proxy and the virtual M4.
"""

import importlib
from typing import TYPE_CHECKING, Any

from x8manager.rpc.errors import RpcConnectionError, RpcError, RpcTimeout, X8RpcError
from x8manager.rpc.framing import (
    M4_MAX_MESSAGE,
    Frame,
    InvalidMessage,
    Message,
    MessageType,
    Notification,
    Request,
    Response,
    StreamDecoder,
    parse_message,
    validate_message,
)

if TYPE_CHECKING:
    from x8manager.rpc.client import AsyncM4Client, M4Client
    from x8manager.rpc.server import RpcService

# Loaded on first use: the proxy and the virtual M4 import only the framing, and the clients
# and the service helper (with what they import) were a quarter of the proxy's own memory.
_LAZY = {"AsyncM4Client": "x8manager.rpc.client", "M4Client": "x8manager.rpc.client",
         "RpcService": "x8manager.rpc.server"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "M4_MAX_MESSAGE",
    "AsyncM4Client",
    "Frame",
    "InvalidMessage",
    "M4Client",
    "Message",
    "MessageType",
    "Notification",
    "Request",
    "Response",
    "RpcConnectionError",
    "RpcError",
    "RpcService",
    "RpcTimeout",
    "StreamDecoder",
    "X8RpcError",
    "parse_message",
    "validate_message",
]
