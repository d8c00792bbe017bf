"""Drive a virtual X8 (or any Linux image) under QEMU from tests: power over QMP, a shell on the console.

Usable in a product's own CI: ``pip install x8manager[qemu]`` and either use :class:`Machine` directly
or load the pytest plugin (``-p x8manager.qemu.pytest_plugin``) for the ``x8_machine`` fixture.
"""

from .console import CommandFailed, Console, ConsoleError, ConsoleTimeout, Login
from .machine import Machine, MachineError, Profile, SshAccess, debian_profile, free_local_port, lmp_profile
from .qmp import QmpClient, QmpError

__all__ = [
    "CommandFailed",
    "Console",
    "ConsoleError",
    "ConsoleTimeout",
    "Login",
    "Machine",
    "MachineError",
    "Profile",
    "QmpClient",
    "QmpError",
    "SshAccess",
    "debian_profile",
    "free_local_port",
    "lmp_profile",
]
