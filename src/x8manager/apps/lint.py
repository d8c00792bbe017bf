"""``x8-apps lint``: find the compose files under the given paths and check each one.

The order of checks: YAML (with lines) -> duplicate keys -> Compose specification -> X8 rules.
The X8 rules only run on a file that passed the schema, so they can trust its shape.

Input beyond the limits (:data:`MAX_FILE_BYTES`, and those of :mod:`.yamlsource` and
:mod:`.rules`) is one ``X8003 input-limit`` finding and makes ``x8-apps lint`` exit 2, like
any input it cannot read: the file was not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .findings import Finding
from .rules import RULES, check_x8_rules
from .schema import schema_problems
from .sketch import check_sketch_code
from .yamlsource import (
    MAX_FILE_BYTES,
    ComposeSource,
    YamlLimitError,
    YamlLoadError,
    YamlTagError,
    load_compose_file,
    load_compose_text,
)

__all__ = ["COMPOSE_FILE_NAMES", "MAX_FILE_BYTES", "LintReport", "UnreadableInput", "find_compose_files",
           "lint_file", "lint_paths", "lint_sketch_code"]

# docker compose's own search order; FoundriesFactory apps use docker-compose.yml.
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")

LIMIT_RULE = "X8003"


class UnreadableInput(Exception):
    """A path that does not exist, cannot be read, or holds no compose file."""


@dataclass
class LintReport:
    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def has_problems(self) -> bool:
        return any(finding.severity.is_problem for finding in self.findings)

    @property
    def refused(self) -> bool:
        """A file was beyond the input limits, so it was not (fully) checked."""
        return any(finding.rule == LIMIT_RULE for finding in self.findings)


def compose_file_in(folder: Path) -> Path | None:
    for name in COMPOSE_FILE_NAMES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def find_compose_files(path: Path) -> list[Path]:
    """A compose file itself, an app folder's compose file, or every app's in a containers.git root."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise UnreadableInput(f"{path}: no such file or directory")
    if not path.is_dir():
        raise UnreadableInput(f"{path}: not a file or directory")
    own = compose_file_in(path)
    if own is not None:
        return [own]
    try:
        folders = sorted(child for child in path.iterdir() if child.is_dir())
    except OSError as error:
        raise UnreadableInput(f"{path}: cannot list: {error.strerror}") from error
    found = [file for folder in folders if (file := compose_file_in(folder)) is not None]
    if not found:
        raise UnreadableInput(
            f"{path}: no compose file ({', '.join(COMPOSE_FILE_NAMES)}) in it or in its app folders"
        )
    return found


def _finding(path: str, rule_id: str, line: int, message: str) -> Finding:
    rule = RULES[rule_id]
    return Finding(path, line, rule.rule, rule.name, rule.severity, message)


def _load_finding(path: str, error: YamlLoadError) -> Finding:
    if isinstance(error, YamlLimitError):
        return _finding(path, LIMIT_RULE, error.line, error.message)
    if isinstance(error, YamlTagError):
        return _finding(path, "X8004", error.line, error.message)
    return _finding(path, "X8000", error.line, error.message)


def _lint_source(source: ComposeSource, path: str, schema: dict[str, Any]) -> list[Finding]:
    findings = [
        _finding(path, "X8001", duplicate.line,
                 f"key {duplicate.key!r} appears again (first on line {duplicate.first_line})")
        for duplicate in source.duplicates
    ]
    if source.document is None:
        return [*findings, _finding(path, "X8002", 1, "the file is empty; a compose file needs services:")]
    problems = schema_problems(source, schema)
    findings.extend(_finding(path, "X8002", problem.line, problem.message) for problem in problems)
    if not problems:
        findings.extend(check_x8_rules(source, path))
    return findings


def lint_text(text: str, path: str, schema: dict[str, Any]) -> list[Finding]:
    """Every finding for one compose file's text; *path* is only used to label them."""
    try:
        source = load_compose_text(text)
    except YamlLoadError as error:
        return [_load_finding(path, error)]
    return _lint_source(source, path, schema)


def lint_file(path: Path, schema: dict[str, Any]) -> list[Finding]:
    try:
        source = load_compose_file(path)
    except OSError as error:
        raise UnreadableInput(f"{path}: cannot read: {error.strerror}") from error
    except YamlLoadError as error:
        return [_load_finding(str(path), error)]
    return _lint_source(source, str(path), schema)


def lint_sketch_code(app_folder: Path) -> list[Finding]:
    """The findings in the app's own M4 sketch (``sketch/*.ino``), each on its file and line."""
    return [_finding(str(problem.path), problem.rule, problem.line, problem.message)
            for problem in check_sketch_code(app_folder)]


def lint_paths(paths: Sequence[Path], schema: dict[str, Any], ignore: Iterable[str] = ()) -> LintReport:
    """Lint every compose file under *paths*; unreadable inputs are collected, the rest still checked."""
    ignored = set(ignore)
    report = LintReport()
    for path in paths:
        try:
            files = find_compose_files(path)
        except UnreadableInput as error:
            report.unreadable.append(str(error))
            continue
        for file in files:
            try:
                findings = lint_file(file, schema)
            except UnreadableInput as error:
                report.unreadable.append(str(error))
                continue
            report.files.append(str(file))
            findings.extend(lint_sketch_code(file.parent))
            report.findings.extend(f for f in findings if f.rule not in ignored and f.name not in ignored)
    return report
