"""A compose app scaffolded by ``x8-apps new`` runs under the guest's Docker and answers the M4.

The device commands (``x8-apps start|list|rpc|logs|stop``) drive it through the real docker CLI.

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
APPS_ROOT = "/var/sota/compose-apps"
DEVICE_SCHEMA = "/usr/share/x8manager/compose-spec.json"


# Compose v2 as the docker CLI plugin (what LmP ships) and the standalone docker-compose (v1 on
# Debian 12); the Debian test image has both, $X8_APPS_COMPOSE (or --compose) picks one.
COMPOSE_VERSION = {"plugin": "docker compose version", "standalone": "docker-compose version"}


@pytest.mark.parametrize("compose", ["plugin", "standalone"])
def test_compose_app_answers_a_call_from_the_m4(virtual_x8: VirtualX8, compose: str) -> None:
    console = virtual_x8.machine.require_console()
    if console.run(f"test -f {BASE_TARBALL}")[1] != 0:
        pytest.skip(f"{BASE_TARBALL} missing: only the Debian test image carries the offline base image")
    version, found = console.run(COMPOSE_VERSION[compose])
    assert found == 0, f"the Debian test image lacks {compose} compose: {version.strip()}"
    print(f"compose: {version.strip()}")
    x8_apps = f"X8_APPS_COMPOSE={compose} x8-apps"
    as_fio = virtual_x8.as_user  # fio is in group docker, as on LmP: no sudo for docker or x8-apps
    console.check(f"docker image inspect {BASE_IMAGE} >/dev/null 2>&1 || "
                  f"docker import {BASE_TARBALL} {BASE_IMAGE}", timeout=600)
    # The app lives where aktualizr-lite puts compose apps; with no /var/sota/sota.toml nothing
    # manages it, so the device commands act on it without --force.
    console.check(f"mkdir -p {APPS_ROOT} && rm -rf {APPS_ROOT}/{APP} && x8-apps new {APP} "
                  f"--template m4-service --dir {APPS_ROOT} --port {APP_PORT} "
                  f"--factory-image-prefix x8-test", timeout=120)
    app_dir = f"{APPS_ROOT}/{APP}"
    image = console.check(f"sed -n 's/^ *image: *//p' {app_dir}/docker-compose.yml | head -n1")
    image = image.strip().strip('"')
    assert image, "the scaffolded compose file names no image"
    console.check(as_fio(f"docker build -q --build-arg BASE_IMAGE={BASE_IMAGE} -t {image} {app_dir}"),
                  timeout=600)
    # The other compose's containers of this project, from the previous parameter, go first:
    # v1 and v2 name containers differently but find each other's by label.
    console.check(f"docker ps -aq --filter label=com.docker.compose.project={APP} | xargs -r docker rm -f",
                  timeout=300)
    console.check(as_fio(f"{x8_apps} start {APP}"), timeout=600)
    try:
        whoami = poll(f"{APP} registered with m4-proxy (the M4 calls whoami)",
                      lambda: virtual_x8.m4_call("whoami"), timeout=240, interval=2)
        assert whoami == APP
        assert virtual_x8.m4_call("divide", 7, 2) == 3.5
        listing = console.check(as_fio(f"{x8_apps} list"), timeout=120)
        assert APP in listing and "running" in listing, listing
        procedures = console.check(as_fio("x8-apps rpc"), timeout=120)
        assert "divide" in procedures and APP in procedures, procedures
        console.check(as_fio(f"{x8_apps} logs {APP}"), timeout=120)
    finally:
        logs, _ = console.run(as_fio(f"{x8_apps} logs {APP} 2>&1 | tail -n 50"), timeout=120)
        print(logs)
        console.run(as_fio(f"{x8_apps} stop {APP}"), timeout=300)
    stopped = console.check(as_fio(f"{x8_apps} list"), timeout=120)
    assert "stopped" in stopped, stopped


def test_lint_on_the_device_uses_the_system_schema(virtual_x8: VirtualX8) -> None:
    """x8-apps lint where no check-jsonschema is installed: the schema comes from
    /usr/share/x8manager/compose-spec.json, where the compose-spec-schema recipe installs it."""
    console = virtual_x8.machine.require_console()
    if console.run(f"test -f {DEVICE_SCHEMA}")[1] != 0:
        pytest.skip(f"{DEVICE_SCHEMA} missing: install compose-spec-schema in this image")
    _, has_pypi_copy = console.run("python3 -c 'import check_jsonschema'")
    assert has_pypi_copy != 0, "the image should lint with the system schema, not check-jsonschema's"
    app_dir = "/var/lib/x8-test/lint-app"
    console.check(f"rm -rf {app_dir} && x8-apps new lintapp --template m4-client --dir {app_dir} "
                  "--factory-image-prefix x8-test", timeout=120)
    console.check(f"x8-apps lint {app_dir}/lintapp", timeout=120)
    console.write_file(f"{app_dir}/broken/docker-compose.yml", b"services:\n  1:\n    image: x\n")
    output, code = console.run(f"x8-apps lint {app_dir}/broken", timeout=120)
    assert code == 1, output
    assert "docker-compose.yml:2: error X8002" in output and "quote it ('1')" in output, output
