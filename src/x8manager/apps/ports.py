"""Compose ``ports:`` entries, short and long syntax, as explicit host-to-container mappings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["PortMapping", "PortSyntaxError", "parse_port_entry"]

_RANGE = r"\d+(?:-\d+)?"
_SHORT = re.compile(
    rf"(?:(?P<ip>\[[0-9a-fA-F:.]+\]|\d+\.\d+\.\d+\.\d+|localhost):)?"
    rf"(?:(?P<host>{_RANGE})?:)?(?P<container>{_RANGE})(?:/(?P<protocol>[a-z]+))?"
)


class PortSyntaxError(ValueError):
    """A ports entry we cannot read (and which is not interpolated)."""


@dataclass(frozen=True)
class PortMapping:
    """One container port and where the host publishes it (``host_port`` None: a random port)."""

    container_port: int
    host_port: int | None
    host_ip: str | None
    protocol: str

    @property
    def loopback_reachable(self) -> bool:
        """Whether a host process dialing 127.0.0.1:host_port reaches this port."""
        return self.host_ip in (None, "", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost")


def _span(text: str) -> list[int]:
    first, _, last = text.partition("-")
    start = int(first)
    end = int(last) if last else start
    if end < start or end - start > 65535:
        raise PortSyntaxError(f"bad port range {text!r}")
    return list(range(start, end + 1))


def is_interpolated(value: Any) -> bool:
    return isinstance(value, str) and "$" in value


def parse_port_entry(entry: Any) -> list[PortMapping]:
    """The mappings one ``ports:`` item describes; [] for interpolated values we cannot know."""
    if isinstance(entry, bool):
        raise PortSyntaxError(f"bad port {entry!r}")
    if isinstance(entry, int | float):
        return [PortMapping(int(entry), None, None, "tcp")]
    if isinstance(entry, dict):
        return _parse_long(entry)
    if not isinstance(entry, str):
        raise PortSyntaxError(f"bad port {entry!r}")
    if is_interpolated(entry):
        return []
    match = _SHORT.fullmatch(entry.strip())
    if match is None:
        raise PortSyntaxError(f"cannot read port mapping {entry!r}")
    ip = (match.group("ip") or "").strip("[]") or None
    protocol = match.group("protocol") or "tcp"
    containers = _span(match.group("container"))
    if match.group("host") is None:
        return [PortMapping(port, None, ip, protocol) for port in containers]
    hosts = _span(match.group("host"))
    if len(hosts) == len(containers):
        return [PortMapping(c, h, ip, protocol) for c, h in zip(containers, hosts, strict=True)]
    if len(containers) == 1:
        # "5000-5010:80": docker picks one free host port of the range.
        return [PortMapping(containers[0], None, ip, protocol)]
    raise PortSyntaxError(f"port ranges of different length in {entry!r}")


def _parse_long(entry: dict[str, Any]) -> list[PortMapping]:
    target = entry.get("target")
    published = entry.get("published")
    if is_interpolated(target) or is_interpolated(published):
        return []
    try:
        container = int(str(target))
    except ValueError as error:
        raise PortSyntaxError(f"bad target port {target!r}") from error
    ip = entry.get("host_ip")
    protocol = str(entry.get("protocol") or "tcp")
    if published is None or published == "":
        return [PortMapping(container, None, ip, protocol)]
    hosts = _span(str(published))
    host = hosts[0] if len(hosts) == 1 else None
    return [PortMapping(container, host, ip, protocol)]
