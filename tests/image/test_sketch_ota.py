"""A sketch that travels with its compose app, in QEMU, through ``docker compose`` as aktualizr-lite
runs apps: v1 (sketch A), v2 (sketch B), v3 (sketch C boots silent: its health check fails, B is
put back, the sketch service exits non-zero and v3's main service never starts), then v2 again
as after aktualizr-lite's rollback, with B running: no chip write.

The virtual M4 runs what was flashed: the SWD-probe stand-in in the guest sends each flashed ELF
down the stand-in SWD wire (virtio port ``swd``) to m4-sim, which binds what the sketch's x8sim
note says (tests/support/sketches.py). So the health check is a real call to the new sketch.
"""

from __future__ import annotations

import json

import pytest

from tests.support.sketches import sketch_elf
from x8manager.qemu.virtual_x8 import VirtualX8, poll

from .groups import APPS_GROUP

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800), pytest.mark.xdist_group(APPS_GROUP)]

BASE_TARBALL = "/usr/lib/x8-test/x8manager-python.tar"
BASE_IMAGE = "x8-test/python:bookworm"
APP = "thermo"
APPS_ROOT = "/var/sota/compose-apps"
APP_DIR = f"{APPS_ROOT}/{APP}"
CHIP = "/var/lib/openocd-standin/chip.json"


def release(x8: VirtualX8, version: str, sketch: bytes) -> None:
    """What a Factory target brings: the app folder with this version's image (built here, offline)."""
    console = x8.machine.require_console()
    console.write_file(f"{APP_DIR}/sketch/{APP}.elf", sketch)
    image = f"x8-test/{APP}:{version}"
    console.check(f"docker build -q --build-arg BASE_IMAGE={BASE_IMAGE} -t {image} {APP_DIR}", timeout=900)
    console.check(f"sed -i 's#image: .*#image: {image}#' {APP_DIR}/docker-compose.yml")


def compose_up(x8: VirtualX8) -> tuple[str, int]:
    """aktualizr-lite's way of starting an app of the current target."""
    return x8.machine.require_console().run(
        f"cd {APP_DIR} && docker compose up --remove-orphans -d 2>&1", timeout=900)


def chip_writes(x8: VirtualX8) -> int:
    return int(json.loads(x8.machine.require_console().check(f"cat {CHIP}"))["writes"])


def running_sketch(x8: VirtualX8) -> str:
    sketch = x8.require_m4().sketch()
    return str(sketch["name"]) if sketch else ""


def test_the_sketch_rides_with_its_app_and_rolls_back_with_it(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    if console.run(f"test -f {BASE_TARBALL}")[1] != 0:
        pytest.skip(f"{BASE_TARBALL} missing: only the Debian test image carries the offline base image")
    console.check("systemctl is-active m4-flasher m4-proxy && test -S /run/m4-flasher/request.sock")
    console.check(f"docker image inspect {BASE_IMAGE} >/dev/null 2>&1 || "
                  f"docker import {BASE_TARBALL} {BASE_IMAGE}", timeout=600)
    console.check(f"mkdir -p {APPS_ROOT} && rm -rf {APP_DIR} && x8-apps new {APP} --template m4-sketch "
                  f"--dir {APPS_ROOT} --port 5011 --factory-image-prefix x8-test", timeout=120)
    try:
        release(virtual_x8, "v1", sketch_elf("A", ["health"]))
        output, code = compose_up(virtual_x8)
        assert code == 0, output
        assert running_sketch(virtual_x8) == "A"
        assert poll(f"{APP} registered (the M4 calls whoami)", lambda: virtual_x8.m4_call("whoami"),
                    timeout=240, interval=2) == APP
        writes = chip_writes(virtual_x8)

        release(virtual_x8, "v2", sketch_elf("B", ["health"]))
        output, code = compose_up(virtual_x8)
        assert code == 0, output
        assert running_sketch(virtual_x8) == "B" and chip_writes(virtual_x8) == writes + 1

        release(virtual_x8, "v3", sketch_elf("C", ["health"], behaviour="silent"))
        output, code = compose_up(virtual_x8)
        assert code != 0, output  # the target fails: aktualizr-lite would roll back
        assert "didn't complete successfully" in output, output
        assert running_sketch(virtual_x8) == "B"  # the last good sketch is back on the M4
        assert chip_writes(virtual_x8) == writes + 3  # C, then B again
        exit_code = console.check(f"docker inspect -f '{{{{.State.ExitCode}}}}' {APP}-{APP}-sketch-1")
        assert exit_code.strip() == "1"
        started = console.check(f"docker ps -a --filter ancestor=x8-test/{APP}:v3 "
                                f"--filter name={APP}-{APP}-1 --format '{{{{.Status}}}}'")
        assert "Up" not in started, started  # v3's main service never ran
        status = console.check(f"x8-apps status {APP}", timeout=120)
        assert "sketch: unhealthy" in status and "restored" in status, status

        # The rollback: v2's folder again, B running: the sketch service finds nothing to write.
        console.check(f"sed -i 's#image: .*#image: x8-test/{APP}:v2#' {APP_DIR}/docker-compose.yml")
        output, code = compose_up(virtual_x8)
        assert code == 0, output
        assert chip_writes(virtual_x8) == writes + 3 and running_sketch(virtual_x8) == "B"
        status = console.check(f"x8-apps status {APP}", timeout=120)
        assert "sketch: unchanged" in status, status
    finally:
        logs, _ = console.run(f"cd {APP_DIR} && docker compose logs --no-color 2>&1 | tail -n 60",
                              timeout=300)
        print(logs)
        console.run(f"cd {APP_DIR} && docker compose down --remove-orphans", timeout=600)
