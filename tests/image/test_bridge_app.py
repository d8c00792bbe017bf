"""A compose app from ``x8-apps new --template bridge-app`` (Arduino's arduino-router-bridge, the
same code as on an UNO Q) under the guest's Docker: the router socket mounted, the M4 calls the
app's provided methods through the router front, and the app calls the M4.

After ``systemctl restart m4-proxy`` the running app works on: m4-proxy.socket keeps the
socket (its inode) while the proxy restarts, so the container's bind mount still reaches it.

The Bridge is in the image (as the recipe python3-arduino-router-bridge installs it on a device),
so ``x8-apps new`` copies it into the app on the device itself; the build is offline.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest

from x8manager.qemu import Console
from x8manager.qemu.virtual_x8 import VirtualX8, poll

from .groups import APPS_GROUP

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500), pytest.mark.xdist_group(APPS_GROUP)]

BASE_TARBALL = "/usr/lib/x8-test/x8manager-python.tar"
BASE_IMAGE = "x8-test/python:bookworm"
APP = "samecode"
APP_DIR = f"/var/sota/compose-apps/{APP}"
SOCKET = "/var/run/arduino-router.sock"


@pytest.fixture(scope="module")
def bridge_app(virtual_x8: VirtualX8) -> Iterator[Console]:
    """The app from the template, built on the device and running under compose."""
    console = virtual_x8.machine.require_console()
    if console.run(f"test -f {BASE_TARBALL}")[1] != 0:
        pytest.skip(f"{BASE_TARBALL} missing: only the Debian test image carries the offline base image")
    console.check(f"docker image inspect {BASE_IMAGE} >/dev/null 2>&1 || "
                  f"docker import {BASE_TARBALL} {BASE_IMAGE}", timeout=600)
    console.check(f"rm -rf {APP_DIR} && x8-apps new {APP} --template bridge-app "
                  f"--dir /var/sota/compose-apps --factory-image-prefix x8-test", timeout=120)
    virtual_x8.require_m4().control.request("bind_echo", "ping")  # the sketch binds ping (RPC.bind)
    console.check(f"x8-apps lint {APP_DIR}", timeout=120)
    console.check(f"docker build -q --build-arg BASE_IMAGE={BASE_IMAGE} -t x8-test/{APP}:latest {APP_DIR}",
                  timeout=900)
    try:
        console.check(f"cd {APP_DIR} && docker compose up -d 2>&1", timeout=600)
        yield console
    finally:
        console.run(f"cd {APP_DIR} && docker compose down 2>&1", timeout=600)


def socket_identity(console: Console) -> str:
    """Inode, owner:group and mode of the router socket, as the guest sees it."""
    return console.check(f"test -S {SOCKET} && stat -L -c '%i %U:%G %a' {SOCKET}").strip()


def app_logs(console: Console) -> str:
    return console.check(f"cd {APP_DIR} && docker compose logs --no-color 2>&1", timeout=120)


def test_a_bridge_app_is_called_by_the_m4_and_calls_it(virtual_x8: VirtualX8, bridge_app: Console) -> None:
    console = bridge_app
    assert socket_identity(console).split(" ", 1)[1] == "root:arduino-router 660"
    # The M4's RPC.call reaches the method the Bridge provides, through the router front.
    assert poll(f"{APP} provides whoami through the router socket", lambda: virtual_x8.m4_call("whoami"),
                timeout=240, interval=2) == APP
    assert virtual_x8.m4_call("multiply", 6, 7) == 42
    # And the app's bridge.call("ping") reached the M4's ping.
    logs = poll("the app's call into the M4", lambda: (
        out if "the M4 answers ping" in (out := app_logs(console)) else None), timeout=120, interval=2)
    assert "the M4 answers ping: []" in logs, logs


# In the app's container (its mount of the socket, its Bridge), a call into the M4.
CALL_FROM_THE_CONTAINER = (
    "from arduino.router_bridge import Bridge; bridge = Bridge(); "
    "assert bridge.connect(timeout=30); print('container call:', bridge.call('ping', 'again', timeout=10))")


def test_the_app_keeps_working_across_a_proxy_restart(virtual_x8: VirtualX8, bridge_app: Console) -> None:
    """m4-proxy.socket holds the socket: `systemctl restart m4-proxy` keeps its inode, so the
    container's bind mount reaches the new proxy; the app's Bridge reconnects by itself."""
    console = bridge_app
    assert poll(f"{APP} provides whoami", lambda: virtual_x8.m4_call("whoami"),
                timeout=240, interval=2) == APP
    assert console.check("systemctl is-active m4-proxy.socket").strip() == "active"
    before = socket_identity(console)
    assert before.split(" ", 1)[1] == "root:arduino-router 660", before
    old_pid = console.check("systemctl show -P MainPID m4-proxy").strip()
    console.check("systemctl restart m4-proxy", timeout=120)

    def restarted() -> str | None:
        pid = console.check("systemctl show -P MainPID m4-proxy").strip()
        active = console.run("systemctl is-active --quiet m4-proxy")[1] == 0
        return pid if active and pid not in ("0", old_pid) else None

    new_pid = poll("m4-proxy restarted", restarted, timeout=120)
    assert socket_identity(console) == before  # the same inode, owner, group and mode
    journal = console.check(f"journalctl -b --no-pager -o cat _PID={new_pid}", timeout=60)
    assert "inherited from systemd" in journal, journal
    # The app's Bridge (still running, never restarted) reconnects and provides its methods again.
    assert poll("the app provides whoami again", lambda: virtual_x8.m4_call("whoami"),
                timeout=120, interval=2) == APP
    assert virtual_x8.m4_call("multiply", 7, 6) == 42
    # And from inside the same container, through its bind mount, the M4 is called again.
    out = console.check(f"cd {APP_DIR} && docker compose exec -T {APP} python3 -c "
                        f"{shlex.quote(CALL_FROM_THE_CONTAINER)}", timeout=300)
    assert "container call: ['again']" in out, out
    assert console.check(f"docker inspect -f '{{{{.State.Running}}}} {{{{.RestartCount}}}}' "
                         f"$(cd {APP_DIR} && docker compose ps -q {APP})").strip() == "true 0"
