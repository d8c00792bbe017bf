"""The flasher daemon's request API: a local UNIX socket for ``m4-flasher flash FILE --wait``.

One request per connection. The client sends one JSON line, then exactly ``size`` bytes of ELF:

    {"op": "flash", "size": N, "origin": "/path/it/was/read/from", "if_changed": false,
     "health": {"method": "ping", "bound": ["temperature"], "timeout": 10, "host": "127.0.0.1",
                "port": 5001} or null}

The client reads the file with its own rights (a symlink or FIFO is refused there); the daemon,
which runs as root, never opens a path a client names. The daemon answers with JSON lines:
``{"event": "accepted", "sha256": ...}``, ``{"event": "waiting", "reason": ...}`` while another
flash holds the H7 lock, ``{"event": "flashing"}``, ``{"event": "health", ...}``, and last
``{"event": "result", "ok": bool, "result": ..., "reason": ..., "sha256": ..., "record": {...}}``.
A connection that ends without a result line means "outcome unknown", never success.

This module speaks only the socket protocol; the transaction (flash, health check, rollback, all
under one hold of the H7 lock) is :meth:`Flasher.flash_checked`. What a client can make the daemon
hold is bounded: :data:`MAX_CONNECTIONS` connections (one more is told "busy" and closed; an
accept that fails for want of descriptors pauses until one closes), and :class:`RequestLimits`:
a request line, and a body that keeps coming, within ``idle_seconds``, the body within
``body_seconds`` and the sketch limit, written to the spool as it arrives (never held whole in
memory), with at most ``receiving_bytes`` of bodies at once and room left in the state directory
(else "busy"). Lines a client can trigger are rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import resource
import shutil
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x8manager.common.ratelimit import RateLimitedLog
from x8manager.flasher import client
from x8manager.flasher.client import RequestError
from x8manager.flasher.pipeline import Flasher, FlashResult, Outcome
from x8manager.flasher.records import HealthCheck

__all__ = ["RequestError", "RequestLimits", "RequestServer", "send_request"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8192
# Connections served at once: each takes one descriptor (the unit's LimitNOFILE=256 leaves room for
# openocd, the spool, the lock), and is the listening socket's backlog too.
MAX_CONNECTIONS = 32
# Descriptors the daemon keeps for itself whatever clients do: stdio, the event loop, inotify, the
# journal, the H7 and status locks, marker, status and spool files, openocd's pipes, the health
# check's socket. Under a lower descriptor limit the connection bound shrinks to leave them free.
OWN_DESCRIPTORS = 48
ACCEPT_PAUSE = 1.0  # out of descriptors: accept again when a connection closes, or after this
# Keep this much free in the state directory whatever bodies arrive: outcomes must still be written.
SPOOL_HEADROOM = 4 * 1024 * 1024
BODY_CHUNK = 64 * 1024
_OUT_OF_ROOM = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_UCRED = struct.Struct("3i")  # pid, uid, gid
_received = itertools.count()


def _peer(sock: socket.socket) -> str:
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, struct.error):
        return "unknown peer"
    return f"pid {pid} uid {uid}"


def _connection_bound() -> int:
    """MAX_CONNECTIONS, or fewer when the descriptor limit would not leave OWN_DESCRIPTORS free."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    bound = max(1, min(MAX_CONNECTIONS, soft - OWN_DESCRIPTORS))
    if bound < MAX_CONNECTIONS:
        log.warning("descriptor limit %d: the request socket serves %d connections at a time", soft, bound)
    return bound


@dataclass(frozen=True)
class RequestLimits:
    """What clients of the socket can make the daemon hold (``m4-flasher daemon
    --request-idle-timeout`` sets ``idle_seconds``)."""

    idle_seconds: float = 30.0  # no request line, or a body that stops coming, for this long: closed
    body_seconds: float = 120.0  # the whole body, however it trickles
    receiving_bytes: int = 256 * 1024 * 1024  # bodies in the spool at once (8 full sketches)


@dataclass(frozen=True)
class _Request:
    size: int
    origin: str
    if_changed: bool
    health: HealthCheck | None


