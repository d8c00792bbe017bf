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

A request is a transaction under the H7 lock: flash, then the health check, and if that fails
the last good sketch is flashed back before the lock is released, so no other flash comes between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x8manager.flasher import client
from x8manager.flasher.client import RequestError
from x8manager.flasher.elfcheck import SketchRejected
from x8manager.flasher.health import HealthCheck, run_health_check
from x8manager.flasher.lock import LockTimeout, h7_lock
from x8manager.flasher.pipeline import Flasher, FlashResult, Job, Outcome

__all__ = ["RequestError", "RequestServer", "send_request"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8192
HEADER_SECONDS = 30.0  # a client that connects and says nothing is dropped
BODY_SECONDS = 120.0
_UCRED = struct.Struct("3i")  # pid, uid, gid


def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError, struct.error):
        return "unknown peer"
    return f"pid {pid} uid {uid}"


@dataclass(frozen=True)
class _Request:
    size: int
    origin: str
    if_changed: bool
    health: HealthCheck | None


def _parse_header(line: bytes, max_size: int) -> _Request:
    try:
        header = json.loads(line)
    except ValueError as error:
        raise ValueError(f"the request line is not JSON: {error}") from None
    if not isinstance(header, dict) or header.get("op") != "flash":
        raise ValueError('the request must be a JSON object with "op": "flash"')
    size = header.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_size:
        raise ValueError(f'"size" must be a byte count from 0 to {max_size}')
    raw_health = header.get("health")
    health = None
    if raw_health is not None:
        if not isinstance(raw_health, dict):
            raise ValueError('"health" must be an object or null')
        bound = raw_health.get("bound") or []
        timeout = raw_health.get("timeout", 10.0)
        method = raw_health.get("method")
        if not (isinstance(bound, list) and all(isinstance(name, str) and name for name in bound)):
            raise ValueError('"health.bound" must be a list of procedure names')
        if method is not None and not (isinstance(method, str) and method):
            raise ValueError('"health.method" must be a procedure name')
        if not isinstance(timeout, int | float) or not 0 < timeout <= 600:
            raise ValueError('"health.timeout" must be seconds, more than 0 and at most 600')
        health = HealthCheck(
            method=method,
            bound=tuple(bound),
            timeout=float(timeout),
            host=str(raw_health.get("host") or "127.0.0.1"),
            port=int(raw_health.get("port") or 5001),
        )
    return _Request(
        size=size,
        origin=str(header.get("origin") or "request"),
        if_changed=bool(header.get("if_changed")),
        health=health,
    )


