"""What a flashed ELF makes the virtual M4 do: the sketch profile a test fixture carries.

A real M4 runs the flashed code. The virtual M4 cannot, so a test sketch says what it would do in
an ELF note section named :data:`NOTE_SECTION` (note owner :data:`NOTE_OWNER`, descriptor JSON):

    {"name": "B", "binds": ["add", "health"], "behaviour": "runs"}

- ``name``: shown in ``m4-sim stats`` and returned by no procedure (tests ask the control surface);
- ``binds``: the procedures the sketch binds (a demo procedure of that name, else one that answers
  ``[name, *args]``); absent: the demo set, as a sketch without a profile gets;
- ``behaviour``: ``runs`` (answers RPC), ``silent`` (no ``RPC.begin()``: every message is dropped),
  ``crash`` (a hard fault right after reset: silent, and counted as crashed).

The note is not loaded (it has no program header), so the flasher and openocd see the same bytes
as without it. The reader is bounded: a file over :data:`MAX_ELF_BYTES` or a malformed section
table gives a profile that says why in ``problem`` and behaves as ``crash`` (garbage flashed into
a real M4 does not run either).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BEHAVIOURS",
    "MAX_ELF_BYTES",
    "NOTE_OWNER",
    "NOTE_SECTION",
    "SketchProfile",
    "read_profile",
]

NOTE_SECTION = ".note.x8sim"
NOTE_OWNER = b"x8-m4sim"
NOTE_TYPE = 1
MAX_ELF_BYTES = 32 * 1024 * 1024  # the flasher's own upper bound for a sketch file
MAX_SECTIONS = 4096
MAX_NOTE_BYTES = 64 * 1024

Behaviour = Literal["runs", "silent", "crash"]
BEHAVIOURS: tuple[Behaviour, ...] = ("runs", "silent", "crash")

_SHDR = struct.Struct("<IIIIIIIIII")
_SHT_NOTE = 7


@dataclass(frozen=True)
class SketchProfile:
    """What the virtual M4 does after booting a sketch."""

    sha256: str
    name: str = ""
    binds: tuple[str, ...] | None = None  # None: the demo procedures
    behaviour: Behaviour = "runs"
    problem: str = ""  # why the file could not be read as a sketch, if it could not
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "name": self.name,
            "binds": None if self.binds is None else list(self.binds),
            "behaviour": self.behaviour,
            "problem": self.problem,
        }


class _Unreadable(ValueError):
    pass


@dataclass(frozen=True)
class _Section:
    name_index: int
    kind: int
    offset: int
    size: int


def _sections(elf: bytes) -> tuple[list[_Section], int]:
    """The sections of a 32-bit little-endian ELF and the index of the section name table."""
    if len(elf) < 52 or not elf.startswith(b"\x7fELF") or elf[4] != 1 or elf[5] != 1:
        raise _Unreadable("not a 32-bit little-endian ELF")
    (shoff,) = struct.unpack_from("<I", elf, 32)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 46)
    if shnum == 0:
        return [], 0
    if shentsize != _SHDR.size or shnum > MAX_SECTIONS or shoff + shnum * shentsize > len(elf):
        raise _Unreadable("the section header table is malformed or cut off")
    if shstrndx >= shnum:
        raise _Unreadable("the section name table index is out of range")
    sections = []
    for index in range(shnum):
        name_index, kind, _flags, _addr, offset, size = _SHDR.unpack_from(elf, shoff + index * shentsize)[:6]
        sections.append(_Section(name_index, kind, offset, size))
    return sections, shstrndx


def _note_descriptor(elf: bytes) -> bytes | None:
    sections, shstrndx = _sections(elf)
    if not sections:
        return None
    table = sections[shstrndx]
    if table.offset + table.size > len(elf):
        raise _Unreadable("the section name table lies past the end of the file")
    names = elf[table.offset : table.offset + table.size]
    wanted = NOTE_SECTION.encode() + b"\0"
    for section in sections:
        start = section.name_index
        if section.kind != _SHT_NOTE or names[start : start + len(wanted)] != wanted:
            continue
        offset, size = section.offset, section.size
        if size > MAX_NOTE_BYTES or offset + size > len(elf) or size < 12:
            raise _Unreadable(f"the {NOTE_SECTION} section is malformed")
        namesz, descsz, note_type = struct.unpack_from("<III", elf, offset)
        name_end = offset + 12 + namesz
        desc_start = name_end + (-namesz % 4)
        if desc_start + descsz > offset + size:
            raise _Unreadable(f"the {NOTE_SECTION} note is cut off")
        if elf[offset + 12 : name_end].rstrip(b"\0") != NOTE_OWNER or note_type != NOTE_TYPE:
            raise _Unreadable(f"the {NOTE_SECTION} note has another owner or type")
        return elf[desc_start : desc_start + descsz]
    return None


def _from_descriptor(sha256: str, descriptor: bytes) -> SketchProfile:
    try:
        document = json.loads(descriptor)
    except ValueError as exc:
        raise _Unreadable(f"the {NOTE_SECTION} descriptor is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _Unreadable(f"the {NOTE_SECTION} descriptor is not a JSON object")
    behaviour = document.get("behaviour", "runs")
    if behaviour not in BEHAVIOURS:
        raise _Unreadable(f"unknown behaviour {behaviour!r} (one of {', '.join(BEHAVIOURS)})")
    binds = document.get("binds")
    if binds is not None and (not isinstance(binds, list) or not all(isinstance(b, str) for b in binds)):
        raise _Unreadable("binds must be a list of procedure names")
    name = document.get("name", "")
    known = {"name", "binds", "behaviour"}
    return SketchProfile(
        sha256=sha256,
        name=str(name),
        binds=None if binds is None else tuple(binds),
        behaviour=behaviour,
        extra={k: v for k, v in document.items() if k not in known},
    )


def read_profile(elf: bytes) -> SketchProfile:
    """The profile of the sketch *elf*; never raises (an unreadable file is a crashing sketch)."""
    sha256 = hashlib.sha256(elf).hexdigest()
    try:
        if len(elf) > MAX_ELF_BYTES:
            raise _Unreadable(f"{len(elf)} bytes is more than a sketch can be ({MAX_ELF_BYTES})")
        descriptor = _note_descriptor(elf)
        if descriptor is None:
            return SketchProfile(sha256=sha256)
        return _from_descriptor(sha256, descriptor)
    except (_Unreadable, struct.error) as exc:
        return SketchProfile(sha256=sha256, behaviour="crash", problem=str(exc))
