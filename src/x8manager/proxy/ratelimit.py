"""The proxy's name for :mod:`x8manager.common.ratelimit` (the flasher's request socket uses it too)."""

from x8manager.common.ratelimit import LOG_EVERY, SHOWN_CHARS, RateLimitedLog, shown

__all__ = ["LOG_EVERY", "SHOWN_CHARS", "RateLimitedLog", "shown"]
