"""The daemons run sandboxed on the booted twin, not only on paper: the proxy without root or any
capability, the flasher as root with four capabilities, and systemd's own assessment of the running
units at or below journald's (issue 20, item 15; the unit files are scored in tests/layer)."""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

JOURNALD_THRESHOLD = 43  # 4.3, systemd-analyze's tenths
# CAP_CHOWN (0), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3), CAP_SYS_RAWIO (17)
FLASHER_CAPABILITIES = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 17)


def status_field(virtual_x8: VirtualX8, unit: str, field: str) -> str:
    console = virtual_x8.machine.require_console()
    pid = console.check(f"systemctl show -P MainPID {unit}").strip()
    return console.check(f"awk '$1 == \"{field}:\" {{print $2}}' /proc/{pid}/status").strip()


def test_the_proxy_runs_as_m4_proxy_without_capabilities(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    pid = console.check("systemctl show -P MainPID m4-proxy").strip()
    assert console.check(f"ps -o user= -p {pid}").strip() == "m4-proxy"
    assert int(status_field(virtual_x8, "m4-proxy", "CapEff"), 16) == 0
    assert int(status_field(virtual_x8, "m4-proxy", "CapBnd"), 16) == 0
    assert status_field(virtual_x8, "m4-proxy", "NoNewPrivs") == "1"
    # What it was handed: the M4 port by the udev rule, its runtime directory by systemd.
    assert console.check("stat -L -c '%G %a' /dev/virtio-ports/m4").strip() == "m4-proxy 660"
    assert console.check("stat -c '%U' /run/m4-proxy").strip() == "m4-proxy"


def test_the_flasher_keeps_only_its_four_capabilities(virtual_x8: VirtualX8) -> None:
    assert int(status_field(virtual_x8, "m4-flasher", "CapBnd"), 16) == FLASHER_CAPABILITIES
    assert status_field(virtual_x8, "m4-flasher", "NoNewPrivs") == "1"
    assert status_field(virtual_x8, "m4-flasher", "Seccomp") == "2"


@pytest.mark.parametrize("unit", ["m4-proxy.service", "m4-flasher.service"])
def test_systemd_rates_the_running_unit_no_worse_than_journald(virtual_x8: VirtualX8, unit: str) -> None:
    console = virtual_x8.machine.require_console()
    output, code = console.run(f"out=$(systemd-analyze security --no-pager --threshold={JOURNALD_THRESHOLD} "
                               f"{unit}); code=$?; echo \"$out\" | tail -n 1; (exit $code)")
    assert code == 0, output
    assert "Overall exposure level" in output, output
