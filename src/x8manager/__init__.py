"""Manager stack for the Arduino Portenta X8.

Subpackages, one per service plus shared code:

- ``x8manager.rpc``: MessagePack-RPC framing and the client/server library apps use.
- ``x8manager.proxy``: the ``m4-proxy`` daemon (drop-in for Arduino's Go proxy).
- ``x8manager.m4sim``: the virtual M4, a stand-in for the sketch side of the wire.
- ``x8manager.flasher``: the ``m4-flasher`` daemon that programs M4 sketches.
- ``x8manager.apps``: ``x8-apps``, tooling for compose apps that talk to the M4.
- ``x8manager.common``: logging to the journal, systemd notification.
"""

__version__ = "0.1.0"
