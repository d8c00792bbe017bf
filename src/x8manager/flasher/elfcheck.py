"""Decide whether an uploaded file is an M4 sketch that may be written to the H7's flash.

The check runs before anything touches the chip, and it reads the file exactly as openocd's ELF
loader will (``src/target/image.c``, ``image_elf32_read_headers``, unchanged from 0.10 to 0.12
and on master), because openocd is what writes the flash:

- it reads the 52-byte ELF header, then ``e_phnum`` program headers from ``e_phoff``, stepping
  ``sizeof(Elf32_Phdr)`` = 32 bytes whatever ``e_phentsize`` says;
- every ``PT_LOAD`` header with file bytes (``p_filesz`` != 0) becomes one section of
  ``p_filesz`` bytes read from ``p_offset``; ``.bss`` (no file bytes) is never written;
- the section goes to ``p_paddr`` (the load address, LMA); only when *every* program header's
  ``p_paddr`` is 0 *and* more than one ``PT_LOAD`` has ``p_memsz`` != 0 does it use ``p_vaddr``.

:func:`openocd_sections` is that reading, field for field. :func:`validate_sketch` then refuses
any file whose reading is not unambiguous (a program header size other than 32, headers cut
off or overlapping the ELF header, a file-backed ``PT_LOAD`` with ``p_paddr`` 0, code whose run
address in flash differs from where it is stored, ...) and checks that every byte openocd would
write lies in the M4 window. That is why ``.data`` passes although it runs in RAM: its LMA is in
flash and the start-up code copies it.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from dataclasses import dataclass

__all__ = [
    "ELF32_PHDR_SIZE",
    "M4_FLASH_END",
    "M4_FLASH_START",
    "M7_FLASH_START",
    "MAX_PROGRAM_HEADERS",
    "MAX_SKETCH_FILE_BYTES",
    "LoadSegment",
    "ProgramHeader",
    "SketchInfo",
    "SketchRejected",
    "openocd_sections",
    "validate_sketch",
]

# The M4 sketch lives in the H7's second flash bank (ArduinoCore-mbed: CM4_BINARY_START/END);
# the first bank holds the M7 firmware that the X8's Linux side depends on.
M4_FLASH_START = 0x08100000
M4_FLASH_END = 0x08200000
M7_FLASH_START = 0x08000000
# A sketch ELF with debug information is a few MiB; anything far bigger is not an upload from
# the IDE, and reading it would only waste memory on a small board.
MAX_SKETCH_FILE_BYTES = 32 * 1024 * 1024
# A linked sketch has a handful of program headers; thousands only make a loader work.
MAX_PROGRAM_HEADERS = 64

ELF32_EHDR_SIZE = 52
ELF32_PHDR_SIZE = 32  # sizeof(Elf32_Phdr): openocd's stride, whatever e_phentsize says
_PN_XNUM = 0xFFFF  # "the real count is elsewhere": openocd does not know that convention
_PT_LOAD = 1
_EM_ARM = 40
_ET_EXEC = 2
_ELF_MAGIC = b"\x7fELF"
_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR = struct.Struct("<IIIIIIII")
_MACHINES = {
    3: "x86 (32-bit)",
    62: "x86-64",
    183: "64-bit ARM (AArch64)",
    243: "RISC-V",
    94: "Xtensa (ESP32)",
    83: "AVR",
}
_KINDS = {0: "a file of no type", 1: "an object file (.o)", 3: "a shared library or PIE", 4: "a core dump"}


class SketchRejected(ValueError):
    """The file is not a sketch this M4 can run; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LoadSegment:
    """One section openocd will write: ``size`` file bytes at flash address ``address``."""

    address: int
    size: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class ProgramHeader:
    """One Elf32_Phdr as openocd reads it (index counts 32-byte steps from e_phoff)."""

    index: int
    p_type: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int

    @property
    def loads_bytes(self) -> bool:
        return self.p_type == _PT_LOAD and self.p_filesz != 0


@dataclass(frozen=True)
class SketchInfo:
    """What the validator learned about an accepted sketch."""

    sha256: str
    size: int
    entry: int
    segments: tuple[LoadSegment, ...]

    @property
    def flash_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    def describe(self) -> str:
        spans = ", ".join(f"0x{s.address:08x}+{s.size}" for s in self.segments)
        return f"{self.size} bytes, {self.flash_bytes} bytes of flash ({spans}), entry 0x{self.entry:08x}"


def _hex(value: int) -> str:
    return f"0x{value:08x}"


