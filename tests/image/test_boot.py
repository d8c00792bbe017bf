"""After one boot: systemd finished with no failed unit, and the layer's two daemons are running."""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]


def test_boot_leaves_no_failed_units(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    failed = console.check("systemctl list-units --failed --no-legend --plain").strip()
    assert failed == "", f"failed units after boot:\n{failed}"
    assert console.check("systemctl is-system-running").strip() == "running"


def test_proxy_and_flasher_are_active(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    states = console.check("systemctl is-active m4-proxy.service m4-flasher.service").split()
    assert states == ["active", "active"]
    # The proxy runs on the M4 link QEMU provides, configured by the image's /etc/default/m4-proxy.
    command_line = console.check("cat /proc/$(systemctl show -P MainPID m4-proxy)/cmdline | tr '\\0' ' '")
    assert "/dev/virtio-ports/m4" in command_line
