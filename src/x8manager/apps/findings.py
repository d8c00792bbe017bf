"""Lint findings and their two output forms (people, JSON)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Finding", "Severity", "format_human", "format_json"]


class Severity(enum.Enum):
    """How bad a finding is; errors and warnings make ``x8-apps lint`` exit 1, notes do not."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"

    @property
    def is_problem(self) -> bool:
        return self is not Severity.NOTE


@dataclass(frozen=True, order=True)
class Finding:
    """One problem in one compose file, located by 1-based line (0 when the file has none)."""

    path: str
    line: int
    rule: str
    name: str
    severity: Severity
    message: str
    service: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "rule": self.rule,
            "name": self.name,
            "severity": self.severity.value,
            "service": self.service,
            "message": self.message,
        }


def format_human(findings: Iterable[Finding], files_checked: int) -> str:
    """``path:line: severity RULE name: message`` lines, the way compilers print them, plus a summary."""
    lines: list[str] = []
    counts = {severity: 0 for severity in Severity}
    for finding in sorted(findings):
        counts[finding.severity] += 1
        where = f"{finding.path}:{finding.line}" if finding.line else finding.path
        scope = f" [service {finding.service}]" if finding.service else ""
        lines.append(
            f"{where}: {finding.severity.value} {finding.rule} {finding.name}{scope}: {finding.message}"
        )
    plural = "" if files_checked == 1 else "s"
    lines.append(
        f"{files_checked} compose file{plural} checked: {counts[Severity.ERROR]} error(s), "
        f"{counts[Severity.WARNING]} warning(s), {counts[Severity.NOTE]} note(s)"
    )
    return "\n".join(lines) + "\n"


def format_json(findings: Iterable[Finding], files: Iterable[str]) -> str:
    """A stable JSON document: the files checked and every finding, sorted by place."""
    document = {
        "files": sorted(files),
        "findings": [finding.as_dict() for finding in sorted(findings)],
    }
    return json.dumps(document, indent=2) + "\n"
