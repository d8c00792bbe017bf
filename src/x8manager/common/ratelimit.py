"""Log lines a peer can trigger, at most one per kind every :data:`LOG_EVERY` seconds.

A flood (thousands of bad messages, an accept loop at the fd limit) must not turn into a flood
of journal lines: the first line of a kind goes out, the next ones are counted, and the count
rides on the next line of that kind that goes out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["LOG_EVERY", "RateLimitedLog"]

LOG_EVERY: Final = 10.0


class RateLimitedLog:
    """One line per kind per :data:`LOG_EVERY` seconds; the rest are counted and summed up."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, text: str, *args: Any) -> None:
        self.log(logging.WARNING, kind, text, *args)

    def log(
        self, level: int, kind: str, text: str, *args: Any, extra: Mapping[str, Any] | None = None
    ) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < LOG_EVERY:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        self._last[kind] = now
        suffix = f" ({skipped} more like this in the last {LOG_EVERY:g} s)" if skipped else ""
        self._log.log(level, text + suffix, *args, extra=extra)
