"""Test sketches that tell the virtual M4 what they do: a real sketch ELF plus an x8sim note.

``sketch_elf(name, binds=[...], behaviour="silent")`` returns tests/fixtures/elf/sketch-ok.elf
with a section :data:`x8manager.m4sim.sketch.NOTE_SECTION` appended (not loaded: its program
headers are untouched, so the flasher's check and openocd read it as the original sketch). Each
name gives different file bytes, so every test sketch has its own SHA-256.

Run as a script it writes such a file: ``python -m tests.support.sketches OUT NAME [BINDS...]
[--behaviour silent]`` (the QEMU tests put sketches into app images with it).
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path
from typing import Any

from x8manager.m4sim.sketch import NOTE_OWNER, NOTE_SECTION, NOTE_TYPE

__all__ = ["SKETCH", "sketch_elf", "with_note"]

SKETCH = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "elf" / "sketch-ok.elf"
_SHDR = struct.Struct("<IIIIIIIIII")
_SHT_NOTE, _SHT_STRTAB = 7, 3


def _align(data: bytearray, to: int = 4) -> None:
    data += b"\0" * (-len(data) % to)


def with_note(elf: bytes, descriptor: dict[str, Any]) -> bytes:
    """*elf* with the x8sim note section appended and a new section table pointing at it."""
    (shoff,) = struct.unpack_from("<I", elf, 32)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 46)
    headers = [list(_SHDR.unpack_from(elf, shoff + i * shentsize)) for i in range(shnum)]
    old_names = headers[shstrndx]
    names = bytearray(elf[old_names[4] : old_names[4] + old_names[5]])
    note_name_index = len(names)
    names += NOTE_SECTION.encode() + b"\0"

    desc = json.dumps(descriptor, sort_keys=True).encode()
    owner = NOTE_OWNER + b"\0"
    note = bytearray(struct.pack("<III", len(owner), len(desc), NOTE_TYPE))
    note += owner
    _align(note)
    note += desc
    _align(note)

    body = bytearray(elf)
    _align(body)
    note_offset = len(body)
    body += note
    names_offset = len(body)
    body += names
    _align(body)
    table_offset = len(body)
    headers[shstrndx][4:6] = [names_offset, len(names)]
    headers.append([note_name_index, _SHT_NOTE, 0, 0, note_offset, len(note), 0, 0, 4, 0])
    for header in headers:
        body += _SHDR.pack(*header)
    struct.pack_into("<I", body, 32, table_offset)
    struct.pack_into("<H", body, 48, len(headers))
    return bytes(body)


def sketch_elf(name: str, binds: list[str] | None = None, behaviour: str = "runs") -> bytes:
    """A flashable test sketch named *name* that binds *binds* (None: the demo set)."""
    descriptor: dict[str, Any] = {"name": name, "behaviour": behaviour}
    if binds is not None:
        descriptor["binds"] = binds
    return with_note(SKETCH.read_bytes(), descriptor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a test sketch ELF for the virtual M4")
    parser.add_argument("out", type=Path)
    parser.add_argument("name")
    parser.add_argument("binds", nargs="*", help="procedures it binds (none given: the demo set)")
    parser.add_argument("--behaviour", default="runs", choices=["runs", "silent", "crash"])
    args = parser.parse_args(argv)
    args.out.write_bytes(sketch_elf(args.name, args.binds or None, args.behaviour))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
