"""Apps that ship their M4 sketch: how a compose file declares it, and what lint checks of it.

The contract (``x8-apps new --template m4-sketch`` writes it; docs/flasher.md, "Ship a sketch with your app"):

- a *sketch service* runs the app's own image with ``x8manager.flasher.client`` as its command and
  ``X8_SKETCH`` (the ELF's path in the image) in its environment, optional ``X8_SKETCH_HEALTH_METHOD``,
  ``X8_SKETCH_HEALTH_BOUND`` (comma-separated) and ``X8_SKETCH_HEALTH_TIMEOUT``; it mounts the host's
  ``/run/m4-flasher`` (the flasher's request socket) and has ``restart: "no"``: it runs once per
  ``docker compose up`` and exits 0 only when the sketch is flashed and healthy;
- the app's M4-facing services ``depends_on`` it with ``condition: service_completed_successfully``,
  so they never start next to a sketch that failed (and the target fails, so aktualizr-lite rolls
  back the containers, whose sketch service then puts the old sketch back).

The sketch's own source (``sketch/*.ino``, one sketch as arduino-cli joins them) is checked for what
Arduino's examples do and an X8's M4 does not survive: ``while (!Serial) {}`` waits forever there (the
RPC library never marks itself ready on the M4), and ``Serial`` is the RPC library's ``SerialRPC``
only with ``#include <SerialRPC.h>``. Comments and string literals are not read as code.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FLASHER_SOCKET_DIR",
    "CodeProblem",
    "SketchProblem",
    "SketchService",
    "check_sketch_code",
    "check_sketch_services",
    "sketch_services",
]

FLASHER_SOCKET_DIR = "/run/m4-flasher"
_FLASHER_SOCKET = f"{FLASHER_SOCKET_DIR}/request.sock"
# RPC.bind("name", ...) in the sketch's source: what the sketch binds, for the health names.
_RPC_BIND = re.compile(r"""\bRPC\s*\.\s*bind\s*\(\s*"([^"\\]+)\"""")
_SOURCE_SUFFIXES = (".ino", ".cpp", ".c", ".h", ".hpp")
_SOURCE_LIMIT = (100, 512 * 1024)  # files, bytes per file
# In code with comments and string literals blanked out (_code_only).
_WAIT_FOR_READY = re.compile(r"\bwhile\s*\(\s*!\s*(Serial|SerialRPC|RPC)\s*\)")
_SERIAL_USE = re.compile(r"\bSerial\s*\.\s*\w+\s*\(")
_SERIAL_RPC_INCLUDE = re.compile(r"#\s*include\s*[<\"]SerialRPC\.h[>\"]")
# Comments, and string or character literals (with their escapes), in C++ source; an #include's
# "file" is kept (the first alternative).
_NOT_CODE = re.compile(r"""(?P<include>\#[ \t]*include[ \t]*"[^"\n]*")|//[^\n]*|/\*.*?(?:\*/|\Z)"""
                       r"""|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?""", re.DOTALL)


@dataclass(frozen=True)
class SketchService:
    """A compose service that flashes the app's sketch."""

    name: str
    sketch: str
    health_method: str | None
    health_bound: tuple[str, ...]


@dataclass(frozen=True)
class SketchProblem:
    """A finding for rules.py to report: rule id, where (compose path), message, service."""

    rule: str
    where: tuple[str | int, ...]
    message: str
    service: str
    key: bool = False


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment")
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    if isinstance(env, list):
        return {str(item).partition("=")[0]: str(item).partition("=")[2] for item in env}
    return {}


def sketch_services(services: dict[str, Any]) -> list[SketchService]:
    """The services of a compose file that hand a sketch to the flasher (``X8_SKETCH`` set)."""
    found = []
    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        env = _env(service)
        if not env.get("X8_SKETCH", "").strip():
            continue
        bound = tuple(n.strip() for n in env.get("X8_SKETCH_HEALTH_BOUND", "").split(",") if n.strip())
        found.append(SketchService(str(name), env["X8_SKETCH"].strip(),
                                   env.get("X8_SKETCH_HEALTH_METHOD", "").strip() or None, bound))
    return found


