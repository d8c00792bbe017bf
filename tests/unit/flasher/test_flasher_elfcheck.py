"""Validation of uploads against real Cortex-M4 ELF fixtures (tests/fixtures/elf/build.sh)."""

from __future__ import annotations

import struct

import pytest
from flasher_unit_support import ELF_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.elfcraft import hostile_elfs
from x8manager.flasher import elfcheck
from x8manager.flasher.elfcheck import M4_FLASH_START, SketchRejected, validate_sketch

GOOD = (ELF_DIR / "sketch-ok.elf").read_bytes()


def test_good_sketch_is_accepted_with_text_and_data_load_addresses() -> None:
    info = validate_sketch(GOOD)
    assert info.size == len(GOOD)
    assert info.segments[0].address == M4_FLASH_START
    # .data runs in RAM but is stored (p_paddr) right after the code in flash.
    assert all(s.address >= 0x08100000 and s.end <= 0x08200000 for s in info.segments)
    assert len(info.segments) == 2
    assert info.entry & 1, "Thumb entry point"


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        ("m7-region.elf", "segment at 0x08000000 would overwrite the M7 firmware"),
        ("past-end.elf", "runs past the end of the M4 flash window"),
        ("data-in-ram.elf", "segment at 0x100002a8 (4 bytes) is outside the M4 flash window"),
        ("entry-outside.elf", "entry point 0x08180000 is not inside any segment"),
        ("big-endian.elf", "big-endian"),
        ("wrong-machine.elf", "built for x86 (32-bit), not for ARM"),
        ("x86-64.elf", "64-bit ELF"),
        ("relocatable.o.elf", "object file"),
        ("truncated.elf", "the file is truncated"),
        ("not-elf.elf", "not an ELF file"),
        ("empty.elf", "the file is empty"),
    ],
)
def test_broken_sketch_is_rejected_with_a_reason(fixture: str, reason: str) -> None:
    with pytest.raises(SketchRejected) as caught:
        validate_sketch((ELF_DIR / fixture).read_bytes())
    assert reason in caught.value.reason


def test_size_limit() -> None:
    with pytest.raises(SketchRejected, match="more than the 1000-byte limit"):
        validate_sketch(GOOD, max_file_bytes=1000)


def test_header_cut_inside_the_elf_header() -> None:
    with pytest.raises(SketchRejected, match="truncated"):
        validate_sketch(GOOD[:40])


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, len(GOOD))),
)
def test_damaged_files_never_escape_as_anything_but_a_rejection(
    edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(GOOD)
    for position, value in edits:
        data[position] = value
    try:
        info = validate_sketch(bytes(data[:cut] if cut is not None else data))
    except SketchRejected as rejected:
        assert rejected.reason
    else:
        assert all(s.address >= 0x08100000 and s.end <= 0x08200000 for s in info.segments)


# --- the program headers as openocd reads them (stride 32, p_paddr) ---------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("phentsize-64-hides-m7-load", "declared 64 bytes long (e_phentsize), but openocd reads them 32"),
        ("paddr-0-single-load", "has no load address (p_paddr 0)"),
        ("paddr-0-loads-note-paddr-set", "has no load address (p_paddr 0)"),
        ("vaddr-in-m7-flash", "runs from flash at p_vaddr but is stored elsewhere"),
    ],
)
def test_hostile_program_headers_are_refused(name: str, reason: str) -> None:
    with pytest.raises(SketchRejected) as caught:
        validate_sketch(hostile_elfs()[name])
    assert reason in caught.value.reason


def _patched(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(GOOD)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_patched(42, "<H", 40), "declared 40 bytes long (e_phentsize)"),
        (_patched(42, "<H", 0), "declared 0 bytes long"),
        (_patched(44, "<H", 0), "no program headers"),
        (_patched(44, "<H", 0xFFFF), "declares 65535 program headers"),
        (_patched(44, "<H", 65), "declares 65 program headers"),
        (_patched(28, "<I", 20), "inside the ELF header"),
        (_patched(28, "<I", len(GOOD) - 40), "program headers end at offset"),
        (_patched(40, "<H", 64), "the ELF header claims to be 64 bytes"),
        # text PT_LOAD: p_filesz (offset 52 + 16) bigger than p_memsz
        (_patched(52 + 16, "<I", 0x200), "more file bytes (512) than memory bytes (144)"),
    ],
)
def test_ambiguous_or_malformed_header_tables_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(SketchRejected) as caught:
        validate_sketch(data)
    assert reason in caught.value.reason


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(16, 52 + 3 * 32), st.integers(0, 255)), min_size=1, max_size=6))
def test_whatever_passes_openocd_writes_only_into_the_window(edits: list[tuple[int, int]]) -> None:
    data = bytearray(GOOD)
    for position, value in edits:
        data[position] = value
    try:
        validate_sketch(bytes(data))
    except SketchRejected:
        return
    written = elfcheck.openocd_sections(bytes(data))
    assert written and all(s.address >= M4_FLASH_START and s.end <= 0x08200000 for s in written)