def _check_identity(data: bytes) -> None:
    """Reject what is not a 32-bit little-endian ARM executable, with the most useful reason."""
    if not data:
        raise SketchRejected("the file is empty (was the upload interrupted?)")
    if not data.startswith(_ELF_MAGIC):
        raise SketchRejected("not an ELF file (the M4 flasher needs the .elf the Arduino build produces)")
    if len(data) < ELF32_EHDR_SIZE:
        raise SketchRejected(f"the ELF header is cut short ({len(data)} bytes): the file is truncated")
    elf_class, elf_data = data[4], data[5]
    if elf_class == 2:
        raise SketchRejected("this is a 64-bit ELF; the M4 (Cortex-M4) needs a 32-bit ARM ELF")
    if elf_class != 1:
        raise SketchRejected(f"unknown ELF class {elf_class}; the M4 needs a 32-bit ARM ELF")
    if elf_data == 2:
        raise SketchRejected("this ELF is big-endian; the M4 (Cortex-M4) runs little-endian code")
    if elf_data != 1:
        raise SketchRejected(f"unknown ELF byte order {elf_data}; the M4 needs a little-endian ELF")


@dataclass(frozen=True)
class _Header:
    e_type: int
    e_machine: int
    e_entry: int
    e_phoff: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int


def _header(data: bytes) -> _Header:
    fields = _EHDR.unpack_from(data, 0)
    return _Header(
        e_type=fields[1],
        e_machine=fields[2],
        e_entry=fields[4],
        e_phoff=fields[5],
        e_ehsize=fields[8],
        e_phentsize=fields[9],
        e_phnum=fields[10],
    )


def _check_kind(header: _Header) -> None:
    if header.e_machine != _EM_ARM:
        built_for = _MACHINES.get(header.e_machine, f"machine type {header.e_machine}")
        raise SketchRejected(f"built for {built_for}, not for ARM: this is not an M4 sketch")
    if header.e_type != _ET_EXEC:
        kind = _KINDS.get(header.e_type, f"ELF type {header.e_type}")
        raise SketchRejected(f"not an executable but {kind}; flash the linked sketch .elf")


def _program_headers(data: bytes, header: _Header) -> list[ProgramHeader]:
    """The program headers at openocd's stride: e_phnum entries, 32 bytes apart, from e_phoff."""
    table_end = header.e_phoff + header.e_phnum * ELF32_PHDR_SIZE
    if table_end > len(data):
        raise SketchRejected(
            f"the file is truncated: its {header.e_phnum} program headers end at offset {table_end} "
            f"but the file has {len(data)} bytes"
        )
    return [
        ProgramHeader(index, *_PHDR.unpack_from(data, header.e_phoff + index * ELF32_PHDR_SIZE)[:7])
        for index in range(header.e_phnum)
    ]


def _uses_vaddr(headers: list[ProgramHeader]) -> bool:
    """openocd's rule: p_vaddr only if all p_paddr are 0 and >1 PT_LOAD has p_memsz != 0."""
    if any(h.p_paddr != 0 for h in headers):
        return False
    return sum(1 for h in headers if h.p_type == _PT_LOAD and h.p_memsz != 0) > 1


def openocd_sections(data: bytes) -> list[LoadSegment]:
    """What openocd's ``program``/``test_image`` will write for this file: (address, size) in order.

    Raises :class:`SketchRejected` where openocd itself would refuse the file, or where its reading
    needs bytes the file does not have.
    """
    _check_identity(data)
    header = _header(data)
    if header.e_phnum == 0:
        raise SketchRejected("the ELF has no program headers: there is nothing to flash")
    headers = _program_headers(data, header)
    use_vaddr = _uses_vaddr(headers)
    return [LoadSegment(h.p_vaddr if use_vaddr else h.p_paddr, h.p_filesz) for h in headers if h.loads_bytes]


def _check_table(header: _Header) -> None:
    """Refuse a program header table that two ELF readers could step through differently."""
    if header.e_ehsize != ELF32_EHDR_SIZE:
        raise SketchRejected(
            f"the ELF header claims to be {header.e_ehsize} bytes, not {ELF32_EHDR_SIZE}: "
            "the ELF is malformed"
        )
    if header.e_phentsize != ELF32_PHDR_SIZE:
        raise SketchRejected(
            f"program headers are declared {header.e_phentsize} bytes long (e_phentsize), but openocd "
            f"reads them {ELF32_PHDR_SIZE} bytes apart: it would load other segments than the ones "
            "the file declares, so the file is refused"
        )
    if header.e_phnum == 0:
        raise SketchRejected("the ELF has no program headers: there is nothing to flash")
    if header.e_phnum == _PN_XNUM or header.e_phnum > MAX_PROGRAM_HEADERS:
        raise SketchRejected(
            f"the ELF declares {header.e_phnum} program headers (at most {MAX_PROGRAM_HEADERS} "
            "are accepted; a linked sketch has a handful)"
        )
    if header.e_phoff < ELF32_EHDR_SIZE:
        raise SketchRejected(
            f"the program headers start at offset {header.e_phoff}, inside the ELF header: "
            "the ELF is malformed"
        )


