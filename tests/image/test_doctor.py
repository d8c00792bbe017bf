"""x8-doctor on the twin, one fault at a time, each named with exit 1 (exit 0 when healthy); x8-trace
shows calls both ways with their methods and msgids; an app registering a port nobody listens on is
logged by the proxy.

The twin has no H7 and no x8h7 driver: its M4 link is the virtio port /dev/virtio-ports/m4. So the
doctor runs with ``--root`` on a tree that is the guest itself (its /proc, its flasher state, its
router socket) plus what the x8h7 driver would add on an X8 (/proc/modules lines, the firmware
version in sysfs) and /dev/x8h7_ui as a link to the virtio port: everything the doctor probes past
that (processes, holders of the device, ports, the proxy, the virtual M4) is the real thing.
The virtio port takes one opener at a time, as the doctor sees: busy while the proxy holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from x8manager.m4sim.wire import THREAD_ID_BASE
from x8manager.qemu import Console
from x8manager.qemu.virtual_x8 import VirtualX8, poll

from .flashing import STANDIN_MODE_FILE, upload, wait_for_result

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

ROOT = "/run/x8-doctor-root"
RUN_DOCTOR = "/run/x8-doctor-run"
# The tree is rebuilt before each run: /proc's pids change (a restarted proxy is a new pid).
DOCTOR_SCRIPT = f"""#!/bin/sh
set -e
R={ROOT}
mkdir -p $R/proc $R/sys/kernel/x8h7_firmware $R/dev $R/var/lib $R/var/run $R/var/sota/compose-apps
find $R/proc -mindepth 1 -maxdepth 1 -type l -delete
for p in /proc/[0-9]*; do ln -s "$p" "$R/proc/" 2>/dev/null || true; done
ln -sfn /proc/net $R/proc/net
printf 'x8h7_ui 16384 1 - Live 0x0 (O)\\nx8h7_h7 16384 0 - Live 0x0 (O)\\n\
x8h7_drv 24576 8 x8h7_ui,x8h7_h7, Live 0x0 (O)\\n' > $R/proc/modules
echo v0.0.5-virtual > $R/sys/kernel/x8h7_firmware/version
ln -sfn /dev/virtio-ports/m4 $R/dev/x8h7_ui
ln -sfn /var/lib/m4-flasher $R/var/lib/m4-flasher
ln -sfn /run/arduino-router.sock $R/var/run/arduino-router.sock
set +e
x8-doctor --json --root $R "$@"
"""
DEMO_PORT = 5005
IMPOSTOR_UNIT = "x8-doctor-impostor"


@pytest.fixture(scope="module")
def twin(virtual_x8: VirtualX8) -> VirtualX8:
    console = virtual_x8.machine.require_console()
    console.write_file(RUN_DOCTOR, DOCTOR_SCRIPT.encode(), 0o755)
    fresh_proxy(virtual_x8)
    return virtual_x8


def fresh_proxy(x8: VirtualX8) -> None:
    """The proxy restarted with an empty registry (earlier tests may have left registrations of
    services that are gone), then the demo service registered with it."""
    console = x8.machine.require_console()
    console.check("systemctl stop m4-proxy; rm -f /run/m4-proxy/registry.json; "
                  "systemctl reset-failed m4-proxy 2>/dev/null; systemctl start m4-proxy")
    x8.start_demo_service(DEMO_PORT)
    poll("Linux -> M4 through the proxy", lambda: x8.linux_call("add", 1, 1), 120)


def doctor(console: Console, *args: str) -> tuple[int, dict[str, Any]]:
    output, code = console.run(" ".join(["sh", RUN_DOCTOR, *map(shlex.quote, args)]), timeout=300)
    start, end = output.find("{"), output.rfind("}")
    assert 0 <= start < end, f"x8-doctor printed no JSON (exit {code}):\n{output[-3000:]}"
    document: dict[str, Any] = json.loads(output[start:end + 1])
    return code, document


def journal_count(console: Console, text: str) -> int:
    """How many of m4-proxy's journal lines hold *text*."""
    return int(console.check(f"journalctl -u m4-proxy -o cat --no-pager | grep -cF {shlex.quote(text)} "
                             "|| true").strip())


