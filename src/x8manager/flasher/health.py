"""Is the freshly flashed sketch alive? Ask it through the proxy's call port (5001).

Three checks, each retried until a deadline (the M4 boots, the proxy reopens its device):

- ``method NAME``: NAME answers without an error (the sketch's own health procedure);
- ``bound NAME``: the sketch binds NAME. It is called with an argument count no procedure takes
  (rpclib checks the name first, then the count), so an "invalid number of arguments" error proves
  it is bound without running it; "could not find function" means it is not (yet);
- ``alive``: RPC itself works: a name no sketch binds gets rpclib's "could not find function".
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from x8manager.flasher.records import HealthCheck
from x8manager.rpc.client import AsyncM4Client
from x8manager.rpc.errors import RpcError, X8RpcError

__all__ = ["HealthCheck", "HealthResult", "run_health_check"]

PROBE_NAME = "__m4_flasher_health_probe__"
_NOT_FOUND = "could not find function"
_ARITY = "invalid number of arguments"
_IMPOSSIBLE_ARITY = 17
_RETRY_SECONDS = 0.25


@dataclass
class HealthResult:
    healthy: bool
    reason: str
    seconds: float
    checked: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "checked": self.checked,
        }


async def _one(client: AsyncM4Client, check: HealthCheck, step: str) -> tuple[bool, str]:
    """(passed, what happened) for one step: "method", "bound:NAME" or "alive"."""
    try:
        if step == "method":
            assert check.method is not None
            await client.call(check.method)
            return True, f"{check.method}() answered"
        if step.startswith("bound:"):
            name = step.removeprefix("bound:")
            await client.call(name, *([None] * _IMPOSSIBLE_ARITY))
            return True, f"{name} is bound"
        await client.call(PROBE_NAME)
        return False, f"{PROBE_NAME} answered without an error"
    except RpcError as error:
        text = str(error)
        if step.startswith("bound:"):
            return _ARITY in text, text
        if step == "alive":
            return _NOT_FOUND in text, text
        return False, text
    except X8RpcError as error:
        return False, str(error)
    except (OSError, ValueError, OverflowError, UnicodeError) as error:
        # A check that cannot even be made (an unresolvable host, ...) fails like one that is
        # refused: it never lets an unchecked sketch pass.
        return False, f"the check could not run: {error}"


async def run_health_check(check: HealthCheck) -> HealthResult:
    """Retry every step until it passes or the deadline is reached (never raises for a check
    that cannot run: that is a failed check)."""
    started = time.monotonic()
    deadline = started + check.timeout
    steps = (["method"] if check.method else []) + [f"bound:{name}" for name in check.bound]
    steps = steps or ["alive"]
    checked: list[str] = []
    for step in steps:
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return HealthResult(
                    False,
                    f"health check failed after {check.timeout:g} s: "
                    f"{step.replace('bound:', 'binds ')}: {last}",
                    time.monotonic() - started,
                    checked,
                )
            client = AsyncM4Client(check.host, check.port, timeout=min(remaining, 3.0))
            passed, last = await _one(client, check, step)
            if passed:
                checked.append(last)
                break
            await asyncio.sleep(min(_RETRY_SECONDS, max(0.0, deadline - time.monotonic())))
    return HealthResult(True, "; ".join(checked), time.monotonic() - started, checked)
