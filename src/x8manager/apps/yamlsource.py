"""Load a compose file with PyYAML and remember the line of every key and value.

PyYAML's composer keeps a start mark on each node; we build the plain Python document from the
node tree ourselves so that each path (``("services", "web", "ports", 0)``) maps to the line it
came from. Later checks report problems by path and look the line up here. Duplicate keys,
which PyYAML silently collapses but ``docker compose`` rejects, are reported while walking.

A compose file is a few kilobytes written by people; anything far beyond that is refused
before it can cost much (:class:`YamlLimitError`): the nesting and the number of nodes are
counted on libyaml's event stream before any tree is built, and alias and merge-key expansion
is counted while building (seven levels of ``[*a, *a, ...]`` otherwise expand to gigabytes).
Python-specific tags (``!!python/object/apply:...``) are reported (:class:`YamlTagError`),
never silently read as plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "MAX_VALUES", "ComposeSource", "DuplicateKey", "Path",
           "YamlLimitError", "YamlLoadError", "YamlTagError", "key_text", "load_compose_file",
           "load_compose_text"]

Path = tuple[str | int, ...]

# Mappings and sequences nested deeper than this (also through aliases): compose files nest
# about 6 deep, and the tree walks (ours, jsonschema's) recurse once or more per level.
MAX_DEPTH = 32
# Nodes (scalars, collections, aliases) in the text.
MAX_NODES = 20_000
# Values built, counting every expansion of an alias or merge key.
MAX_VALUES = 50_000
# Compose files are a few KiB; past this one is not read at all.
MAX_FILE_BYTES = 256 * 1024

# libyaml when PyYAML has it: the same events and marks, an order of magnitude faster.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PYTHON_TAG = "tag:yaml.org,2002:python/"
# Compose's own tags (compose >= 2.24) on an override file's values; read as the value itself.
_COMPOSE_TAGS = ("!reset", "!override")
_COLLECTION_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


def key_text(key: Any) -> str:
    """A mapping key as a path element: a string key itself, else how YAML writes it (``1``,
    ``true``, ``null``). Paths use it for every key, so an ``int`` in a path is a list index."""
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


class YamlLoadError(Exception):
    """The text is not YAML (or not a single YAML document); *line* is 1-based, 0 if unknown."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class YamlLimitError(YamlLoadError):
    """The text is beyond what lint reads (depth, nodes, alias expansion)."""


class YamlTagError(YamlLoadError):
    """A tag docker compose does not read (a Python object constructor, an unknown collection tag)."""


def _tag_text(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _python_tag(tag: str, line: int) -> YamlTagError:
    return YamlTagError(
        f"YAML tag {_tag_text(tag)} asks for a Python object (PyYAML's unsafe loaders would run code); "
        "docker compose does not read it: remove the tag", line)


def _check_events(text: str) -> None:
    """Bound nesting and size on the event stream, which libyaml produces without recursing."""
    depth = 0
    nodes = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent | yaml.ScalarEvent | yaml.AliasEvent):
            nodes += 1
            line = int(event.start_mark.line) + 1 if event.start_mark is not None else 0
            tag = getattr(event, "tag", None)
            if tag and tag.startswith(_PYTHON_TAG):
                raise _python_tag(tag, line)
            if nodes > MAX_NODES:
                raise YamlLimitError(f"more than {MAX_NODES} YAML nodes; lint reads compose files up to "
                                     "that size", line)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise YamlLimitError(f"mappings and lists nested deeper than {MAX_DEPTH} levels", line)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


@dataclass(frozen=True)
class DuplicateKey:
    path: Path
    key: str
    line: int
    first_line: int


