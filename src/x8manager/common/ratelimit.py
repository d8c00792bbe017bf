"""Log lines a peer can trigger, at most a few per kind every :data:`LOG_EVERY` seconds.

A flood (thousands of bad messages, an accept loop at the fd limit) must not turn into a flood
of journal lines: the first lines of a kind go out (one, or a small burst for kinds a healthy
system also produces, such as apps starting and providing their methods), the next ones are
counted, and the count rides on the next line of that kind that goes out. The proxy and the
flasher's request socket both use it.
"""

from __future__ import annotations

import logging
import reprlib
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["LOG_EVERY", "RateLimitedLog", "shown"]

LOG_EVERY: Final = 10.0
# A peer-chosen text (a method name, a label) is logged at most this long, repr-quoted.
SHOWN_CHARS: Final = 64

_REPR = reprlib.Repr()
_REPR.maxstring = SHOWN_CHARS
_REPR.maxother = SHOWN_CHARS


def shown(text: object) -> str:
    """*text* as a log line shows it: quoted (no control characters) and cut to a few dozen characters."""
    return _REPR.repr(text)


class RateLimitedLog:
    """At most *burst* lines per kind per :data:`LOG_EVERY` seconds; the rest are counted and summed up."""

    def __init__(self, logger: logging.Logger, *, burst: int = 1) -> None:
        self._log = logger
        self._burst = max(1, burst)
        self._window: dict[str, tuple[float, int]] = {}  # kind -> (window start, lines in it)
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, text: str, *args: Any) -> None:
        self.log(logging.WARNING, kind, text, *args)

    def info(self, kind: str, text: str, *args: Any) -> None:
        self.log(logging.INFO, kind, text, *args)

    def log(
        self, level: int, kind: str, text: str, *args: Any, extra: Mapping[str, Any] | None = None
    ) -> None:
        if not self._log.isEnabledFor(level):
            return
        now = time.monotonic()
        started, lines = self._window.get(kind, (now - LOG_EVERY, 0))
        if now - started >= LOG_EVERY:
            started, lines = now, 0
        if lines >= self._burst:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._window[kind] = (started, lines + 1)
        skipped = self._skipped.pop(kind, 0)
        suffix = f" ({skipped} more like this in the last {LOG_EVERY:g} s)" if skipped else ""
        self._log.log(level, text + suffix, *args, extra=extra)

    @property
    def held_back(self) -> int:
        """Lines counted and not written yet (all kinds)."""
        return sum(self._skipped.values())
