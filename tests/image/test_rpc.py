"""Both directions of the M4 link, through the guest's m4-proxy and QEMU's virtio serial port."""

from __future__ import annotations

import pytest

from x8manager.qemu.virtual_x8 import VirtualX8

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]


def test_virtual_m4_calls_a_procedure_a_guest_service_registered(demo_service: VirtualX8) -> None:
    assert demo_service.m4_call("multiply", 6, 7) == 42
    assert demo_service.m4_call("sum_list", [1, 2, 3, 4]) == 10
    hostname = demo_service.machine.require_console().check("hostname").strip()
    assert demo_service.m4_call("linux_hostname") == hostname


def test_guest_client_calls_a_procedure_bound_on_the_virtual_m4(virtual_x8: VirtualX8) -> None:
    assert virtual_x8.linux_call("add", 2, 3) == 5
    assert virtual_x8.linux_call("echo", {"text": "héllo", "n": [1, 2]}) == {"text": "héllo", "n": [1, 2]}
    m4 = virtual_x8.require_m4()
    methods = [call[0] for call in m4.calls_received()]
    assert "add" in methods and "echo" in methods
