"""The request socket's accept loop when the process is out of descriptors: it pauses until a
connection closes (or a while), and never spins on a listening socket that stays readable."""

from __future__ import annotations

import asyncio
import errno
import socket
from pathlib import Path

import pytest
from flasher_unit_support import make_flasher

from tests.support import wait_until
from x8manager.flasher import request
from x8manager.flasher.request import RequestServer


def test_accept_out_of_descriptors_pauses_instead_of_spinning(
    tmp_path: Path, standin_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(request, "ACCEPT_PAUSE", 3600.0)  # only a closing connection ends the pause
    attempts = 0

    async def scenario() -> None:
        nonlocal attempts
        loop = asyncio.get_running_loop()
        real_accept = loop.sock_accept

        async def starved(sock: socket.socket) -> tuple[socket.socket, object]:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return await real_accept(sock)

        monkeypatch.setattr(loop, "sock_accept", starved)
        server = RequestServer(make_flasher(tmp_path), tmp_path / "request.sock")
        await server.start()
        await wait_until(lambda: attempts == 1, "the first accept")
        for _ in range(500):  # a spinning loop would try again on every one of these turns
            await asyncio.sleep(0)
        assert attempts == 1
        server._room.set()  # what a closing connection does
        await wait_until(lambda: attempts == 2, "accept to resume once a descriptor is free")
        await server.close()

    asyncio.run(scenario())
    paused = [
        r for r in caplog.records if "cannot accept a connection (Too many open files)" in r.getMessage()
    ]
    assert len(paused) == 1
