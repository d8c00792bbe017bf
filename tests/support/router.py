"""A raw router-front client and the proxy with its router socket, for the router tests.

:class:`Client` packs requests and reads msgpack objects back, byte-level, so tests can send
what no Bridge would (pipelined floods, wrong types, garbage). ``rig`` starts the virtual M4 on a
pty and the proxy in-process with its router socket in a short temporary directory (UNIX socket
paths are limited to 108 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack

from tests.support.proxy import WAIT, m4_on_pty
from x8manager.m4sim import VirtualM4
from x8manager.proxy import M4Proxy, ProxyConfig
from x8manager.proxy.routing import ProviderDone
from x8manager.rpc.framing import Frame

__all__ = ["Client", "FakeProvider", "client", "rig"]


class FakeProvider:
    """A provider for routing-table tests that is never called."""

    def __init__(self, label: str) -> None:
        self.label = label

    def call(self, frame: Frame, done: ProviderDone, *, wait: float) -> Callable[[], None]:
        raise AssertionError("not called here")

    def notify(self, frame: Frame) -> None:
        raise AssertionError("not called here")


class Client:
    """A raw router client: packs requests, reads msgpack objects back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.unpacker = msgpack.Unpacker(raw=False)

    async def next(self, within: float = WAIT) -> Any:
        async with asyncio.timeout(within):
            while True:
                for value in self.unpacker:
                    return value
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the proxy")
                self.unpacker.feed(data)

    async def request(self, msgid: int, method: str, *params: Any) -> Any:
        self.writer.write(msgpack.packb([0, msgid, method, list(params)]))
        return await self.next()

    async def closed(self, within: float = WAIT) -> bool:
        async with asyncio.timeout(within):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionError:
                pass
        return True

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[M4Proxy, VirtualM4, Path]]:
    m4, device = await m4_on_pty(tmp_path)
    with tempfile.TemporaryDirectory(prefix="x8rt") as directory:
        path = Path(directory) / "router.sock"
        proxy = M4Proxy(ProxyConfig(device=device, bind="127.0.0.1", register_port=0, call_port=0,
                                    router_socket=str(path), **options))
        await proxy.start()
        try:
            yield proxy, m4, path
        finally:
            await proxy.stop()
            await m4.stop()


@contextlib.asynccontextmanager
async def client(path: Path) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    one = Client(reader, writer)
    try:
        yield one
    finally:
        one.close()
