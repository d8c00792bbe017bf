"""The virtual M4: a stand-in for the M4 sketch side of the X8's RPC link (``m4-sim``).

It behaves as Arduino's RPC library does on a real M4 (see :mod:`x8manager.m4sim.m4`). In-process::

    m4 = VirtualM4()                   # demo procedures and SerialRPC's tty bound
    path = await m4.start_on_pty()     # Linux (m4-proxy --device PATH) opens *path*
    thread = m4.thread(1)              # a sketch thread: its own fixed msgid
    thread.set_timeout(500)            # RPC.setTimeout(500); without it a call waits forever
    await thread.call("multiply", 3, 4)  # 12; None after an error reply or a timeout
    await thread.call("divide", Float32(1.5), 2.0)  # a sketch's float (ca) and double (cb)
    await m4.call_as("int", "remoteAdd", 1, 2)  # .as<int>(): on nil the M4 halts (M4Halted)
    await m4.serial_println("hello")   # Serial output: two tty notifications
    await m4.stop()
"""

from x8manager.m4sim.calls import SketchThread
from x8manager.m4sim.control import ControlClient, ControlError, serve_control
from x8manager.m4sim.cxx import Float32
from x8manager.m4sim.dispatcher import ReceivedCall
from x8manager.m4sim.errors import M4Halted, M4SimError
from x8manager.m4sim.links import Endpoint, Link, connect, open_device, open_pty, parse_endpoint
from x8manager.m4sim.m4 import SimStats, SimSwitches, VirtualM4

__all__ = [
    "ControlClient",
    "ControlError",
    "Endpoint",
    "Float32",
    "Link",
    "M4Halted",
    "M4SimError",
    "ReceivedCall",
    "SimStats",
    "SimSwitches",
    "SketchThread",
    "VirtualM4",
    "connect",
    "open_device",
    "open_pty",
    "parse_endpoint",
    "serve_control",
]
