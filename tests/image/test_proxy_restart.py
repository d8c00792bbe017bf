"""m4-proxy killed with SIGKILL: systemd restarts it and both directions of the M4 link work again."""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8, poll

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]


def test_proxy_killed_is_restarted_and_the_m4_side_recovers(demo_service: VirtualX8) -> None:
    x8 = demo_service
    console = x8.machine.require_console()
    assert x8.m4_call("multiply", 3, 3) == 9
    old_pid = console.check("systemctl show -P MainPID m4-proxy").strip()
    restarts = int(console.check("systemctl show -P NRestarts m4-proxy").strip())
    console.check("systemctl kill --signal=SIGKILL m4-proxy")

    def restarted() -> str | None:
        pid = console.check("systemctl show -P MainPID m4-proxy").strip()
        active = console.run("systemctl is-active --quiet m4-proxy")[1] == 0
        return pid if active and pid not in ("0", old_pid) else None

    poll("systemd restarted m4-proxy", restarted, timeout=120)
    assert int(console.check("systemctl show -P NRestarts m4-proxy").strip()) == restarts + 1
    # The guest service registers again by itself; the virtual M4 reaches it once it has.
    assert poll("M4 -> Linux works again", lambda: x8.m4_call("multiply", 4, 5), timeout=120) == 20
    assert x8.linux_call("add", 20, 22) == 42
