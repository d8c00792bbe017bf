"""The twin as a developer meets LmP: fio logs in (over SSH too) and uses sudo, root is locked, /usr is
read-only at run time (OSTree), apps live in /var/sota/compose-apps, compose v2 is what runs."""

from __future__ import annotations

import pytest

from x8manager.qemu.ssh import GuestSsh
from x8manager.qemu.virtual_x8 import VirtualX8

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]


def test_usr_is_read_only_and_etc_var_are_not(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    options = console.check("findmnt -n -o OPTIONS --target /usr").strip().split(",")
    assert "ro" in options, options
    output, code = console.run("touch /usr/x8-probe")
    assert code != 0 and "Read-only file system" in output, output
    console.check("touch /etc/x8-probe /var/x8-probe && rm /etc/x8-probe /var/x8-probe")
    assert console.check("test -d /var/sota/compose-apps && echo yes").strip() == "yes"


def test_fio_logs_in_over_ssh_and_needs_its_password_for_sudo(guest_ssh: GuestSsh) -> None:
    who = guest_ssh.run("id -un; id -Gn")
    assert who.returncode == 0, who.stderr
    user, groups = who.stdout.split("\n")[:2]
    assert user == "fio"
    assert {"sudo", "docker"} <= set(groups.split()), groups
    # As on LmP ('%sudo ALL=(ALL) ALL'): sudo asks fio's password; without it, no root.
    assert guest_ssh.run("sudo -n true").returncode != 0
    as_root = guest_ssh.run("echo fio | sudo -S -p '' id -u")
    assert as_root.stdout.strip() == "0", as_root.stderr


def test_root_is_locked(virtual_x8: VirtualX8) -> None:
    console = virtual_x8.machine.require_console()
    assert console.check("passwd -S root").split()[1] == "L"


def test_compose_v2_is_the_default(guest_ssh: GuestSsh) -> None:
    version = guest_ssh.run("docker compose version --short")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().lstrip("v").startswith("2."), version.stdout
