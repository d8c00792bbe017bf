"""``m4-proxy``: MessagePack-RPC between Linux programs and the M4, wire-compatible with Arduino's.

:class:`M4Proxy` is the engine (also usable in-process, e.g. by tests), :mod:`.cli` the daemon.
"""

from x8manager.proxy.core import M4Proxy, ProxyConfig
from x8manager.proxy.link import StartupError

__all__ = ["M4Proxy", "ProxyConfig", "StartupError"]
