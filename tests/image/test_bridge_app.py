"""A compose app from ``x8-apps new --template bridge-app`` (Arduino's arduino-router-bridge, the
same code as on an UNO Q) under the guest's Docker: the router socket mounted, the M4 calls the
app's provided methods through the router front, and the app calls the M4.

The Bridge is in the image (as the recipe python3-arduino-router-bridge installs it on a device),
so ``x8-apps new`` copies it into the app on the device itself; the build is offline.
"""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8, poll

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

BASE_TARBALL = "/usr/lib/x8-test/x8manager-python.tar"
BASE_IMAGE = "x8-test/python:bookworm"
APP = "samecode"
APP_DIR = f"/var/sota/compose-apps/{APP}"


def test_a_bridge_app_is_called_by_the_m4_and_calls_it(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    if console.run(f"test -f {BASE_TARBALL}")[1] != 0:
        pytest.skip(f"{BASE_TARBALL} missing: only the Debian test image carries the offline base image")
    console.check("test -S /var/run/arduino-router.sock && stat -c '%U:%G %a' /var/run/arduino-router.sock")
    owner = console.check("stat -c '%U:%G %a' /var/run/arduino-router.sock").strip()
    assert owner == "root:arduino-router 660", owner
    m4 = virtual_x8.require_m4()
    m4.control.request("bind_echo", "ping")  # the sketch side binds ping (RPC.bind)
    console.check(f"docker image inspect {BASE_IMAGE} >/dev/null 2>&1 || "
                  f"docker import {BASE_TARBALL} {BASE_IMAGE}", timeout=600)
    console.check(f"rm -rf {APP_DIR} && x8-apps new {APP} --template bridge-app "
                  f"--dir /var/sota/compose-apps --factory-image-prefix x8-test", timeout=120)
    console.check(f"x8-apps lint {APP_DIR}", timeout=120)
    console.check(f"docker build -q --build-arg BASE_IMAGE={BASE_IMAGE} -t x8-test/{APP}:latest {APP_DIR}",
                  timeout=900)
    try:
        console.check(f"cd {APP_DIR} && docker compose up -d 2>&1", timeout=600)
        # The M4's RPC.call reaches the method the Bridge provides, through the router front.
        assert poll(f"{APP} provides whoami through the router socket", lambda: virtual_x8.m4_call("whoami"),
                    timeout=240, interval=2) == APP
        assert virtual_x8.m4_call("multiply", 6, 7) == 42
        # And the app's bridge.call("ping") reached the M4's ping.
        logs = poll("the app's call into the M4", lambda: (
            out if "the M4 answers ping" in (out := console.check(
                f"cd {APP_DIR} && docker compose logs --no-color 2>&1", timeout=120)) else None),
            timeout=120, interval=2)
        assert "the M4 answers ping: []" in logs, logs
    finally:
        console.run(f"cd {APP_DIR} && docker compose down 2>&1", timeout=600)
