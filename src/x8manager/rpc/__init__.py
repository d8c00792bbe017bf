"""MessagePack-RPC for the Portenta X8: framing, M4 clients, and a service helper for apps.

Apps call the M4 through the proxy with :class:`M4Client` (sync) or :class:`AsyncM4Client`,
and expose procedures to the M4 with :class:`RpcService`. The framing helpers
(:mod:`x8manager.rpc.framing`) are shared with the proxy and the virtual M4.
"""

from x8manager.rpc.client import AsyncM4Client, M4Client
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
from x8manager.rpc.server import RpcService

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
