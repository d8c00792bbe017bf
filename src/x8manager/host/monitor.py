"""The M4's Serial from the laptop: raw bytes both ways between a local end and the proxy's monitor port
(``127.0.0.1:7500`` on the device, reached through the transport's forward or tunnel)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading

__all__ = ["DEFAULT_MONITOR_PORT", "SocketBridge", "pump_terminal"]

DEFAULT_MONITOR_PORT = 7500
CHUNK = 65536


def pump_terminal(sock: socket.socket, stdin_fd: int, stdout_fd: int) -> None:
    """Copy *stdin_fd* to *sock* and *sock* to *stdout_fd* until the device closes the connection.

    At the end of the input the sending half is shut and what the device still sends is shown;
    the device closing the connection ends the pump."""
    reading_input = True
    while True:
        watched: list[int | socket.socket] = [sock, stdin_fd] if reading_input else [sock]
        ready, _, _ = select.select(watched, [], [])
        if sock in ready:
            data = sock.recv(CHUNK)
            if not data:
                return
            os.write(stdout_fd, data)
        if reading_input and stdin_fd in ready:
            data = os.read(stdin_fd, CHUNK)
            if data:
                sock.sendall(data)
            else:
                reading_input = False
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)


class SocketBridge:
    """Bytes both ways between two connected sockets, on a thread, until either side closes or :meth:`stop`.

    *on_closed* is called (on the bridge's thread) when a side closed by itself, not after :meth:`stop`."""

    def __init__(self, first: socket.socket, second: socket.socket, on_closed: object = None) -> None:
        self.sockets = (first, second)
        self._on_closed = on_closed
        self._wake_read, self._wake_write = socket.socketpair()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="x8-monitor-bridge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        first, second = self.sockets
        peer = {first: second, second: first}
        try:
            while True:
                ready, _, _ = select.select([first, second, self._wake_read], [], [])
                if self._wake_read in ready:
                    return
                for sock in ready:
                    data = sock.recv(CHUNK)
                    if not data:
                        if not self._stopping and callable(self._on_closed):
                            self._on_closed()
                        return
                    peer[sock].sendall(data)
        except OSError:
            if not self._stopping and callable(self._on_closed):
                self._on_closed()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        for sock in (*self.sockets, self._wake_read, self._wake_write):
            sock.close()
