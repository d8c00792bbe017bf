"""Demo procedures the virtual M4 binds by default, modelled on Arduino's example sketches.

``PortentaX8_EchoServer.ino`` binds ``subtract``; ``rpc-sensors.ino`` and ``M4_BME280_RPC.ino``
bind sensor reads returning ints; ``gas`` is left unbound on purpose, as in the tutorial where
calling it shows rpclib's "could not find function" error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from x8manager.m4sim.m4 import VirtualM4

__all__ = ["bind_demo_procedures", "demo_procedures"]

WHOAMI = "virtual M4 (m4-sim stand-in for the Portenta X8 M4 sketch)"


def bind_demo_procedures(m4: VirtualM4) -> None:
    """Bind the demo procedures on *m4*."""
    for name, fn in demo_procedures().items():
        m4.bind(name, fn)


def demo_procedures() -> dict[str, Callable[..., Any]]:
    """The demo procedures by name (fresh state for each call: one sketch's LED is its own)."""
    led = {"on": False}

    def add(a: int, b: int) -> int:
        return a + b

    def subtract(a: int, b: int) -> int:
        return a - b

    def echo(value: Any) -> Any:
        return value

    def whoami() -> str:
        return WHOAMI

    def temperature() -> int:
        return 215  # rpc-sensors.ino returns ints in 100..500 (tenths of a degree here)

    def humidity() -> int:
        return 450

    def pressure() -> int:
        return 101

    def status() -> int:
        return 1

    def set_led(on: bool) -> bool:
        led["on"] = bool(on)
        return led["on"]

    async def delay(milliseconds: int) -> int:
        # A sketch that blocks (delay(ms)) inside a procedure; for timeout tests.
        await asyncio.sleep(max(0, milliseconds) / 1000)
        return int(milliseconds)

    def blob(size: int) -> bytes:
        # A std::vector<uint8_t> result of *size* bytes (bin): for chunking and size-limit tests.
        return bytes(i % 256 for i in range(max(0, min(int(size), 4096))))

    return {
        "add": add,
        "subtract": subtract,
        "echo": echo,
        "whoami": whoami,
        "temperature": temperature,
        "humidity": humidity,
        "pressure": pressure,
        "status": status,
        "led": set_led,
        "delay": delay,
        "blob": blob,
    }