def problem(document: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = next(f for f in document["findings"] if f["status"] == "problem")
    return found


def assert_names(document: dict[str, Any], code: int, layer: str, check: str, *words: str) -> None:
    assert code == 1, document
    assert document["healthy"] is False and document["broken_layer"] == layer, document
    found = problem(document)
    assert found["check"] == check, found
    for word in words:
        assert word in found["message"], found


def test_the_healthy_twin_exits_0(twin: VirtualX8) -> None:
    code, document = doctor(twin.machine.require_console())
    assert code == 0, [f for f in document["findings"] if f["status"] != "ok"]
    statuses = {(f["layer"], f["check"]): f["status"] for f in document["findings"]}
    assert statuses[("h7", "device")] == "ok"  # busy, and held by m4-proxy
    assert statuses[("proxy", "running")] == statuses[("proxy", "registry")] == "ok"
    assert statuses[("proxy", "router")] == "ok"  # the proxy's default router socket
    assert statuses[("sketch", "rpc")] == "ok"


def test_proxy_stopped(twin: VirtualX8) -> None:
    console = twin.machine.require_console()
    console.check("systemctl stop m4-proxy")
    try:
        code, document = doctor(console)
    finally:
        fresh_proxy(twin)
    assert_names(document, code, "proxy", "running", "m4-proxy.service is inactive")


def _m4_port_path(x8: VirtualX8) -> str:
    """The QOM path of the machine's virtserialport named m4 (it has no id; the twin has others)."""
    qmp = x8.machine.qmp
    assert qmp is not None
    for child in qmp.execute("qom-list", path="/machine/peripheral-anon"):
        path = f"/machine/peripheral-anon/{child['name']}"
        if child["type"] == "child<virtserialport>" and qmp.execute("qom-get", path=path,
                                                                    property="name") == "m4":
            return path
    raise AssertionError("no virtserialport named m4 in /machine/peripheral-anon")


def test_m4_link_absent(twin: VirtualX8) -> None:
    console = twin.machine.require_console()
    qmp = twin.machine.qmp
    assert qmp is not None
    qmp.execute("device_del", id=_m4_port_path(twin))
    try:
        poll("the guest's /dev/virtio-ports/m4 gone",
             lambda: console.run("test -e /dev/virtio-ports/m4")[1] != 0 or None, 60)
        code, document = doctor(console)
    finally:
        qmp.execute("device_add", driver="virtserialport", chardev="m4", name="m4")
        poll("the M4 link back", lambda: twin.linux_call("add", 2, 2), 180)
    assert_names(document, code, "h7", "device", "/dev/x8h7_ui does not exist")


def test_virtual_m4_silent(twin: VirtualX8) -> None:
    m4 = twin.require_m4().process
    os.kill(m4.pid, signal.SIGSTOP)  # the sketch hangs: nothing answers on the M4 side
    try:
        code, document = doctor(twin.machine.require_console())
    finally:
        os.kill(m4.pid, signal.SIGCONT)
    assert_names(document, code, "sketch", "rpc", "RPC.begin()")
    assert document["not_checked"] == ["apps"]


def test_a_method_the_app_expects_is_not_bound(twin: VirtualX8) -> None:
    console = twin.machine.require_console()
    compose = ("services:\n  weather:\n    image: hub.foundries.io/x/weather\n    restart: always\n"
               "    labels:\n      io.x8manager.expect-methods: \"add, read_gas\"\n")
    console.write_file(f"{ROOT}/var/sota/compose-apps/weather/docker-compose.yml", compose.encode())
    try:
        code, document = doctor(console)
    finally:
        console.check(f"rm -rf {ROOT}/var/sota/compose-apps/weather")
    assert_names(document, code, "sketch", "methods",
                 "the sketch does not bind 'read_gas' (expected by app weather)")
    code, document = doctor(console, "--expect", "add")
    assert code == 0, problem(document)


def test_a_registered_port_with_nothing_listening(twin: VirtualX8) -> None:
    console = twin.machine.require_console()
    ghost = 5099
    register = ("import socket, msgpack; s = socket.create_connection(('127.0.0.1', 5000)); "
                f"s.sendall(msgpack.packb([0, 1, 'register', [{ghost}, ['ghost_reading']]])); "
                "print(s.recv(64).hex())")
    # As the app would, as the login user; the reply keeps the original proxy's bytes.
    assert console.check(twin.as_user(f"python3 -c {shlex.quote(register)}")).strip() == "940101c0a0"
    try:
        # The proxy's own registration check, once, in its journal.
        line = f"nobody listens on port {ghost}, which registered ghost_reading"
        poll("the proxy logged the unheard port", lambda: journal_count(console, line) == 1 or None, 60)
        code, document = doctor(console)
    finally:
        fresh_proxy(twin)
    assert_names(document, code, "proxy", "registry", f"port {ghost}", "ghost_reading")


@contextlib.contextmanager
def impostor_holding_the_device(console: Console) -> Iterator[None]:
    """Another reader of the M4 link opened it first (Arduino's m4_proxy, a container): the proxy
    cannot open the exclusive port and systemd keeps restarting it."""
    console.check("systemctl stop m4-proxy")
    console.check(f"systemd-run --unit={IMPOSTOR_UNIT} --quiet /bin/sh -c "
                  "'exec 3<>/dev/virtio-ports/m4; exec sleep infinity'")
    try:
        poll("the impostor holds the port",
             lambda: console.run(f"ls -l /proc/$(systemctl show -P MainPID {IMPOSTOR_UNIT})/fd "
                                 "| grep -q vport")[1] == 0 or None, 60)
        console.run("systemctl start m4-proxy")  # fails: the port is busy
        yield
    finally:
        console.run(f"systemctl stop {IMPOSTOR_UNIT}")


def test_an_impostor_holding_the_device(twin: VirtualX8) -> None:
    console = twin.machine.require_console()
    try:
        with impostor_holding_the_device(console):
            code, document = doctor(console)
    finally:
        fresh_proxy(twin)
    assert_names(document, code, "h7", "device", "held by another process", "sleep")


def test_the_last_flash_failed(twin: VirtualX8) -> None:
    console = twin.machine.require_console()
    console.check(f"mkdir -p /etc/x8-test && echo fail > {STANDIN_MODE_FILE}")
    try:
        result = wait_for_result(console, upload(twin, "sketch-ok.elf"))
        assert result["result"] == "failed", result
        code, document = doctor(console)
    finally:
        console.check(f"rm -f {STANDIN_MODE_FILE}")
    assert_names(document, code, "sketch", "flash", "the last flash", "failed")
    # Flashed again with the programmer working: healthy.
    assert wait_for_result(console, upload(twin, "sketch-ok-2.elf"))["result"] == "success"
    code, document = doctor(console)
    assert code == 0, problem(document)


def test_x8_trace_shows_calls_both_ways_with_methods_and_msgids(twin: VirtualX8) -> None:
    console = twin.machine.require_console()
    out = "/run/x8-trace-test.jsonl"
    attached_before = journal_count(console, "trace: client attached")
    # As a developer on LmP: the login user, through sudo (the trace socket is root's).
    trace = "echo fio | sudo -S -p '' x8-trace --json --count 4 --method add --method multiply"
    console.check(f"rm -f {out}; ({twin.as_user(trace)} > {out} 2>&1 &)")
    poll("x8-trace attached",
         lambda: journal_count(console, "trace: client attached") > attached_before or None, 120)
    assert twin.linux_call("add", 20, 22) == 42  # Linux -> M4 (call port)
    assert twin.m4_call("multiply", 6, 7) == 42  # M4 -> Linux (the demo service)

    def four_lines() -> list[str] | None:
        lines = console.check(f"cat {out}").strip().splitlines()
        return lines if len(lines) == 4 else None

    lines = poll("four events traced", four_lines, 120)
    events = [json.loads(line) for line in lines]
    assert [(e["dir"], e["front"], e["type"], e["method"]) for e in events] == [
        ("Linux->M4", "call port", "request", "add"),
        ("M4->Linux", "call port", "response", "add"),
        ("M4->Linux", "register port", "request", "multiply"),
        ("Linux->M4", "register port", "response", "multiply"),
    ]
    assert events[0]["msgid"] == events[1]["msgid"]  # the reply pairs with its request on the wire
    assert events[2]["msgid"] == events[3]["msgid"] >= THREAD_ID_BASE  # the M4 caller's thread id
    assert events[1]["latency_ms"] > 0 and events[3]["latency_ms"] > 0
    assert events[2]["app"] == events[3]["app"] == f"service on port {DEMO_PORT}"
