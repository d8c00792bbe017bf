"""The register port (5000): legacy services put their names into the routing table.

Behaviour clients can observe is kept from the original Go proxy: ``register(port, [names])``
as a request or a notification on a persistent connection, reply bytes ``94 01 <msgid> c0 a0``
with the msgid in Go's smallest signed form, its error texts, and its log line. What crashed
the original (unknown methods, str8/bin names, non-string names, short arrays) is answered
with an error reply instead. Unlike the original, a name a live service holds is not taken
over by another port (see :mod:`.routing`): that registration gets an error reply.

Our additions: ``list``/``registry`` (the legacy names, name → port) and ``unprovided`` (the
methods the M4 called that no Linux program provides, see :meth:`.dispatch.M4Dispatcher.unprovided`;
``x8-doctor`` reads it). The listeners and connection limits are :mod:`.registerport`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from x8manager.proxy.routing import RoutingTable
from x8manager.rpc.framing import (
    InvalidMessage,
    Request,
    Response,
    StreamDecoder,
    go_pack_int,
    method_name,
    parse_message,
    raw_error_reply,
)

__all__ = ["INTROSPECTION_METHODS", "UNPROVIDED_METHOD", "RegisterContext", "handle_register_connection",
           "handle_register_message"]

log = logging.getLogger(__name__)

REGISTER_METHOD: Final = "register"
# Introspection: the registry as a map name → port (our addition; the original has none).
INTROSPECTION_METHODS: Final = ("list", "registry")
# What the M4 called that nobody provides: name → counts (our addition, for x8-doctor).
UNPROVIDED_METHOD: Final = "unprovided"
READ_CHUNK: Final = 64 * 1024
# A register message is a port and a list of names; nothing legitimate comes near this.
MAX_REGISTER_MESSAGE: Final = 64 * 1024
# A register connection with nothing to read, or replies not read, for this long is closed.
IDLE_TIMEOUT: Final = 60.0
# Replies a peer has not read yet, in bytes, before the proxy stops reading from it.
UNREAD_REPLIES: Final = 64 * 1024


def _go_type(value: Any) -> str:
    """The Go type name the original proxy's error texts use for a decoded value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str | bytes):
        return "[]uint8"
    if isinstance(value, list):
        return "[]reflect.Value"
    if isinstance(value, dict):
        return "map[interface {}]interface {}"
    if value is None:
        return "<nil>"
    return type(value).__name__


def _reply_ok(msgid: int, result_bytes: bytes = b"\xa0") -> bytes:
    # [1, msgid, nil, ""] as the Go proxy encodes it; result_bytes for introspection results.
    return b"\x94\x01" + go_pack_int(msgid) + b"\xc0" + result_bytes


def _reply_error(msgid: int, text: str) -> bytes:
    return raw_error_reply(go_pack_int(msgid), text)


def _nothing_unprovided() -> dict[str, dict[str, Any]]:
    return {}


@dataclass
class RegisterContext:
    """What the register port needs: the routing table, and what the M4 called in vain."""

    table: RoutingTable
    unprovided: Callable[[], dict[str, dict[str, Any]]] = field(default=_nothing_unprovided)


class RegisterError(ValueError):
    """A register call the proxy refuses; the text goes back to the caller."""


def _parse_register(params: list[Any]) -> tuple[int, list[str]]:
    if len(params) != 2:
        raise RegisterError(f"The number of the given arguments ({len(params)}) doesn't match the arity (2)")
    port, names = params
    if not isinstance(port, int) or isinstance(port, bool):
        raise RegisterError(f"The type of argument #0 doesn't match (uint expected, got {_go_type(port)})")
    if not 1 <= port <= 65535:
        raise RegisterError(f"port {port} out of range 1..65535")
    if not isinstance(names, list):
        raise RegisterError(
            f"The type of argument #1 doesn't match ([]reflect.Value expected, got {_go_type(names)})")
    decoded: list[str] = []
    for index, name in enumerate(names):
        try:
            decoded.append(method_name(name))
        except InvalidMessage:
            raise RegisterError(f"The type of argument #1 element {index} doesn't match "
                                f"(string expected, got {_go_type(name)})") from None
    return port, decoded


async def handle_register_message(value: Any, context: RegisterContext, peer: object = None) -> bytes | None:
    """Act on one decoded object from the register port; return the reply bytes, if any."""
    table = context.table
    try:
        message = parse_message(value)
    except InvalidMessage as exc:
        log.warning("msgpack: Invalid message format (%s)", exc.reason)
        return None if exc.msgid is None else _reply_error(exc.msgid, f"Invalid message format: {exc.reason}")
    if isinstance(message, Response):
        log.warning("msgpack: Invalid message format (a response sent to the register port)")
        return None
    msgid = message.msgid if isinstance(message, Request) else None
    if message.method == REGISTER_METHOD:
        try:
            port, names = _parse_register(message.params)
        except RegisterError as exc:
            log.warning("msgpack: %s", exc)
            return None if msgid is None else _reply_error(msgid, str(exc))
        refused = await table.register_legacy(port, names, peer=peer)
        if msgid is None:
            return None
        return _reply_error(msgid, "; ".join(refused)) if refused else _reply_ok(msgid)
    if message.method in INTROSPECTION_METHODS:
        if msgid is None:
            return None
        encoded: bytes = msgpack.packb(table.snapshot(), use_bin_type=True)
        return _reply_ok(msgid, encoded)
    if message.method == UNPROVIDED_METHOD:
        if msgid is None:
            return None
        return _reply_ok(msgid, msgpack.packb(context.unprovided(), use_bin_type=True))
    log.warning("register port: unknown method %r", message.method)
    return None if msgid is None else _reply_error(msgid, f"'{message.method}' method not found")


async def handle_register_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                     context: RegisterContext) -> None:
    """Serve one persistent connection: any number of messages until the peer closes.

    A peer that goes quiet for :data:`IDLE_TIMEOUT` is closed (a registration takes one
    message), and one that does not read its replies is not read from either: past
    :data:`UNREAD_REPLIES` bytes of unread replies the loop waits for the peer, at most
    :data:`IDLE_TIMEOUT`, so pipelined ``list`` requests cannot pile up replies in memory.
    """
    peer = writer.get_extra_info("peername")
    decoder = StreamDecoder(MAX_REGISTER_MESSAGE)
    transport = writer.transport
    try:
        while True:
            async with asyncio.timeout(IDLE_TIMEOUT):
                data = await reader.read(READ_CHUNK)
            if not data:
                break
            for item in decoder.feed(data):
                if not isinstance(item.value, list):
                    log.warning("msgpack: Invalid message format (not an array) from %s", peer)
                    continue
                reply = await handle_register_message(item.value, context, peer)
                if reply is not None:
                    writer.write(reply)
                    if transport.get_write_buffer_size() > UNREAD_REPLIES:
                        async with asyncio.timeout(IDLE_TIMEOUT):
                            await writer.drain()
            await writer.drain()
    except TimeoutError:
        log.info("register connection from %s idle or not reading for %g s: closed", peer, IDLE_TIMEOUT)
    except OSError as exc:
        log.debug("register connection from %s broke: %s", peer, exc)
    finally:
        writer.close()
