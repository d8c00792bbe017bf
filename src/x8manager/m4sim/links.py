"""Byte links between the virtual M4 and Linux: a pty, an existing tty/virtio port, TCP or UNIX sockets.

Every link offers the same two coroutines, ``read()`` (``b""`` at end of stream) and ``write()``,
so the virtual M4 does not care which transport carries its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import termios
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Endpoint",
    "FdLink",
    "Link",
    "StreamLink",
    "accept_links",
    "connect",
    "open_device",
    "open_pty",
    "parse_endpoint",
]

log = logging.getLogger(__name__)

READ_SIZE = 4096


class Link(Protocol):
    """A bidirectional byte stream toward Linux."""

    description: str
    # True when every read returns exactly one write of the other side (a datagram link): the
    # virtual M4 then takes each read as one RPMsg message. Ptys and stream sockets do not.
    keeps_write_boundaries: bool

    async def read(self) -> bytes:
        """Return the next bytes, or ``b""`` once the peer has gone away."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of *data* (one ``write()`` where the transport allows it)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``tcp:HOST:PORT`` or ``unix:PATH`` address."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``tcp:HOST:PORT`` (IPv6 hosts in brackets) or ``unix:PATH``; raise ``ValueError`` otherwise."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(f"endpoint {text!r}: expected tcp:HOST:PORT or unix:PATH")
    if kind == "unix":
        return Endpoint("unix", path=rest)
    if kind != "tcp":
        raise ValueError(f"endpoint {text!r}: unknown kind {kind!r} (expected tcp or unix)")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host:
        raise ValueError(f"endpoint {text!r}: expected tcp:HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"endpoint {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"endpoint {text!r}: port {port} out of range")
    return Endpoint("tcp", host=host.strip("[]"), port=port)


class FdLink:
    """A link over a non-blocking file descriptor (pty master, tty, virtio serial port)."""

    keeps_write_boundaries = False

    def __init__(self, fd: int, description: str, *, keep_open: tuple[int, ...] = ()) -> None:
        self.fd = fd
        self.description = description
        # Extra descriptors closed together with this link (the pty slave we hold open so the
        # master never sees EIO while Linux closes and reopens its side).
        self._keep_open = keep_open
        os.set_blocking(fd, False)
        self._closed = False

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                return os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                # EIO on a pty master means every slave descriptor was closed: end of stream.
                if exc.errno == errno.EIO:
                    return b""
                raise
            await _wait_fd(self.fd, loop.add_reader, loop.remove_reader)
        return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            if self._closed:
                raise ConnectionError(f"{self.description}: link closed")
            try:
                written = os.write(self.fd, view)
                view = view[written:]
                continue
            except BlockingIOError:
                pass
            await _wait_fd(self.fd, loop.add_writer, loop.remove_writer)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self.fd, *self._keep_open):
            with contextlib.suppress(OSError):
                os.close(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _wait_fd(fd: int, add: Callable[..., None], remove: Callable[[int], object]) -> None:
    """Wait until the loop reports *fd* ready (``add``/``remove`` are the reader or writer pair)."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    add(fd, _set_done, ready)
    try:
        await ready
    finally:
        remove(fd)


class StreamLink:
    """A link over an asyncio stream pair (TCP or UNIX socket)."""

    keeps_write_boundaries = False

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, description: str) -> None:
        self._reader = reader
        self._writer = writer
        self.description = description

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


def _make_raw(fd: int) -> None:
    """Raw mode: no echo, no line editing, no CR/LF translation; msgpack bytes pass untouched."""
    tty.setraw(fd, termios.TCSANOW)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def open_pty() -> tuple[FdLink, str]:
    """Create a raw pty pair; the virtual M4 keeps the master, Linux opens the returned slave path."""
    master, slave = os.openpty()
    _make_raw(slave)
    path = os.ttyname(slave)
    os.chmod(path, 0o666)
    return FdLink(master, f"pty {path}", keep_open=(slave,)), path


def open_device(path: str) -> FdLink:
    """Open an existing tty, serial or virtio port read-write; a tty is switched to raw mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open device {path}: {exc.strerror}") from exc
    if stat.S_ISCHR(os.fstat(fd).st_mode) and os.isatty(fd):
        _make_raw(fd)
    return FdLink(fd, f"device {path}")


async def connect(endpoint: Endpoint) -> StreamLink:
    """Connect to *endpoint* (the QEMU virtio serial socket, or a proxy listening on TCP)."""
    try:
        if endpoint.kind == "unix":
            reader, writer = await asyncio.open_unix_connection(endpoint.path)
        else:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot connect to {endpoint}: {exc.strerror or exc}") from exc
    return StreamLink(reader, writer, f"connection to {endpoint}")


@contextlib.asynccontextmanager
async def accept_links(endpoint: Endpoint) -> AsyncIterator[asyncio.Queue[StreamLink]]:
    """Listen on *endpoint*; each accepted connection is put on the yielded queue as a link."""
    queue: asyncio.Queue[StreamLink] = asyncio.Queue()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        await queue.put(StreamLink(reader, writer, f"connection from {peer}"))

    server: asyncio.base_events.Server
    if endpoint.kind == "unix":
        server = await asyncio.start_unix_server(accepted, endpoint.path)
    else:
        server = await asyncio.start_server(accepted, endpoint.host, endpoint.port)
    try:
        yield queue
    finally:
        server.close()
        await server.wait_closed()
