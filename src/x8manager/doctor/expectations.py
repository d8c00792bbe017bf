"""The M4 methods a compose app expects the sketch to bind, from its compose file.

Two places say so, per service:

- the label ``io.x8manager.expect-methods`` (names separated by commas or spaces), for any app,
  e.g. one using arduino-router-bridge;
- the environment variable ``M4_PROCEDURES`` of the ``m4-client`` template (the procedures the
  app calls on the M4, comma-separated).

Values with ``${...}`` interpolation are left out: what they become is only known at deploy time.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["EXPECT_LABEL", "PROCEDURES_VARIABLE", "expected_methods"]

EXPECT_LABEL: Final = "io.x8manager.expect-methods"
PROCEDURES_VARIABLE: Final = "M4_PROCEDURES"
_SEPARATORS = re.compile(r"[,\s]+")


def _pairs(value: Any) -> dict[str, str]:
    """A compose mapping given as a mapping or as a list of ``KEY=VALUE`` strings."""
    if isinstance(value, dict):
        return {str(key): "" if item is None else str(item) for key, item in value.items()}
    if isinstance(value, list):
        return {key: item for key, _, item in (str(entry).partition("=") for entry in value)}
    return {}


def _names(text: str) -> list[str]:
    if "$" in text:
        return []
    return [name for name in _SEPARATORS.split(text) if name]


def expected_methods(document: Any) -> dict[str, list[str]]:
    """Service name -> the methods it expects bound, for the services that say so."""
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        return {}
    found: dict[str, list[str]] = {}
    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        methods = _names(_pairs(service.get("labels")).get(EXPECT_LABEL, ""))
        methods += _names(_pairs(service.get("environment")).get(PROCEDURES_VARIABLE, ""))
        if methods:
            found[str(name)] = list(dict.fromkeys(methods))
    return found