def _mounts_socket(service: dict[str, Any]) -> bool:
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = entry.get("source"), entry.get("target")
        else:
            source, _, rest = str(entry).partition(":")
            target = rest.partition(":")[0]
        if isinstance(source, str) and isinstance(target, str):
            pair = (source.rstrip("/"), target.rstrip("/"))
            if pair in ((FLASHER_SOCKET_DIR, FLASHER_SOCKET_DIR), (_FLASHER_SOCKET, _FLASHER_SOCKET)):
                return True
    return False


def _waits_for(service: dict[str, Any], sidecar: str) -> bool:
    depends = service.get("depends_on")
    if not isinstance(depends, dict):
        return False
    condition = depends.get(sidecar)
    return isinstance(condition, dict) and condition.get("condition") == "service_completed_successfully"


def _dockerfile_copies(app_folder: Path) -> Iterator[tuple[str | None, str]]:
    """(source in the folder, target in the image) of each COPY/ADD of the Dockerfile; the source
    is None for ``COPY --from=STAGE`` (made by a build stage, e.g. the Factory compiling the sketch)."""
    try:
        text = (app_folder / "Dockerfile").read_text(encoding="utf-8", errors="replace")[:256 * 1024]
    except OSError:
        return
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0].upper() not in ("COPY", "ADD"):
            continue
        flags = [w for w in words[1:] if w.startswith("--")]
        *sources, target = [w for w in words[1:] if not w.startswith("--")]
        from_stage = any(flag.startswith("--from=") for flag in flags)
        for source in sources:
            yield (None if from_stage else source), target


_FROM_STAGE = ""  # the sketch is made by a build stage of the Dockerfile, not taken from the folder


def _sketch_source_in_folder(app_folder: Path, image_path: str) -> str | None:
    """The folder's file that the Dockerfile copies to *image_path* (:data:`_FROM_STAGE` when a
    build stage makes it), or None if nothing does."""
    for source, target in _dockerfile_copies(app_folder):
        if target == image_path:
            return _FROM_STAGE if source is None else source
        if target.endswith("/") and image_path.startswith(target):
            return _FROM_STAGE if source is None else source.rstrip("/") + "/" + image_path[len(target):]
    return None


def _in_build_context(source: str) -> str | None:
    """A COPY source as a path inside the build context (docker reads a leading "/" as the
    context's root), or None when it leads out of it ("../x")."""
    relative = posixpath.normpath(source.lstrip("/") or ".")
    return None if relative == ".." or relative.startswith("../") else relative


def _bound_in_sources(folder: Path) -> set[str] | None:
    """Names the sketch's source binds with RPC.bind, or None when the folder has no source."""
    if not folder.is_dir():
        return None
    names: set[str] = set()
    files = [p for p in sorted(folder.rglob("*")) if p.suffix in _SOURCE_SUFFIXES and p.is_file()]
    if not files:
        return None
    max_files, max_bytes = _SOURCE_LIMIT
    for path in files[:max_files]:
        with path.open(encoding="utf-8", errors="replace") as handle:
            names.update(_RPC_BIND.findall(handle.read(max_bytes)))
    return names


