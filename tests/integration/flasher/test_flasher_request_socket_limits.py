"""The request socket under a flood: connections, bodies and the log stay bounded, and an upload that
lands meanwhile is still flashed (the real daemon, at the unit's descriptor limit)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from pathlib import Path

from flasher_daemon_rig import ROOT, Rig, variant

from tests.support import wait_for
from x8manager.flasher.request import MAX_CONNECTIONS

UNIT = ROOT / "recipes-python" / "x8-manager" / "files" / "m4-flasher.service"
SKETCH_LIMIT = 32 * 1024 * 1024
# What the daemon needs besides its request connections: stdio, the event loop, inotify, the
# journal, the lock, status and spool files, openocd's pipes and the health check's socket.
OWN_DESCRIPTORS = 64


def _unit_nofile() -> int:
    (value,) = [
        line.partition("=")[2] for line in UNIT.read_text().splitlines() if line.startswith("LimitNOFILE=")
    ]
    return int(value)


def test_the_units_descriptor_limit_leaves_room_for_every_request_connection() -> None:
    assert MAX_CONNECTIONS + OWN_DESCRIPTORS <= _unit_nofile() <= 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _connect(path: Path) -> socket.socket | None:
    """A connection, or None while the listening socket's backlog is full (try again)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(str(path))
    except BlockingIOError:
        sock.close()
        return None
    return sock


def test_an_upload_landing_during_an_idle_connection_flood_is_flashed_and_the_log_stays_small(
    rig: Rig,
) -> None:
    rig.start(nofile=_unit_nofile())
    log_before = rig.daemon_log.stat().st_size
    idle: list[socket.socket] = []
    try:
        for _ in range(1100):  # more than the daemon's descriptors: none of them says anything
            idle.append(wait_for(lambda: _connect(rig.socket), "room in the socket's backlog"))
        upload = variant(40)
        rig.upload_bytes(upload)
        wait_for(lambda: rig.outcome_for(sha(upload), "success"), "the upload to be flashed")
        assert rig.chip()["sha256"] == sha(upload)
    finally:
        for sock in idle:
            sock.close()
    assert rig.daemon is not None and rig.daemon.poll() is None
    grown = rig.daemon_log.stat().st_size - log_before
    assert grown < 16 * 1024, rig.log_of_last_start()[-3000:]
    rig.stop()


def test_request_bodies_are_spooled_to_disk_not_held_in_memory(rig: Rig) -> None:
    rig.start()
    assert rig.daemon is not None
    before = _rss_kib(rig.daemon.pid)
    sent = 16 * 1024 * 1024
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    try:
        for sock in clients:
            sock.settimeout(60)
            sock.connect(str(rig.socket))
            sock.sendall(json.dumps({"op": "flash", "size": SKETCH_LIMIT}).encode() + b"\n")
            sock.sendall(b"\0" * sent)  # half a body each, then nothing more for now
        spool = rig.state_dir / "spool"
        wait_for(
            lambda: sum(part.stat().st_size for part in spool.glob("*.part")) == 4 * sent,
            "the bodies to reach the spool",
        )
        grown_mib = (_rss_kib(rig.daemon.pid) - before) / 1024
        assert grown_mib < 16, f"the daemon grew by {grown_mib:.1f} MiB holding 64 MiB of bodies"
    finally:
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.close()
    wait_for(lambda: not list(spool.glob("*.part")), "the abandoned bodies to be removed")
    rig.stop()


def _reply(sock: socket.socket) -> dict[str, object]:
    """The daemon's last line before it closed the connection."""
    lines = sock.makefile("rb").read().splitlines()
    return dict(json.loads(lines[-1]))


def test_a_client_that_stops_sending_is_closed_after_the_idle_timeout(rig: Rig) -> None:
    rig.start("--request-idle-timeout", "1")
    body = variant(41)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled,
    ):
        silent.connect(str(rig.socket))  # says nothing at all
        stalled.connect(str(rig.socket))
        stalled.sendall(json.dumps({"op": "flash", "size": len(body)}).encode() + b"\n" + body[:100])
        for sock in (silent, stalled):
            reply = _reply(sock)  # returns once the daemon closes: no clock in the test
            assert reply["result"] == "error" and "stopped sending for 1 s" in str(reply["reason"]), reply
    assert rig.runs() == [] and not list((rig.state_dir / "spool").glob("*.part"))
    rig.stop()


def test_bodies_beyond_the_spool_budget_are_told_busy_not_written(rig: Rig) -> None:
    rig.start()
    spool = rig.state_dir / "spool"
    receiving = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(8)]
    try:
        for sock in receiving:  # eight full-size bodies announced: the budget (256 MiB) is taken
            sock.connect(str(rig.socket))
            sock.sendall(json.dumps({"op": "flash", "size": SKETCH_LIMIT}).encode() + b"\n")
        wait_for(lambda: len(list(spool.glob("*.part"))) == 8, "eight bodies to be expected")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ninth:
            ninth.connect(str(rig.socket))
            ninth.sendall(json.dumps({"op": "flash", "size": SKETCH_LIMIT}).encode() + b"\n")
            reply = _reply(ninth)
        assert reply["result"] == "busy" and "receiving" in str(reply["reason"]), reply
        assert len(list(spool.glob("*.part"))) == 8
    finally:
        for sock in receiving:
            sock.close()
    wait_for(lambda: not list(spool.glob("*.part")), "the abandoned bodies to be removed")
    rig.stop()


def test_a_flood_of_rejected_sketches_logs_a_summary_not_a_line_each(rig: Rig) -> None:
    rig.start()
    for number in range(40):
        junk = f"not an ELF {number}".encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(rig.socket))
            sock.sendall(json.dumps({"op": "flash", "size": len(junk)}).encode() + b"\n" + junk)
            assert _reply(sock)["result"] == "rejected"
        rig.wait_notify("STATUS=request")  # read, as systemd does: the rig's socket queues only a few
    lines = [line for line in rig.log_of_last_start().splitlines() if ": rejected: " in line]
    assert 1 <= len(lines) <= 4, lines
    assert rig.history()[0]["result"] == "rejected"  # the status still has each of them
    rig.stop()


def test_under_a_lower_descriptor_limit_clients_never_take_the_daemons_own_descriptors(rig: Rig) -> None:
    rig.start("--request-idle-timeout", "1", nofile=40)  # fewer than 32 connections leave free
    assert rig.daemon is not None
    log_before = rig.daemon_log.stat().st_size
    idle = [wait_for(lambda: _connect(rig.socket), "room in the socket's backlog") for _ in range(60)]
    upload = variant(42)
    rig.upload_bytes(upload)  # lands while silent clients keep every connection the daemon allows
    wait_for(lambda: rig.outcome_for(sha(upload), "success"), "the upload to be flashed")
    for sock in idle:
        sock.close()
    text = rig.log_of_last_start()
    assert "descriptor limit 40: the request socket serves" in text, text[-2000:]
    assert "Too many open files" not in text, text[-2000:]
    assert rig.daemon_log.stat().st_size - log_before < 16 * 1024, text[-3000:]
    done = rig.cli("flash", str(rig.sketch_file(variant(43))), "--wait", "--json")
    assert done.returncode == 0, done.stdout  # the socket serves again
    rig.stop()