@dataclass
class ComposeSource:
    """A parsed compose document and the line of each path inside it."""

    document: Any
    lines: dict[Path, int] = field(default_factory=dict)
    key_lines: dict[Path, int] = field(default_factory=dict)
    duplicates: list[DuplicateKey] = field(default_factory=list)
    values_built: int = 0  # the builder's work, aliases counted each time they are expanded

    def line_of(self, path: Path, *, key: bool = False) -> int:
        """The line of *path* (of its key when *key*), else of its nearest ancestor; 1 for the root."""
        table = self.key_lines if key else self.lines
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), 1)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Builder:
    """Turns a composed node tree into Python values, recording lines on the way."""

    def __init__(self, source: ComposeSource) -> None:
        self.source = source
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()
        self.values = 0  # values built so far, aliases counted each time they are expanded

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag.startswith(_PYTHON_TAG):
            raise _python_tag(node.tag, _line(node))
        return self.constructor.construct_object(node, deep=True)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise YamlLimitError(f"the file expands to more than {MAX_VALUES} values through YAML aliases "
                                 "or merge keys (<<); lint refuses such alias bombs", _line(node))
        if len(path) > MAX_DEPTH:
            raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels through YAML aliases", _line(node))
        self.source.lines.setdefault(path, _line(node))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if node.tag not in _COLLECTION_TAGS and node.tag not in _COMPOSE_TAGS:
            if node.tag.startswith(_PYTHON_TAG):
                raise _python_tag(node.tag, _line(node))
            raise YamlTagError(f"YAML tag {_tag_text(node.tag)} is not one docker compose reads", _line(node))
        if id(node) in self.active:
            raise YamlLoadError("recursive YAML alias", _line(node))
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
        raise YamlLoadError(f"unsupported YAML node {node.tag}", _line(node))

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # "<<: *anchor" (used in compose files for shared settings): explicit keys win.
                for source in self._merge_sources(value_node):
                    value = self.build(source, path)
                    if not isinstance(value, dict):
                        raise YamlLoadError("a merge key (<<) needs a mapping or a list of mappings",
                                            _line(value_node))
                    for merged_key, merged_value in value.items():
                        merged.setdefault(merged_key, merged_value)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlLoadError("a mapping key must be a plain value, not a list or mapping",
                                    _line(key_node))
            key = self.scalar(key_node)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlLoadError(f"unsupported mapping key {key!r}", _line(key_node))
            label = key_text(key)
            if key in seen:
                self.source.duplicates.append(
                    DuplicateKey(path=path, key=str(key), line=_line(key_node), first_line=seen[key])
                )
            else:
                seen[key] = _line(key_node)
            child = (*path, label)
            self.source.key_lines[child] = _line(key_node)
            self.source.lines[child] = _line(value_node)
            result[key] = self.build(value_node, child)
        for merged_key, merged_value in merged.items():
            result.setdefault(merged_key, merged_value)
        return result

    @staticmethod
    def _merge_sources(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return [node]


def load_compose_text(text: str) -> ComposeSource:
    """Parse one YAML document; raise :class:`YamlLoadError` with a line number on bad input."""
    try:
        _check_events(text)
        nodes = list(yaml.compose_all(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = int(mark.line) + 1 if mark is not None else 0
        problem = error.problem or str(error)
        if "nesting depth" in problem:  # libyaml's own limit (1,000 levels), met while scanning ahead
            raise YamlLimitError(f"mappings and lists nested deeper than {MAX_DEPTH} levels", line) from error
        context = f" ({error.context})" if error.context else ""
        raise YamlLoadError(f"invalid YAML: {problem}{context}", line) from error
    except yaml.YAMLError as error:
        raise YamlLoadError(f"invalid YAML: {error}", 0) from error
    if len(nodes) > 1:
        raise YamlLoadError("a compose file holds one YAML document, this one has several",
                            _line(nodes[1]))
    source = ComposeSource(document=None)
    if not nodes:
        return source
    builder = _Builder(source)
    try:
        source.document = builder.build(nodes[0], ())
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        line = int(mark.line) + 1 if mark is not None else 0
        raise YamlLoadError(f"invalid YAML value: {error.problem}", line) from error
    finally:
        source.values_built = builder.values
    return source


def load_compose_file(path: FilePath) -> ComposeSource:
    """Read and parse a compose file within the limits; OSError when it cannot be read,
    :class:`YamlLimitError` past :data:`MAX_FILE_BYTES`, :class:`YamlLoadError` when not UTF-8 YAML.
    Every reader of compose files (lint, ``x8-apps status``, ``x8 apps push``) comes through here
    or :func:`load_compose_text`."""
    with path.open("rb") as file:
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise YamlLimitError(f"larger than {MAX_FILE_BYTES // 1024} KiB; compose files are read up to that "
                             "size, and this one was not", 0)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise YamlLoadError(f"not UTF-8 text (byte {error.start})",
                            raw[: error.start].count(b"\n") + 1) from error
    return load_compose_text(text)
