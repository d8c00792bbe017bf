"""Hostile inputs shared by the tests of the tools that read them, and a bounded way to run them.

``alias_bomb`` is the billion-laughs compose file: a few hundred bytes that expand to 9**(levels+1)
values. ``run_bounded`` runs Python code in a child with an address-space limit, so a reader that
expands the bomb fails there (MemoryError) instead of eating the shared machine's memory.
"""

from __future__ import annotations

import subprocess
import sys

__all__ = ["BOMB_SERVICES", "alias_bomb", "run_bounded"]

BOMB_SERVICES = "services:\n  app:\n    image: nginx\n    restart: always\n"


def alias_bomb(levels: int, services: str = BOMB_SERVICES) -> str:
    """Anchors x-a0..x-a<levels>, each a list of nine aliases of the one before, then *services*
    (which may refer to ``*a<levels>``)."""
    lines = ["x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        previous = f"*a{level - 1}"
        lines.append(f"x-a{level}: &a{level} [{', '.join([previous] * 9)}]")
    return "\n".join(lines) + "\n" + services


def run_bounded(code: str, *, memory: int = 512 * 1024 * 1024, timeout: float = 120
                ) -> subprocess.CompletedProcess[str]:
    """Run *code* in a child Python whose address space is limited to *memory* bytes."""
    limited = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n{code}"
    return subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True, timeout=timeout,
                          check=False)
