"""Image tests: one boot of the virtual X8 per pytest session or xdist worker (TCG is slow; CI has 2 cores).

scripts/test runs pytest-xdist with two workers and ``--dist loadgroup``: the image tests form two
groups (groups.py), each on one worker with its own virtual X8, and the host-only tests follow on
the worker that finishes first. One guest keeps only about one of CI's two cores busy, so two
guests side by side use the machine better than one guest after another.

The machine comes from x8manager.qemu's pytest plugin options (``--x8-profile debian|lmp``). For the
Debian profile the image is built first when its inputs changed (scripts/build-test-image; cached,
a few seconds when nothing changed). The virtual M4 (m4-sim) is on the host end of the M4 link.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from x8manager.qemu import Machine, Profile, free_local_port
from x8manager.qemu.pytest_plugin import profile_from_options
from x8manager.qemu.ssh import GuestSsh
from x8manager.qemu.virtual_x8 import GUEST_HELPER_DIR, WRITABLE_HELPER_DIR, VirtualX8

from .groups import GROUP

ROOT = Path(__file__).resolve().parents[2]

GUEST_FILES = ROOT / "images" / "x8-test" / "overlay" / "usr" / "lib" / "x8-test"
STANDIN = ROOT / "tests" / "standins" / "openocd-standin"
OVERLAY = ROOT / "images" / "x8-test" / "overlay"
TWIN_DROP_INS = sorted([*(OVERLAY / "etc" / "systemd" / "system").glob("m4-*.service.d/*.conf"),
                        *(OVERLAY / "etc" / "udev" / "rules.d").glob("*.rules")])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every image test without a group of its own shares the worker (and the guest) of GROUP."""
    for item in items:
        if item.get_closest_marker("image") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(GROUP))


@pytest.fixture(scope="session")
def x8_profile(request: pytest.FixtureRequest) -> Profile:
    """Build the Debian test image if needed, then the profile the options ask for."""
    options = request.config.getoption
    if options("--x8-profile") == "debian" and not options("--x8-image-dir"):
        if os.geteuid() != 0:
            pytest.skip("building the test image needs root (mmdebstrap --mode=root); CI runs as root")
        # Both xdist workers come here: one builds, the other waits and finds the image up to date.
        lock_path = ROOT / "out" / "image.build.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            build = subprocess.run([str(ROOT / "scripts" / "build-test-image")], capture_output=True,
                                   text=True, check=False)
        if build.returncode != 0:
            pytest.fail(f"scripts/build-test-image failed:\n{build.stderr[-4000:]}", pytrace=False)
    return profile_from_options(request.config)


@pytest.fixture(scope="session")
def virtual_x8(x8_profile: Profile, x8_console_log: TextIO) -> Iterator[VirtualX8]:
    # The guest's SSH port on a free port of 127.0.0.1 (the x8 host CLI's way in).
    forwards = {free_local_port(): x8_profile.ssh.port} if x8_profile.ssh is not None else {}
    machine = Machine(x8_profile, console_log=x8_console_log, host_forwards=forwards)
    x8 = VirtualX8(machine, m4_log=x8_console_log)
    try:
        x8.start()
        prepare_guest(x8)
        yield x8
    finally:
        x8.stop()


@pytest.fixture(scope="session")
def x8_machine(virtual_x8: VirtualX8) -> Machine:
    """The plugin's machine fixture is the virtual X8's machine (one boot per worker)."""
    return virtual_x8.machine


def prepare_guest(x8: VirtualX8) -> None:
    """Put the test helpers in place where the image lacks them (an LmP image built with the layer).

    The Debian test image has them already; this only checks. Elsewhere they go to /var, which is
    writable on an OSTree LmP image (its /usr is read-only).
    """
    console = x8.machine.require_console()
    _, missing = console.run(f"test -x {GUEST_HELPER_DIR}/demo-service && "
                             f"test -x {GUEST_HELPER_DIR}/openocd-standin")
    if missing == 0:
        return
    x8.helper_dir = WRITABLE_HELPER_DIR
    demo_service = (GUEST_FILES / "demo-service").read_bytes()
    console.write_file(f"{WRITABLE_HELPER_DIR}/demo-service", demo_service, 0o755)
    console.write_file(f"{WRITABLE_HELPER_DIR}/openocd-standin", STANDIN.read_bytes(), 0o755)
    console.write_file("/etc/default/m4-flasher",
                       f"M4_FLASHER_ARGS=--openocd {WRITABLE_HELPER_DIR}/openocd-standin\n".encode())
    console.write_file("/etc/default/m4-proxy", b"M4_PROXY_ARGS=--device /dev/virtio-ports/m4\n")
    # What the sandboxed units need on a twin: the virtio ports in their device ACLs, the stand-in's
    # state directory, and the M4 port for the proxy's user (the test image has them from overlay/).
    for drop_in in TWIN_DROP_INS:
        console.write_file(f"/{drop_in.relative_to(OVERLAY)}", drop_in.read_bytes())
    console.check("udevadm control --reload && udevadm trigger --subsystem-match=virtio-ports "
                  "&& udevadm settle && systemctl daemon-reload")
    console.check("systemctl restart m4-proxy m4-flasher")


@pytest.fixture(scope="session")
def guest_ssh(virtual_x8: VirtualX8, tmp_path_factory: pytest.TempPathFactory) -> GuestSsh:
    """SSH into the guest as its login user (fio), ready to take commands."""
    access = virtual_x8.machine.profile.ssh
    if access is None:
        pytest.skip(f"the {virtual_x8.machine.profile.name} profile has no SSH access")
    ssh = GuestSsh(virtual_x8.machine, access, tmp_path_factory.mktemp("ssh"))
    ssh.authorize(virtual_x8.machine.require_console())
    ssh.wait_ready()
    return ssh


@pytest.fixture
def demo_service(virtual_x8: VirtualX8) -> VirtualX8:
    """The guest's demo service (x8manager.rpc.RpcService) running and registered with the proxy."""
    console = virtual_x8.machine.require_console()
    _, inactive = console.run("systemctl is-active --quiet x8-demo-service")
    if inactive:
        virtual_x8.start_demo_service()
    return virtual_x8
