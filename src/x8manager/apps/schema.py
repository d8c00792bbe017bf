"""Validate a compose document against the official Compose specification JSON schema.

We do not write the specification ourselves: the schema file is the one the ``check-jsonschema``
project vendors from compose-spec (``check_jsonschema/builtin_schemas/vendor/compose-spec.json``).
It is read as a data file through the distribution's file list, so none of check-jsonschema's own
imports (click, requests, ...) are needed at run time. ``--schema`` or ``$X8_APPS_COMPOSE_SCHEMA``
point at another copy of the file; on a Yocto image the layer's ``compose-spec-schema`` package
installs compose-spec's own file as ``/usr/share/x8manager/compose-spec.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path as FilePath
from typing import Any

import jsonschema
import jsonschema.exceptions

from .yamlsource import ComposeSource, Path, key_text

__all__ = ["SchemaProblem", "SchemaUnavailable", "compose_schema", "schema_problems"]

SCHEMA_DISTRIBUTION = "check-jsonschema"
SCHEMA_MEMBER = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
SCHEMA_ENV = "X8_APPS_COMPOSE_SCHEMA"
SYSTEM_SCHEMA = FilePath("/usr/share/x8manager/compose-spec.json")


class SchemaUnavailable(Exception):
    """The Compose specification schema cannot be found or read."""


@dataclass(frozen=True)
class SchemaProblem:
    path: Path
    line: int
    message: str


def _packaged_schema_path(system_schema: FilePath = SYSTEM_SCHEMA) -> FilePath:
    try:
        distribution = metadata.distribution(SCHEMA_DISTRIBUTION)
    except metadata.PackageNotFoundError as error:
        if system_schema.is_file():
            return system_schema
        raise SchemaUnavailable(
            f"the Compose specification schema comes with the Python package {SCHEMA_DISTRIBUTION!r}, "
            f"which is not installed (pip install {SCHEMA_DISTRIBUTION}; or install the schema as "
            f"{system_schema}, which the package compose-spec-schema of meta-x8-manager does; "
            f"or set ${SCHEMA_ENV} to a compose-spec.json file)"
        ) from error
    for member in distribution.files or ():
        if str(member) == SCHEMA_MEMBER:
            return FilePath(str(distribution.locate_file(member)))
    raise SchemaUnavailable(
        f"{SCHEMA_DISTRIBUTION} {distribution.version} does not ship {SCHEMA_MEMBER}"
    )


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            schema = json.load(stream)
    except (OSError, ValueError) as error:
        raise SchemaUnavailable(f"cannot read the Compose schema {path}: {error}") from error
    if not isinstance(schema, dict):
        raise SchemaUnavailable(f"{path} is not a JSON schema (top level is not an object)")
    return schema


def compose_schema(path: str | None = None) -> dict[str, Any]:
    """The Compose spec schema: *path*, ``$X8_APPS_COMPOSE_SCHEMA``, check-jsonschema's, or the system's."""
    chosen = path or os.environ.get(SCHEMA_ENV) or str(_packaged_schema_path())
    return _load(chosen)


def _leaf_errors(
    error: jsonschema.exceptions.ValidationError,
) -> Iterator[jsonschema.exceptions.ValidationError]:
    """For a oneOf/anyOf failure, the error inside the branch whose type matched explains more."""
    deeper = [sub for sub in error.context or () if sub.validator != "type"]
    best = jsonschema.exceptions.best_match(deeper) if deeper else None
    if best is None:
        yield error
    else:
        yield from _leaf_errors(best)


def _resolve(fragment: Any, root: dict[str, Any]) -> Any:
    """Follow a local ``$ref`` (the compose schema only uses ``#/$defs/...``)."""
    seen = 0
    while isinstance(fragment, dict) and isinstance(fragment.get("$ref"), str) and seen < 32:
        target: Any = root
        for part in fragment["$ref"].lstrip("#/").split("/"):
            if not isinstance(target, dict) or part not in target:
                return {}
            target = target[part]
        fragment = target
        seen += 1
    return fragment


def _known_keys(fragment: Any, root: dict[str, Any]) -> tuple[set[str], list[str]]:
    """Property names and patterns a schema fragment declares, through ``$ref`` and ``allOf``."""
    fragment = _resolve(fragment, root)
    names: set[str] = set()
    patterns: list[str] = []
    if not isinstance(fragment, dict):
        return names, patterns
    names.update(fragment.get("properties", {}))
    patterns.extend(fragment.get("patternProperties", {}))
    for part in fragment.get("allOf", []):
        more_names, more_patterns = _known_keys(part, root)
        names |= more_names
        patterns.extend(more_patterns)
    return names, patterns


def _unknown_key_problems(
    error: jsonschema.exceptions.ValidationError, source: ComposeSource, root: dict[str, Any]
) -> list[SchemaProblem]:
    path: Path = tuple(error.absolute_path)
    where = "/".join(str(part) for part in path) or "(top level)"
    names, patterns = _known_keys(error.schema, root)
    problems = []
    instance: dict[str, Any] = error.instance if isinstance(error.instance, dict) else {}
    for key in instance:
        if key in names or any(re.search(pattern, str(key)) for pattern in patterns):
            continue
        key_path: Path = (*path, str(key))
        problems.append(SchemaProblem(
            key_path,
            source.line_of(key_path, key=True),
            f"{where}: unknown key {key!r} (not in the Compose specification)",
        ))
    return problems


def _describe(
    error: jsonschema.exceptions.ValidationError, source: ComposeSource, root: dict[str, Any]
) -> list[SchemaProblem]:
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(
        error.instance, dict
    ):
        # An "unevaluated" complaint with no unknown key only echoes errors reported elsewhere.
        return _unknown_key_problems(error, source, root)
    path: Path = tuple(error.absolute_path)
    where = "/".join(str(part) for part in path) or "(top level)"
    return [SchemaProblem(path, source.line_of(path), f"{where}: {error.message}")]


_KEY_KINDS: dict[type, str] = {bool: "a boolean", int: "a number", float: "a number", type(None): "null"}


def _non_string_key_problems(source: ComposeSource) -> list[SchemaProblem]:
    """Mapping keys YAML reads as numbers, booleans or null: Compose wants strings (``docker
    compose`` refuses such a service name), and JSON-schema validators cannot even match them."""
    problems: list[SchemaProblem] = []
    pending: list[tuple[Any, Path]] = [(source.document, ())]
    while pending:
        value, path = pending.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                label = key_text(key)
                if not isinstance(key, str):
                    where = "/".join(str(part) for part in path) or "(top level)"
                    problems.append(SchemaProblem(
                        (*path, label), source.line_of((*path, label), key=True),
                        f"{where}: key {label} is read as {_KEY_KINDS.get(type(key), 'a value')}, "
                        f"not a string; quote it ('{label}')",
                    ))
                pending.append((child, (*path, label)))
        elif isinstance(value, list):
            pending.extend((child, (*path, index)) for index, child in enumerate(value))
    return problems


def _with_string_keys(value: Any) -> Any:
    """A copy of *value* whose mapping keys are all strings (non-string keys were reported)."""
    if isinstance(value, dict):
        return {key_text(key): _with_string_keys(child)
                for key, child in value.items()}
    if isinstance(value, list):
        return [_with_string_keys(child) for child in value]
    return value


def schema_problems(source: ComposeSource, schema: dict[str, Any]) -> list[SchemaProblem]:
    """Every place where the document breaks the Compose specification, with lines."""
    # compose-spec's own file says "$schema": "https://json-schema.org/draft-07/schema" (https, no
    # "#"), which jsonschema does not recognise; it is draft 7. check-jsonschema's copy says 2020-12.
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator = validator_class(schema)
    problems = _non_string_key_problems(source)
    document = _with_string_keys(source.document) if problems else source.document
    for error in validator.iter_errors(document):
        for leaf in _leaf_errors(error):
            problems.extend(_describe(leaf, source, schema))
    return sorted(set(problems), key=lambda problem: (problem.line, problem.message))
