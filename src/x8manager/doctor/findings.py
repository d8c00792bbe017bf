"""What ``x8 doctor`` found: one finding per check, in the order the checks ran."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

__all__ = ["LAYERS", "Finding", "Report", "Status"]

# Bottom-up: a broken layer explains every failure above it, so the first one is the answer.
LAYERS = ("h7", "proxy", "sketch", "apps")


class Status(enum.Enum):
    OK = "ok"
    WARNING = "warning"  # worth knowing, does not break the path (exit 0)
    PROBLEM = "problem"  # this layer is broken (exit 1); the layers above are not checked
    SKIPPED = "skipped"  # could not be checked here (no systemd, no flasher installed, ...)


@dataclass(frozen=True)
class Finding:
    layer: str
    check: str
    status: Status
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "check": self.check, "status": self.status.value,
                "message": self.message, "fix": self.fix}


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)  # layers above the broken one

    @property
    def problem(self) -> Finding | None:
        return next((f for f in self.findings if f.status is Status.PROBLEM), None)

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def as_json(self) -> str:
        problem = self.problem
        document = {
            "healthy": self.healthy,
            "broken_layer": problem.layer if problem else None,
            "findings": [finding.as_dict() for finding in self.findings],
            "not_checked": self.not_checked,
        }
        return json.dumps(document, indent=2) + "\n"

    def as_text(self) -> str:
        marks = {Status.OK: "ok", Status.WARNING: "warn", Status.PROBLEM: "FAIL", Status.SKIPPED: "skip"}
        lines = []
        for finding in self.findings:
            mark = marks[finding.status]
            lines.append(f"[{mark:>4}] {finding.layer:<6} {finding.check}: {finding.message}")
            if finding.fix and finding.status in (Status.PROBLEM, Status.WARNING):
                lines.append(f"{'':14}fix: {finding.fix}")
        problem = self.problem
        if problem is None:
            lines.append("healthy: every layer of the M4 RPC path works")
        else:
            lines.append(f"broken layer: {problem.layer} ({problem.check}); "
                         f"not checked: {', '.join(self.not_checked) or 'nothing'}")
        return "\n".join(lines) + "\n"
