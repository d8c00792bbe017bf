"""``m4-proxy``: MessagePack-RPC between Linux programs and the M4, wire-compatible with Arduino's.

:class:`M4Proxy` is the engine (also usable in-process, e.g. by tests), :mod:`.cli` the daemon's
command line, :mod:`.daemon` the executable.

The names below are imported on first use (PEP 562): importing the package itself must not load
asyncio, so that the executable (:mod:`.daemon`) can decide first what the process loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from x8manager.proxy.core import M4Proxy, ProxyConfig
    from x8manager.proxy.link import StartupError

__all__ = ["M4Proxy", "ProxyConfig", "StartupError"]

_HOMES = {"M4Proxy": "core", "ProxyConfig": "core", "StartupError": "link"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
