"""The virtual M4: a stand-in for the M4 sketch side of the X8's RPC link (``m4-sim``).

In-process use::

    m4 = VirtualM4()                   # demo procedures and SerialRPC's tty bound
    path = await m4.start_on_pty()     # Linux (m4-proxy --device PATH) opens *path*
    await m4.call("multiply", 3, 4)    # an M4 -> Linux call
    await m4.serial_println("hello")   # Serial output: two tty notifications
    await m4.stop()
"""

from x8manager.m4sim.control import ControlClient, ControlError, serve_control
from x8manager.m4sim.links import Endpoint, Link, connect, open_device, open_pty, parse_endpoint
from x8manager.m4sim.m4 import (
    LinuxCallError,
    LinuxCallTimeout,
    M4SimError,
    ReceivedCall,
    SimStats,
    VirtualM4,
)

__all__ = [
    "ControlClient",
    "ControlError",
    "Endpoint",
    "Link",
    "LinuxCallError",
    "LinuxCallTimeout",
    "M4SimError",
    "ReceivedCall",
    "SimStats",
    "VirtualM4",
    "connect",
    "open_device",
    "open_pty",
    "parse_endpoint",
    "serve_control",
]