class RequestServer:
    """Serves the socket; each request runs as one transaction under the H7 lock."""

    def __init__(self, flasher: Flasher, path: Path, *, group: int | None = None) -> None:
        self.flasher = flasher
        self.path = path
        self.group = group
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_outcome: Callable[[Outcome], None] | None = None

    async def start(self) -> None:
        """Bind the socket: root only (0600), or 0660 for *group*; a stale socket is replaced."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        mode = 0o600 if self.group is None else 0o660
        old_umask = os.umask(0o777 & ~mode)  # the socket is never reachable with wider rights
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
        os.chmod(self.path, mode)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # Requests in flight finish (each is a transaction on the chip), bounded by their own limits.
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = _peer(writer)

        def send(event: str, **fields: Any) -> None:
            if writer.is_closing():
                return  # the client left; the transaction still finishes
            writer.write((json.dumps({"event": event, **fields}) + "\n").encode())

        try:
            try:
                async with asyncio.timeout(HEADER_SECONDS):
                    line = await reader.readline()
                if len(line) > MAX_HEADER_BYTES or not line.endswith(b"\n"):
                    raise ValueError("the request line is missing, cut off or too long")
                request = _parse_header(line, self.flasher.settings.max_file_bytes)
                async with asyncio.timeout(BODY_SECONDS):
                    data = await reader.readexactly(request.size)
            except (ValueError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as error:
                log.warning("bad request from %s: %s", peer, error or "incomplete")
                send("result", ok=False, result="error", reason=f"bad request: {error or 'incomplete'}")
                return
            outcome = await self._transaction(request, data, peer, send)
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
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            self._tasks.discard(task)

    async def _transaction(
        self, request: _Request, data: bytes, peer: str, send: Callable[..., None]
    ) -> Outcome:
        flasher = self.flasher
        origin = f"{request.origin} (request from {peer})"
        try:
            job = flasher.admit(data, source="request", origin=origin)
        except SketchRejected as error:
            return flasher.reject(data, error, source="request", origin=origin)
        except OSError as error:
            return flasher.spool_failed(data, error, source="request", origin=origin)
        send("accepted", sha256=job.info.sha256, size=job.info.size)
        purpose = f"m4-flasher request {job.info.sha256[:12]}"
        try:
            async with h7_lock(
                flasher.settings.lock_path,
                purpose,
                wait_limit=flasher.settings.lock_timeout,
                on_wait=lambda holder: send("waiting", reason=f"waiting for the H7 lock, held by {holder}"),
            ):
                return await self._locked(request, job, send)
        except LockTimeout as error:
            job.spool_path.unlink(missing_ok=True)
            return flasher.record_summary(FlashResult.BUSY, f"the H7 is busy: {error}", job)
        finally:
            job.spool_path.unlink(missing_ok=True)

    async def _locked(self, request: _Request, job: Job, send: Callable[..., None]) -> Outcome:
        flasher = self.flasher
        running = flasher.state.status().running_sha256()
        if request.if_changed and running == job.info.sha256 and flasher.state.read_marker() is None:
            if request.health is None:
                return flasher.record_summary(
                    FlashResult.UNCHANGED, "the M4 already runs this verified sketch: not flashed", job
                )
            send("health", check=request.health.describe())
            health = await run_health_check(request.health)
            result = FlashResult.UNCHANGED if health.healthy else FlashResult.UNHEALTHY
            reason = f"the M4 already runs this verified sketch: not flashed; health: {health.reason}"
            return flasher.record_summary(result, reason, job, health=health.to_json())
        send("flashing", sha256=job.info.sha256)
        outcome = await flasher.flash_locked(job, promote=request.health is None)
        if not outcome.ok or request.health is None:
            return outcome
        # The transaction is open (the marker says "health") until one of the verdicts below is
        # recorded: a flasher killed before that puts the last good sketch back when it restarts.
        send("health", check=request.health.describe())
        health = await run_health_check(request.health)
        if health.healthy:
            try:
                flasher.promote(job, outcome.record)
                kept = ""
            except OSError as error:
                kept = f"; but it could not be kept as the last good sketch ({error}): the previous one stays"
            verdict = flasher.record_summary(
                FlashResult.SUCCESS,
                f"flashed, verified and healthy: {health.reason}{kept}",
                job,
                health=health.to_json(),
            )
            flasher.close_transaction()
            return verdict
        good = flasher.last_good_job("rollback", f"health check of {job.info.sha256[:12]} failed")
        if good is None:
            restored = "no last good sketch to put back: the M4 runs the unhealthy sketch"
        else:
            send("rollback", sha256=good.info.sha256)
            back = await flasher.flash_instead_locked(good)  # ends the transaction, as any flash does
            restored = (
                f"last good sketch {good.info.sha256[:12]} restored"
                if back.ok
                else f"restoring last good sketch {good.info.sha256[:12]} failed: {back.reason}"
            )
        verdict = flasher.record_summary(
            FlashResult.UNHEALTHY, f"{health.reason}; {restored}", job, health=health.to_json()
        )
        if good is None:
            flasher.close_transaction()  # recorded: the unhealthy sketch stays, nothing to recover
        return verdict


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
    check = None
    if health is not None:
        check = {"method": health.method, "bound": list(health.bound), "timeout": health.timeout,
                 "host": health.host, "port": health.port}
    return client.send_request(path, data, origin=origin, if_changed=if_changed, health=check,
                               progress=progress, timeout=timeout)