def _parse_header(line: bytes, max_size: int) -> _Request:
    """The request line, checked whole before anything is received or flashed: a health check
    that could not run (port 70000, a NUL in the host) is refused here, not found out later."""
    try:
        header = json.loads(line)
    except ValueError as error:
        raise ValueError(f"the request line is not JSON: {error}") from None
    if not isinstance(header, dict) or header.get("op") != "flash":
        raise ValueError('the request must be a JSON object with "op": "flash"')
    size = header.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError('"size" must be a byte count')
    if size > max_size:
        raise ValueError(f"the sketch is too large: {size} bytes, more than the {max_size}-byte limit")
    raw_health = header.get("health")
    return _Request(
        size=size,
        origin=str(header.get("origin") or "request"),
        if_changed=bool(header.get("if_changed")),
        health=None if raw_health is None else HealthCheck.from_json(raw_health),
    )


class RequestServer:
    """Serves the socket: the protocol here, each request's transaction in :class:`Flasher`."""

    def __init__(
        self, flasher: Flasher, path: Path, *, group: int | None = None, limits: RequestLimits | None = None
    ) -> None:
        self.flasher = flasher
        self.path = path
        self.group = group
        self.limits = limits or RequestLimits()
        self._receiving = 0  # bytes of bodies announced and not yet done with
        self.max_connections = _connection_bound()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()  # set when a connection closes
        self._log = RateLimitedLog(log)
        self.on_outcome: Callable[[Outcome], None] | None = None

    async def start(self) -> None:
        """Bind the socket: root only (0600), or 0660 for *group*; a stale socket is replaced."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        mode = 0o600 if self.group is None else 0o660
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o777 & ~mode)  # the socket is never reachable with wider rights
        try:
            listener.bind(str(self.path))
            listener.listen(self.max_connections)
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        listener.setblocking(False)
        self._listener = listener
        if self.group is not None:
            os.chown(self.path, -1, self.group)
        os.chmod(self.path, mode)
        self._accepting = asyncio.create_task(self._accept_loop(listener))

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # Requests in flight finish (each is a transaction on the chip), bounded by their own limits.
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as error:
                if error.errno not in _OUT_OF_ROOM:
                    if error.errno in (errno.ECONNABORTED, errno.EINTR, errno.EAGAIN):
                        continue
                    raise
                # Out of descriptors: the connection waits in the backlog. Pause until one of ours
                # closes (or a while), never spin on a listening socket that stays readable.
                self._log.warning(
                    "accept", "request socket: cannot accept a connection (%s): pausing", error.strerror
                )
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ACCEPT_PAUSE):
                        await self._room.wait()
                continue
            if len(self._tasks) >= self.max_connections:
                self._refuse(conn)
                continue
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.set()

    def _refuse(self, conn: socket.socket) -> None:
        """Over the connection limit: say so (if the client's buffer takes it) and close."""
        self._log.warning(
            "busy",
            "request socket: %d connections open, one more refused (%s)",
            self.max_connections,
            _peer(conn),
        )
        line = _line(
            "result",
            ok=False,
            result="busy",
            reason=f"the flasher serves {self.max_connections} requests at a time: try again",
        )
        with contextlib.suppress(OSError), conn:
            conn.setblocking(False)
            conn.send(line)

    async def _serve(self, conn: socket.socket) -> None:
        peer = _peer(conn)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn)
        except OSError:
            conn.close()
            return

        def send(event: str, **fields: Any) -> None:
            if writer.is_closing():
                return  # the client left; the transaction still finishes
            writer.write(_line(event, **fields))

        try:
            outcome = await self._handle(reader, peer, send)
            if outcome is not None:
                send(
                    "result",
                    ok=outcome.result in (FlashResult.SUCCESS, FlashResult.UNCHANGED),
                    result=outcome.result.value,
                    reason=outcome.reason,
                    sha256=outcome.record.sketch.sha256,
                    record=outcome.record.to_json(),
                )
                if self.on_outcome is not None:
                    self.on_outcome(outcome)
        except Exception:
            log.exception("request from %s failed in the flasher", peer)
            send(
                "result",
                ok=False,
                result="error",
                reason="the flasher failed handling the request; see its journal",
            )
        finally:
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self.limits.idle_seconds):
                    await writer.drain()
            writer.close()

    async def _handle(
        self, reader: asyncio.StreamReader, peer: str, send: Callable[..., None]
    ) -> Outcome | None:
        """Read the request, hand it to the flasher; None when the request itself was bad."""
        limits = self.limits
        received = self.flasher.state.spool_file(f"{next(_received):06d}-{os.getpid()}-request.part")
        reserved = 0
        try:
            try:
                async with asyncio.timeout(limits.idle_seconds):
                    line = await reader.readline()
                if len(line) > MAX_HEADER_BYTES or not line.endswith(b"\n"):
                    raise ValueError("the request line is missing, cut off or too long")
                request = _parse_header(line, self.flasher.settings.max_file_bytes)
                busy = self._no_room_for(request.size)
                if busy:
                    self._log.warning("spool-busy", "request from %s refused: %s", peer, busy)
                    send("result", ok=False, result="busy", reason=busy)
                    return None
                reserved, self._receiving = request.size, self._receiving + request.size
                await _receive(reader, request.size, received, limits)
            except (ValueError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as error:
                text = str(error) or type(error).__name__
                if isinstance(error, TimeoutError):
                    text = (
                        f"the client stopped sending for {limits.idle_seconds:g} s, or took more than "
                        f"{limits.body_seconds:g} s for the sketch"
                    )
                self._log.warning("bad-request", "bad request from %s: %.200s", peer, text)
                send("result", ok=False, result="error", reason=f"bad request: {text}")
                return None
            origin = f"{request.origin} (request from {peer})"
            admitted = self.flasher.admit_received(received, source="request", origin=origin)
            self._receiving, reserved = self._receiving - reserved, 0  # in the spool as a job now
            if isinstance(admitted, Outcome):
                return admitted
            send("accepted", sha256=admitted.info.sha256, size=admitted.info.size)
            return await self.flasher.flash_checked(
                admitted, request.health, send, if_changed=request.if_changed
            )
        finally:
            self._receiving -= reserved
            received.unlink(missing_ok=True)

    def _no_room_for(self, size: int) -> str:
        """Why a body of *size* bytes cannot be taken now ("" if it can)."""
        if self._receiving + size > self.limits.receiving_bytes:
            return (
                f"the flasher is receiving {self._receiving} bytes of sketches already "
                f"(at most {self.limits.receiving_bytes} at once): try again"
            )
        try:
            free = shutil.disk_usage(self.flasher.state.spool).free
        except OSError as error:
            return f"the state directory cannot be checked for room ({error.strerror or error})"
        if free < self._receiving + size + SPOOL_HEADROOM:
            return f"the state directory has no room for a {size}-byte sketch ({free} bytes free)"
        return ""


async def _receive(reader: asyncio.StreamReader, size: int, path: Path, limits: RequestLimits) -> None:
    """Write exactly *size* bytes from *reader* to *path* (0600) as they come: bounded memory;
    a body that stalls for ``idle_seconds`` or takes more than ``body_seconds`` is dropped."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb", buffering=0) as spool:  # each chunk goes straight to the file
        remaining = size
        async with asyncio.timeout(limits.body_seconds):
            while remaining:
                async with asyncio.timeout(limits.idle_seconds):
                    chunk = await reader.read(min(BODY_CHUNK, remaining))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", remaining)
                spool.write(chunk)
                remaining -= len(chunk)


def _line(event: str, **fields: Any) -> bytes:
    return (json.dumps({"event": event, **fields}) + "\n").encode()


def send_request(
    path: Path,
    data: bytes,
    *,
    origin: str,
    if_changed: bool,
    health: HealthCheck | None,
    progress: Callable[[dict[str, Any]], None],
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send one request to the daemon at *path*; return its result event (``progress`` sees the rest).

    Raises :class:`RequestError` when the daemon cannot be reached or goes away before its result.
    """
    check = None if health is None else health.to_json()
    return client.send_request(
        path, data, origin=origin, if_changed=if_changed, health=check, progress=progress, timeout=timeout
    )
