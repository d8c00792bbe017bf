"""The laptop side: ``x8``, the host CLI that uploads sketches, calls into the M4, pushes compose apps
and shows the M4's Serial, on a device reached over SSH or adb (``--device`` / ``$X8_DEVICE``).

Nothing here runs on the device: every step is a command of the device's own tools (``m4-flasher``,
``x8-apps``, ``docker``) run through a :class:`~x8manager.host.transport.Transport`.
"""
