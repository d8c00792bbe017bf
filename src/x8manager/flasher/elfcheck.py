"""Decide whether an uploaded file is an M4 sketch that may be written to the H7's flash.

The check runs before anything touches the chip. It looks at the file the way openocd's
``program`` command will: openocd writes every ``PT_LOAD`` segment that has file bytes
(``p_filesz > 0``) at its *physical* address ``p_paddr`` (the load address, LMA). That is why
``.data`` passes although it runs in RAM: its LMA is in flash and the start-up code copies it.
``.bss`` segments have no file bytes, so openocd writes nothing for them and neither do we check
them. (openocd falls back to ``p_vaddr`` when every segment's ``p_paddr`` is zero; so do we.)
"""

from __future__ import annotations

import hashlib
import io
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

__all__ = [
    "M4_FLASH_END",
    "M4_FLASH_START",
    "M7_FLASH_START",
    "MAX_SKETCH_FILE_BYTES",
    "LoadSegment",
    "SketchInfo",
    "SketchRejected",
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

_ELF_MAGIC = b"\x7fELF"
_EM_NAMES = {
    "EM_386": "x86 (32-bit)",
    "EM_X86_64": "x86-64",
    "EM_AARCH64": "64-bit ARM (AArch64)",
    "EM_RISCV": "RISC-V",
    "EM_XTENSA": "Xtensa (ESP32)",
    "EM_AVR": "AVR",
}


class SketchRejected(ValueError):
    """The file is not a sketch this M4 can run; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LoadSegment:
    """One segment openocd will write: ``size`` file bytes at flash address ``address``."""

    address: int
    size: int

    @property
    def end(self) -> int:
        return self.address + self.size


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
    if len(data) < 52:
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


def _parse(data: bytes) -> ELFFile:
    # pyelftools is imported on first use: commands that never validate start faster without it.
    from elftools.common.exceptions import ELFError  # noqa: PLC0415
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415

    try:
        return ELFFile(io.BytesIO(data))
    except ELFError as error:
        raise SketchRejected(f"the ELF file is corrupt or truncated: {error}") from error


def _check_kind(elf: ELFFile) -> None:
    machine = elf["e_machine"]
    if machine != "EM_ARM":
        built_for = _EM_NAMES.get(machine, str(machine))
        raise SketchRejected(f"built for {built_for}, not for ARM: this is not an M4 sketch")
    if elf["e_type"] != "ET_EXEC":
        kind = {
            "ET_REL": "an object file (.o)",
            "ET_DYN": "a shared library or PIE",
            "ET_CORE": "a core dump",
        }
        raise SketchRejected(
            f"not an executable but {kind.get(elf['e_type'], elf['e_type'])}; flash the linked sketch .elf"
        )


def _load_segments(elf: ELFFile, file_size: int) -> tuple[list[LoadSegment], list[tuple[int, int]]]:
    """Return the segments openocd writes, and (vaddr, size) of the ones that execute in place."""
    from elftools.common.exceptions import ELFError  # noqa: PLC0415 - see _parse

    loads = []
    try:
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_LOAD" and segment["p_filesz"] > 0:
                loads.append(segment)
    except ELFError as error:
        raise SketchRejected(f"the ELF program headers are corrupt or truncated: {error}") from error
    if not loads:
        raise SketchRejected("the ELF has no loadable segments with data: there is nothing to flash")
    use_vaddr = all(segment["p_paddr"] == 0 for segment in loads)
    flashed: list[LoadSegment] = []
    in_place: list[tuple[int, int]] = []
    for segment in loads:
        offset, size = segment["p_offset"], segment["p_filesz"]
        if offset + size > file_size:
            raise SketchRejected(
                f"the file is truncated: a segment needs bytes up to offset {offset + size} "
                f"but the file has {file_size}"
            )
        address = segment["p_vaddr"] if use_vaddr else segment["p_paddr"]
        flashed.append(LoadSegment(address, size))
        if segment["p_vaddr"] == address:
            in_place.append((address, size))
    return flashed, in_place


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
    elf = _parse(data)
    _check_kind(elf)
    segments, in_place = _load_segments(elf, len(data))
    for segment in segments:
        _check_window(segment)
    _check_overlaps(segments)
    # Thumb code has bit 0 set in the entry address; the instruction itself starts one byte lower.
    entry = elf["e_entry"]
    target = entry & ~1
    if not any(start <= target < start + size for start, size in in_place):
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
