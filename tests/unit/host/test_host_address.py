"""x8 --device: the accepted forms, and clear errors for the rest."""

from __future__ import annotations

import pytest

from x8manager.host.address import AdbAddress, AddressError, SshAddress, parse_device


@pytest.mark.parametrize(("text", "expected"), [
    ("adb", AdbAddress()),
    ("adb:2E2C1209DABC240B", AdbAddress("2E2C1209DABC240B")),
    ("adb:192.168.7.1:5555", AdbAddress("192.168.7.1:5555")),
    ("ssh://fio@portenta-x8.local", SshAddress("portenta-x8.local", "fio")),
    ("ssh://x8.local", SshAddress("x8.local", "fio")),
    ("ssh://dev@127.0.0.1:2222", SshAddress("127.0.0.1", "dev", 2222)),
    ("ssh://fio@[fe80::1]:22", SshAddress("fe80::1", "fio", 22)),
    ("  ssh://fio@host/ ", SshAddress("host", "fio")),
])
def test_accepted_addresses(text: str, expected: object) -> None:
    assert parse_device(text) == expected


@pytest.mark.parametrize(("text", "complaint"), [
    (None, "no device given"),
    ("", "no device given"),
    ("x8.local", "unknown device address"),
    ("usb:1", "unknown device address"),
    ("adb:", "bad adb serial"),
    ("adb:a b", "bad adb serial"),
    ("ssh://", "bad SSH address"),
    ("ssh://fio@host:port", "bad SSH address"),
    ("ssh://fio@host:70000", "bad SSH port"),
    ("ssh://fio@host:0", "bad SSH port"),
    ("ssh://fio@ho st", "bad SSH address"),
])
def test_rejected_addresses_say_what_is_accepted(text: str | None, complaint: str) -> None:
    with pytest.raises(AddressError, match=complaint) as error:
        parse_device(text)
    assert "ssh://" in str(error.value) or "adb:SERIAL" in str(error.value) or "1-65535" in str(error.value)


def test_addresses_print_as_they_are_written() -> None:
    assert str(parse_device("ssh://fio@h:2")) == "ssh://fio@h:2"
    assert str(parse_device("adb:X")) == "adb:X"
    assert str(parse_device("adb")) == "adb"