def check_sketch_services(services: dict[str, Any], app_folder: Path, *,
                          in_containers_git: bool) -> list[SketchProblem]:
    """X8115-X8120 for every sketch service of the file."""
    problems: list[SketchProblem] = []
    for sidecar in sketch_services(services):
        service = services[sidecar.name]
        base: tuple[str | int, ...] = ("services", sidecar.name)
        if service.get("restart", "no") != "no":
            problems.append(SketchProblem(
                "X8118", (*base, "restart"),
                f"restart: {service.get('restart')} flashes the sketch again and again, and services "
                "waiting for it to complete never start; use restart: \"no\"", sidecar.name))
        if not _mounts_socket(service):
            problems.append(SketchProblem(
                "X8117", base,
                f"the sketch service cannot reach the flasher: add volumes: "
                f"[\"{FLASHER_SOCKET_DIR}:{FLASHER_SOCKET_DIR}\"]", sidecar.name, key=True))
        if not any(_waits_for(other, sidecar.name) for other in services.values() if isinstance(other, dict)):
            problems.append(SketchProblem(
                "X8119", base,
                f"no service waits for it: give the app's M4-facing service depends_on: "
                f"{{{sidecar.name}: {{condition: service_completed_successfully}}}}", sidecar.name, key=True))
        if not in_containers_git:
            continue
        env_where = (*base, "environment", "X8_SKETCH")
        source = _sketch_source_in_folder(app_folder, sidecar.sketch)
        if source is None:
            problems.append(SketchProblem(
                "X8115", env_where, f"the Dockerfile copies nothing to {sidecar.sketch}: the image has "
                "no sketch to flash", sidecar.name))
            continue
        if source == _FROM_STAGE:
            continue  # compiled while the image is built: nothing in the folder to check
        inside = _in_build_context(source)
        if inside is None:
            problems.append(SketchProblem(
                "X8120", env_where, f"the Dockerfile copies {source} from outside the app folder, which is "
                "the build context (the Factory builds the folder alone): docker build cannot reach it; "
                f"put the sketch in the folder (sketch/{sidecar.name.removesuffix('-sketch')}.elf) and "
                "COPY it from there", sidecar.name))
            continue
        elf = app_folder / inside
        if not elf.is_file():
            problems.append(SketchProblem(
                "X8115", env_where, f"{inside} is not in the app folder: build the sketch first "
                "(arduino-cli compile -b arduino:mbed_portenta:portenta_x8 ...; docs/flasher.md, "
                "\"Ship a sketch with your app\")", sidecar.name))
        if not elf.parent.resolve().is_relative_to(app_folder.resolve()):
            continue  # a symbolic link out of the folder: docker copies the link, not what it names
        bound = _bound_in_sources(elf.parent)
        if bound is None:
            continue  # no source beside the ELF: nothing to read the bindings from
        wanted = ((sidecar.health_method,) if sidecar.health_method else ()) + sidecar.health_bound
        for name in wanted:
            if name not in bound:
                problems.append(SketchProblem(
                    "X8116", env_where, f"the health check needs {name}(), which the sketch's source in "
                    f"{elf.parent.relative_to(app_folder)}/ never binds (RPC.bind(\"{name}\", ...))",
                    sidecar.name))
    return problems


@dataclass(frozen=True)
class CodeProblem:
    """A finding in a sketch's source for lint to report: rule id, file, 1-based line, message."""

    rule: str
    path: Path
    line: int
    message: str


def _code_only(text: str) -> str:
    """*text* with comments and literals blanked, newlines kept so that lines still count."""
    def blank(match: re.Match[str]) -> str:
        found = match.group(0)
        if match.group("include"):
            return found
        return "".join("\n" if char == "\n" else " " for char in found)
    return _NOT_CODE.sub(blank, text)


def check_sketch_code(app_folder: Path) -> list[CodeProblem]:
    """X8121 and X8122 for the sketch in the app folder's ``sketch/*.ino``."""
    max_files, max_bytes = _SOURCE_LIMIT
    try:
        files = [path for path in sorted((app_folder / "sketch").glob("*.ino")) if path.is_file()][:max_files]
    except OSError:
        return []
    sources: list[tuple[Path, str]] = []
    for path in files:
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                sources.append((path, _code_only(handle.read(max_bytes))))
        except OSError:
            continue
    problems: list[CodeProblem] = []
    for path, code in sources:
        for match in _WAIT_FOR_READY.finditer(code):
            problems.append(CodeProblem(
                "X8121", path, code.count("\n", 0, match.start()) + 1,
                f"while (!{match.group(1)}) never ends on an X8's M4: the RPC library never marks itself "
                "ready there, so the sketch stops here: remove the wait"))
    # arduino-cli joins a sketch's .ino files into one: an include in any of them counts.
    if not any(_SERIAL_RPC_INCLUDE.search(code) for _, code in sources):
        for path, code in sources:
            use = _SERIAL_USE.search(code)
            if use is not None:
                problems.append(CodeProblem(
                    "X8122", path, code.count("\n", 0, use.start()) + 1,
                    "Serial on an X8's M4 is the RPC library's SerialRPC (what x8 monitor shows): "
                    "add #include <RPC.h> and #include <SerialRPC.h> at the top of the sketch"))
                break
    return problems
