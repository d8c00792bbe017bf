"""Arduino's stm32h7-program.service takes the H7 programming lock through the flasher package's
drop-in, so it never drives the SWD pins while m4-flasher (or anyone holding the lock) does.

The QEMU image has no H7, so the unit and its program-h7.sh are stand-ins (the H7's SWD is the
hardware boundary): the unit as Arduino ships it minus the device-tree condition and the kernel
module steps, and a program-h7.sh that records whether the lock is held while it runs. The
drop-in under test is the one the image installs, as the recipe does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from x8manager.qemu import Console
from x8manager.qemu.virtual_x8 import VirtualX8, poll

pytestmark = [pytest.mark.image, pytest.mark.timeout(600)]

LOCK = "/run/lock/x8-h7-swd.lock"
PROGRAM_H7 = "/usr/arduino/extra/program-h7.sh"
RESULT = "/run/x8-test/program-h7.result"
HOLDING = "/run/x8-test/holding"
RELEASE = "/run/x8-test/release"

# Arduino's unit (meta-arduino-nxp stm32h7-program.service) without what needs the real board.
STANDIN_UNIT = f"""\
[Unit]
Description=Program stm32h7 on Portenta-X8 boards (stand-in: no H7 under QEMU)
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {PROGRAM_H7}
"""

STANDIN_PROGRAM_H7 = f"""\
#!/bin/sh
# Stand-in for Arduino's program-h7.sh: instead of running openocd on the H7's SWD pins, record
# whether the H7 programming lock is held (by the flock that should be wrapping this script).
if flock -n {LOCK} true; then echo unlocked; else echo locked; fi > {RESULT}
"""


def unit_state(console: Console) -> dict[str, str]:
    output = console.check("systemctl show -p ActiveState -p MainPID -p ExecStart stm32h7-program.service")
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.fixture
def standin_programmer(virtual_x8: VirtualX8) -> Iterator[Console]:
    console = virtual_x8.machine.require_console()
    # /usr is read-only at run time (OSTree on LmP, usr.mount on the twin). The stand-in goes where
    # Arduino's script lives, so /usr is made writable for this test, as a developer would with
    # 'ostree admin unlock' on LmP, and read-only again afterwards.
    unlocked = console.run("mkdir -p /usr/arduino/extra")[1] != 0
    if unlocked:
        _, code = console.run("ostree admin unlock --transient 2>/dev/null || mount -o remount,bind,rw /usr")
        if code != 0:
            pytest.skip("/usr is read-only and cannot be unlocked: no room for the program-h7.sh stand-in")
        console.check("mkdir -p /usr/arduino/extra")
    console.check("mkdir -p /run/x8-test && rm -f /run/x8-test/*")
    console.write_file(PROGRAM_H7, STANDIN_PROGRAM_H7.encode(), 0o744)
    console.write_file("/run/systemd/system/stm32h7-program.service", STANDIN_UNIT.encode())
    console.check("systemctl daemon-reload")
    try:
        yield console
    finally:
        console.run(f"touch {RELEASE}; systemctl stop stm32h7-program.service x8-test-lock-holder.service")
        console.run(f"rm -f /run/systemd/system/stm32h7-program.service {PROGRAM_H7}")
        console.run("systemctl daemon-reload")
        if unlocked and console.run("command -v ostree")[1] != 0:
            console.run("rmdir -p /usr/arduino/extra 2>/dev/null; mount -o remount,bind,ro /usr")


def test_programmer_runs_under_the_lock_and_waits_for_its_holder(standin_programmer: Console) -> None:
    console = standin_programmer
    assert "flock" in unit_state(console)["ExecStart"], "the drop-in did not replace Arduino's ExecStart"

    # Someone else programs the H7 (as m4-flasher does while flashing): the lock is taken.
    console.check(f"systemd-run --quiet --unit x8-test-lock-holder flock {LOCK} "
                  f"sh -c 'touch {HOLDING}; until [ -e {RELEASE} ]; do sleep 0.05; done'")
    poll("the test's lock holder has the lock", lambda: console.run(f"test -e {HOLDING}")[1] == 0 or None, 60)
    # flock(1) writes nothing into the lock file: m4-flasher finds the holder in /proc/locks.
    assert "flock (x8-test-lock-holder.service)" in console.check("m4-flasher status")

    console.check("systemctl start --no-block stm32h7-program.service")

    def waiting_in_flock() -> bool | None:
        state = unit_state(console)
        if state["ActiveState"] != "activating" or state["MainPID"] == "0":
            return None
        comm = console.check(f"cat /proc/{state['MainPID']}/comm")
        return True if comm.strip() == "flock" else None

    poll("stm32h7-program waits in flock", waiting_in_flock, 60)
    _, ran = console.run(f"test -e {RESULT}")
    assert ran != 0, "program-h7.sh ran while another process held the H7 lock"

    console.check(f"touch {RELEASE}")
    poll("stm32h7-program finishes once the lock is free",
         lambda: unit_state(console)["ActiveState"] == "active" or None, 60)
    assert console.check(f"cat {RESULT}").strip() == "locked"
