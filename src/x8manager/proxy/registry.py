"""The name → port registry and the register port (5000).

Behaviour clients can observe is kept from the original Go proxy: ``register(port, [names])``
as a request or a notification on a persistent connection, reply bytes ``94 01 <msgid> c0 a0``
with the msgid in Go's smallest signed form, its error texts, and its log line. What crashed
the original (unknown methods, str8/bin names, non-string names, short arrays) is answered
with an error reply instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, Final

import msgpack

from x8manager.rpc.framing import (
    InvalidMessage,
    Request,
    Response,
    StreamDecoder,
    go_pack_int,
    method_name,
    pack_raw_compat,
    parse_message,
)

__all__ = ["INTROSPECTION_METHODS", "Registry", "handle_register_connection", "handle_register_message"]

log = logging.getLogger(__name__)

REGISTER_METHOD: Final = "register"
# Introspection: the registry as a map name → port (our addition; the original has none).
INTROSPECTION_METHODS: Final = ("list", "registry")
READ_CHUNK: Final = 64 * 1024
# A register message is a port and a list of names; nothing legitimate comes near this.
MAX_REGISTER_MESSAGE: Final = 64 * 1024


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


class Registry:
    """Method name → local TCP port. Last writer wins, nothing is removed (as the original).

    With a *path* the registry is also kept in that file (JSON, replaced atomically), so a
    restarted proxy still knows the services that registered before: the original forgot them,
    and services that register only at their own start-up then never heard from the M4 again.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._ports: dict[str, int] = {}
        self.path = path
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("registry file %s unreadable, starting empty: %s", path, exc)
            return
        if not isinstance(saved, dict):
            log.warning("registry file %s does not hold a name → port map, starting empty", path)
            return
        self._ports = {str(name): port for name, port in saved.items()
                       if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535}
        if self._ports:
            log.info("registry restored from %s: %s", path, self.go_map())

    def _save(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(self.snapshot()), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            # Only restarts lose from this; the registration itself stands.
            log.warning("cannot save the registry to %s: %s", self.path, exc)

    def register(self, port: int, names: list[str]) -> None:
        for name in names:
            self._ports[name] = port
        # Byte for byte the Go fmt.Println line users grep the journal for.
        log.info("Registering service on port  %d  with functions  %s", port, self.go_map())
        self._save()

    def port_of(self, name: str) -> int | None:
        return self._ports.get(name)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._ports.items()))

    def go_map(self) -> str:
        return "map[" + " ".join(f"{name}:{port}" for name, port in sorted(self._ports.items())) + "]"

    def __len__(self) -> int:
        return len(self._ports)


def _reply_ok(msgid: int, result_bytes: bytes = b"\xa0") -> bytes:
    # [1, msgid, nil, ""] as the Go proxy encodes it; result_bytes for introspection results.
    return b"\x94\x01" + go_pack_int(msgid) + b"\xc0" + result_bytes


def _reply_error(msgid: int, text: str) -> bytes:
    return b"\x94\x01" + go_pack_int(msgid) + pack_raw_compat(text) + b"\xc0"


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


def handle_register_message(value: Any, registry: Registry) -> bytes | None:
    """Act on one decoded object from the register port; return the reply bytes, if any."""
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
        registry.register(port, names)
        return None if msgid is None else _reply_ok(msgid)
    if message.method in INTROSPECTION_METHODS:
        if msgid is None:
            return None
        encoded: bytes = msgpack.packb(registry.snapshot(), use_bin_type=True)
        return _reply_ok(msgid, encoded)
    log.warning("register port: unknown method %r", message.method)
    return None if msgid is None else _reply_error(msgid, f"'{message.method}' method not found")


async def handle_register_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                     registry: Registry) -> None:
    """Serve one persistent connection: any number of messages until the peer closes."""
    peer = writer.get_extra_info("peername")
    decoder = StreamDecoder(MAX_REGISTER_MESSAGE)
    try:
        while data := await reader.read(READ_CHUNK):
            for item in decoder.feed(data):
                if not isinstance(item.value, list):
                    log.warning("msgpack: Invalid message format (not an array) from %s", peer)
                    continue
                reply = handle_register_message(item.value, registry)
                if reply is not None:
                    writer.write(reply)
            await writer.drain()
    except OSError as exc:
        log.debug("register connection from %s broke: %s", peer, exc)
    finally:
        writer.close()

