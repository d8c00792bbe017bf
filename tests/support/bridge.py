"""An ``arduino-router-bridge`` 0.5.1 app in its own venv, driven from an asyncio test.

The app is tests/bridge/bridge_driver.py running in the venv tests/bridge/make_venv.py builds
(the library from PyPI, unchanged); :class:`BridgeApp` sends it one JSON command per line and
matches the answers, which may come out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.support.venvs import venv_from_script

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "tests" / "bridge"
WAIT = 20.0


def bridge_python() -> Path:
    """The Bridge venv's python (built once, cached under out/bridge-venv)."""
    return venv_from_script(BRIDGE / "make_venv.py")


class BridgeFailed(Exception):
    """The app answered a command with an error (the Bridge raised)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('type')}: {error.get('text')}")
        self.type = error.get("type")
        self.code = error.get("code")
        self.message = error.get("message")
        self.text = error.get("text", "")


class BridgeApp:
    """One app process: ``await app.call("add", 2, 3)``, ``await app.provide("x", "echo")``..."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._event = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            message = json.loads(line)
            if "event" in message:
                self.events.append(message)
                self._event.set()
                continue
            future = self._waiting.pop(message["id"], None)
            if future is None or future.done():
                continue
            if "error" in message:
                future.set_exception(BridgeFailed(message["error"]))
            else:
                future.set_result(message["ok"])
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the Bridge app exited"))

    async def command(self, op: str, within: float = WAIT, **fields: Any) -> Any:
        msgid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[msgid] = future
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": msgid, "op": op, **fields}).encode() + b"\n")
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, within)

    async def call(self, method: str, *args: Any, bridge_timeout: float = 10) -> Any:
        """``bridge.call(method, *args, timeout=bridge_timeout)`` in the app."""
        return await self.command("call", method=method, args=list(args), timeout=bridge_timeout)

    async def call_many(self, method: str, calls: list[list[Any]]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.command("call_many", method=method, calls=calls)
        return result

    async def notify(self, method: str, *args: Any) -> None:
        await self.command("notify", method=method, args=list(args))

    async def provide(self, method: str, kind: str) -> None:
        await self.command("provide", method=method, kind=kind)

    async def unprovide(self, method: str) -> None:
        await self.command("unprovide", method=method)

    async def wait_event(self, name: str, within: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if event["event"] == name:
                        return event
                self._event.clear()
                await self._event.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def kill(self) -> None:
        self.process.kill()
        await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._reader


@contextlib.asynccontextmanager
async def bridge_app(python: Path, address: str, *, connect: bool = True) -> AsyncIterator[BridgeApp]:
    """A Bridge app for *address* (``unix://PATH`` or ``tcp://HOST:PORT``), connected by default."""
    process = await asyncio.create_subprocess_exec(
        str(python), str(BRIDGE / "bridge_driver.py"), address,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    app = BridgeApp(process)
    try:
        await app.wait_event("started")
        if connect:
            assert await app.command("connect", timeout=10) is True, "the Bridge did not connect"
        yield app
    finally:
        await app.stop()
