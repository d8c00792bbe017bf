"""Hostile variants of a real sketch ELF: rewritten program header tables, for the flasher's ELF check.

Each builder starts from a real Cortex-M4 sketch (tests/fixtures/elf/sketch-ok.elf: a text
PT_LOAD at 0x08100000, a .data PT_LOAD stored after it and run in RAM, a PT_GNU_STACK) and appends
a new program header table to it, so the segment contents stay the linker's own bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "PT_LOAD",
    "PT_NULL",
    "Phdr",
    "hostile_elfs",
    "program_headers",
    "with_program_headers",
]

ROOT = Path(__file__).resolve().parents[2]
SKETCH = ROOT / "tests" / "fixtures" / "elf" / "sketch-ok.elf"

PT_NULL, PT_LOAD, PT_NOTE = 0, 1, 4
PT_GNU_STACK = 0x6474E551
_PHDR = struct.Struct("<IIIIIIII")
_E_PHOFF, _E_PHENTSIZE, _E_PHNUM = 28, 42, 44


@dataclass(frozen=True)
class Phdr:
    p_type: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int
    p_align: int

    def pack(self) -> bytes:
        return _PHDR.pack(
            self.p_type,
            self.p_offset,
            self.p_vaddr,
            self.p_paddr,
            self.p_filesz,
            self.p_memsz,
            self.p_flags,
            self.p_align,
        )


def program_headers(elf: bytes) -> list[Phdr]:
    """The program headers of a well-formed 32-bit LE ELF (32-byte entries)."""
    (phoff,) = struct.unpack_from("<I", elf, _E_PHOFF)
    (phnum,) = struct.unpack_from("<H", elf, _E_PHNUM)
    return [Phdr(*_PHDR.unpack_from(elf, phoff + 32 * i)) for i in range(phnum)]


def with_program_headers(elf: bytes, table: bytes, *, phentsize: int, phnum: int) -> bytes:
    """*elf* with *table* appended (4-byte aligned) and the ELF header pointing at it."""
    body = bytearray(elf + b"\0" * (-len(elf) % 4))
    phoff = len(body)
    body += table
    struct.pack_into("<I", body, _E_PHOFF, phoff)
    struct.pack_into("<H", body, _E_PHENTSIZE, phentsize)
    struct.pack_into("<H", body, _E_PHNUM, phnum)
    return bytes(body)


def _stride64_hides_m7_load(elf: bytes) -> bytes:
    """e_phentsize 64: a reader stepping 64 bytes sees text, data, stack; openocd (32) also sees
    the PT_LOAD in the padding after text, which puts the sketch's code at 0x08000000."""
    text, data, stack = program_headers(elf)
    hidden = replace(text, p_vaddr=0x08000000, p_paddr=0x08000000)
    null = Phdr(PT_NULL, 0, 0, 0, 0, 0, 0, 0)
    slots = [text, hidden, data, null, stack, null, null, null]  # 64-byte stride reads 0, 2, 4, 6
    return with_program_headers(elf, b"".join(p.pack() for p in slots), phentsize=64, phnum=4)


def _paddr0_single_load(elf: bytes) -> bytes:
    """One PT_LOAD, p_paddr 0, p_vaddr 0x08100000: all p_paddr are 0 but only one PT_LOAD, so
    openocd writes at p_paddr = 0x00000000; a reader falling back to p_vaddr sees the M4 window."""
    text, data, stack = program_headers(elf)
    table = [replace(text, p_paddr=0), replace(data, p_type=PT_NULL, p_paddr=0), stack]
    return with_program_headers(elf, b"".join(p.pack() for p in table), phentsize=32, phnum=3)


def _paddr0_loads_with_note(elf: bytes) -> bytes:
    """Both PT_LOADs p_paddr 0, their p_vaddr in the window, but a non-load header has p_paddr != 0:
    openocd then uses p_paddr (0) for all of them; a check looking only at PT_LOADs uses p_vaddr."""
    text, data, stack = program_headers(elf)
    flash_data = replace(data, p_vaddr=text.p_vaddr + text.p_filesz, p_paddr=0)
    table = [replace(text, p_paddr=0), flash_data, replace(stack, p_paddr=0x4)]
    return with_program_headers(elf, b"".join(p.pack() for p in table), phentsize=32, phnum=3)


def _vaddr_in_m7_flash(elf: bytes) -> bytes:
    """Stored in the M4 window (p_paddr) but 'running' in the M7 bank (p_vaddr): two readings."""
    text, data, stack = program_headers(elf)
    table = [replace(text, p_vaddr=0x08000000), data, stack]
    return with_program_headers(elf, b"".join(p.pack() for p in table), phentsize=32, phnum=3)


def hostile_elfs() -> dict[str, bytes]:
    """name -> file bytes; every one must be refused by the flasher's ELF check."""
    elf = SKETCH.read_bytes()
    return {
        "phentsize-64-hides-m7-load": _stride64_hides_m7_load(elf),
        "paddr-0-single-load": _paddr0_single_load(elf),
        "paddr-0-loads-note-paddr-set": _paddr0_loads_with_note(elf),
        "vaddr-in-m7-flash": _vaddr_in_m7_flash(elf),
    }
