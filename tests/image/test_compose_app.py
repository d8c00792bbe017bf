"""A compose app scaffolded by ``x8-apps new`` runs under the guest's Docker and answers the M4.

Offline: the base image is the python3 rootfs tarball scripts/build-test-image made (imported with
``docker import``); the app's Dockerfile takes it as BASE_IMAGE and needs nothing from a registry.
"""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8, poll

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

BASE_TARBALL = "/usr/lib/x8-test/x8manager-python.tar"
BASE_IMAGE = "x8-test/python:bookworm"
APP = "m4echo"
APP_PORT = 5010


def test_compose_app_answers_a_call_from_the_m4(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    if console.run(f"test -f {BASE_TARBALL}")[1] != 0:
        pytest.skip(f"{BASE_TARBALL} missing: only the Debian test image carries the offline base image")
    console.check(f"docker image inspect {BASE_IMAGE} >/dev/null 2>&1 || "
                  f"docker import {BASE_TARBALL} {BASE_IMAGE}", timeout=600)
    console.check(f"rm -rf /tmp/apps && x8-apps new {APP} --template m4-service --dir /tmp/apps "
                  f"--port {APP_PORT} --factory-image-prefix x8-test", timeout=120)
    app_dir = f"/tmp/apps/{APP}"
    image = console.check(f"sed -n 's/^ *image: *//p' {app_dir}/docker-compose.yml | head -n1")
    image = image.strip().strip('"')
    assert image, "the scaffolded compose file names no image"
    console.check(f"docker build -q --build-arg BASE_IMAGE={BASE_IMAGE} -t {image} {app_dir}", timeout=600)
    console.check(f"cd {app_dir} && docker-compose up -d", timeout=600)
    try:
        whoami = poll(f"{APP} registered with m4-proxy (the M4 calls whoami)",
                      lambda: virtual_x8.m4_call("whoami"), timeout=240, interval=2)
        assert whoami == APP
        assert virtual_x8.m4_call("divide", 7, 2) == 3.5
    finally:
        logs, _ = console.run(f"cd {app_dir} && docker-compose logs --no-color | tail -n 50", timeout=120)
        print(logs)
        console.run(f"cd {app_dir} && docker-compose down", timeout=300)
