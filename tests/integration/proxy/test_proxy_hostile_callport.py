"""Issue 11 item 5: whatever its bytes, every call-port connection ends, against the real daemon.

A message whose first element is nested 1,000 deep made ``parse_message`` raise RecursionError
inside the call port's read callback: the connection was never answered nor closed, so 300 of
them (300 KB) held 300 descriptors for good.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.live import eventually, m4proxy, m4sim, open_fds
from x8manager.rpc import M4Client

DEEP_TYPE = b"\x94" + b"\x91" * 1000 + b"\x00" + b"\x01\xa1m\x90"
DEEP_PARAMS = b"\x94\x00\x01\xa1m" + b"\x91" * 1000 + b"\x90"
FLOOD = 300


def ended(sock: socket.socket) -> bool:
    """The proxy answered and closed, or reset: nothing more will come."""
    try:
        while data := sock.recv(4096):
            del data
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def test_deeply_nested_messages_all_end_and_release_their_descriptors(tmp_path: Path) -> None:
    with m4sim(tmp_path) as m4, m4proxy(m4.pty, tmp_path) as proxy:
        client = M4Client("127.0.0.1", proxy.call_port)
        assert client.call("add", 2, 3) == 5
        baseline = open_fds(proxy.process.pid)
        sockets = []
        try:
            for index in range(FLOOD):
                sock = socket.create_connection(("127.0.0.1", proxy.call_port))
                sock.sendall(DEEP_TYPE if index % 2 else DEEP_PARAMS)
                sock.setblocking(False)
                sockets.append(sock)
            open_sockets = set(sockets)

            def all_ended() -> bool | None:
                for sock in list(open_sockets):
                    if ended(sock):
                        open_sockets.discard(sock)
                return True if not open_sockets else None

            eventually(all_ended, f"the proxy ending all {FLOOD} connections", within=30)
        finally:
            for sock in sockets:
                sock.close()
        eventually(lambda: True if open_fds(proxy.process.pid) <= baseline + 2 else None,
                   "the proxy's descriptors back to their count before the flood")
        assert client.call("add", 4, 5) == 9
        assert proxy.process.poll() is None
        log = proxy.log.read_text()
        assert "RecursionError" not in log and "Traceback" not in log, log[-2000:]
        assert len(log) < 200 * FLOOD, "the log grows by more than a line per refused message"