def _check_load_header(h: ProgramHeader, file_size: int) -> None:
    where = f"program header {h.index} (PT_LOAD, p_vaddr {_hex(h.p_vaddr)}, p_paddr {_hex(h.p_paddr)})"
    if h.p_filesz > h.p_memsz:
        raise SketchRejected(
            f"{where} has more file bytes ({h.p_filesz}) than memory bytes ({h.p_memsz}): "
            "the ELF is malformed"
        )
    if h.p_offset + h.p_filesz > file_size:
        raise SketchRejected(
            f"the file is truncated: a segment needs bytes up to offset {h.p_offset + h.p_filesz} "
            f"but the file has {file_size}"
        )
    if h.p_paddr == 0:
        raise SketchRejected(
            f"{where} has no load address (p_paddr 0): openocd would write it at 0x00000000 or, in "
            "some files, at p_vaddr; a sketch must give every segment its flash address in p_paddr"
        )
    if h.p_vaddr != h.p_paddr and M7_FLASH_START <= h.p_vaddr < M4_FLASH_END:
        raise SketchRejected(
            f"{where} runs from flash at p_vaddr but is stored elsewhere: code in flash must be "
            "stored where it runs, so the file's flash addresses are ambiguous"
        )


def _check_window(segment: LoadSegment) -> None:
    start, end = segment.address, segment.end
    if start >= M4_FLASH_START and end <= M4_FLASH_END:
        return
    window = f"the M4 flash window {_hex(M4_FLASH_START)}-{_hex(M4_FLASH_END)}"
    if start < M4_FLASH_START and end > M7_FLASH_START:
        raise SketchRejected(
            f"segment at {_hex(start)} would overwrite the M7 firmware "
            f"(an M4 sketch must be linked into {window}; was it built for the Portenta X8's M4?)"
        )
    if M4_FLASH_START <= start < M4_FLASH_END:
        raise SketchRejected(
            f"segment at {_hex(start)} ({segment.size} bytes) runs past the end of {window}: "
            "the sketch is too big"
        )
    raise SketchRejected(
        f"segment at {_hex(start)} ({segment.size} bytes) is outside {window}; "
        "only flash can be programmed (data meant for RAM must be stored in flash and copied at start-up)"
    )


def _check_overlaps(segments: list[LoadSegment]) -> None:
    ordered = sorted(segments, key=lambda s: s.address)
    for before, after in itertools.pairwise(ordered):
        if after.address < before.end:
            raise SketchRejected(
                f"segments at {_hex(before.address)} and {_hex(after.address)} overlap: the ELF is malformed"
            )


def validate_sketch(data: bytes, *, max_file_bytes: int = MAX_SKETCH_FILE_BYTES) -> SketchInfo:
    """Check *data* (a whole file) and return what will be flashed, or raise :class:`SketchRejected`."""
    if len(data) > max_file_bytes:
        raise SketchRejected(
            f"the file is {len(data)} bytes, more than the {max_file_bytes}-byte limit for a sketch ELF"
        )
    _check_identity(data)
    header = _header(data)
    _check_kind(header)
    _check_table(header)
    headers = _program_headers(data, header)
    loads = [h for h in headers if h.loads_bytes]
    if not loads:
        raise SketchRejected("the ELF has no loadable segments with data: there is nothing to flash")
    for h in loads:
        _check_load_header(h, len(data))
    # Every file-backed PT_LOAD has p_paddr != 0 now, so openocd uses p_paddr: one reading only.
    segments = openocd_sections(data)
    if segments != [LoadSegment(h.p_paddr, h.p_filesz) for h in loads]:
        raise SketchRejected("the ELF's load addresses cannot be read unambiguously")
    for segment in segments:
        _check_window(segment)
    _check_overlaps(segments)
    # Thumb code has bit 0 set in the entry address; the instruction itself starts one byte lower.
    entry = header.e_entry
    target = entry & ~1
    if not any(h.p_vaddr == h.p_paddr and h.p_paddr <= target < h.p_paddr + h.p_filesz for h in loads):
        raise SketchRejected(
            f"entry point {_hex(entry)} is not inside any segment written to flash: "
            "the M4 would jump to nothing after reset"
        )
    return SketchInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        entry=entry,
        segments=tuple(segments),
    )
