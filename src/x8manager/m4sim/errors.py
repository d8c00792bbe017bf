"""The virtual M4's exceptions."""

from __future__ import annotations

__all__ = ["M4Halted", "M4SimError"]


class M4SimError(Exception):
    """Base class of the virtual M4's errors."""


class M4Halted(M4SimError):
    """The virtual M4 has halted (an exception left a sketch thread, as ``std::terminate`` on the
    real M4): its sketch code runs no more until a reset or a new flash. ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the virtual M4 has halted: {reason}")
        self.reason = reason
