"""Device addresses: ``adb`` / ``adb:SERIAL`` or ``ssh://[USER@]HOST[:PORT]``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AdbAddress", "AddressError", "DeviceAddress", "SshAddress", "parse_device", "ssh_config_from_env"]

DEFAULT_SSH_USER = "fio"  # LmP's login user; root is locked on LmP
_USER = r"[A-Za-z_][A-Za-z0-9_.-]*"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]"
_SSH = re.compile(rf"ssh://(?:(?P<user>{_USER})@)?(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?/?")
_ADB_SERIAL = re.compile(r"[A-Za-z0-9._:-]+")
EXAMPLES = "adb, adb:SERIAL or ssh://fio@HOST[:PORT]"


class AddressError(ValueError):
    """A device address that is not one of the accepted forms; the message shows them."""


@dataclass(frozen=True)
class AdbAddress:
    serial: str | None = None

    def __str__(self) -> str:
        return f"adb:{self.serial}" if self.serial else "adb"


@dataclass(frozen=True)
class SshAddress:
    host: str
    user: str = DEFAULT_SSH_USER
    port: int | None = None

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{self.user}@{self.host}{port}"


DeviceAddress = AdbAddress | SshAddress


def parse_device(text: str | None) -> DeviceAddress:
    """Parse *text* (``--device`` or ``$X8_DEVICE``); raise :class:`AddressError` with the accepted forms."""
    if text is None or not text.strip():
        raise AddressError(f"no device given: use --device or set X8_DEVICE ({EXAMPLES})")
    text = text.strip()
    if text == "adb":
        return AdbAddress()
    if text.startswith("adb:"):
        serial = text[len("adb:"):]
        if not _ADB_SERIAL.fullmatch(serial):
            raise AddressError(f"bad adb serial in {text!r}: expected adb:SERIAL as 'adb devices' lists it")
        return AdbAddress(serial)
    if text.startswith("ssh://"):
        match = _SSH.fullmatch(text)
        if match is None:
            raise AddressError(f"bad SSH address {text!r}: expected ssh://[USER@]HOST[:PORT]")
        port = int(match["port"]) if match["port"] else None
        if port is not None and not 0 < port < 65536:
            raise AddressError(f"bad SSH port {port} in {text!r}: expected 1-65535")
        host = match["host"].strip("[]")
        return SshAddress(host=host, user=match["user"] or DEFAULT_SSH_USER, port=port)
    raise AddressError(f"unknown device address {text!r}: expected {EXAMPLES}")


def ssh_config_from_env() -> Path | None:
    """``$X8_SSH_CONFIG``: an ssh_config for ``ssh -F`` (keys, host key aliases), if set."""
    value = os.environ.get("X8_SSH_CONFIG")
    return Path(value) if value else None
