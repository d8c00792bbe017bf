"""Validation of uploads against real Cortex-M4 ELF fixtures (tests/fixtures/elf/build.sh)."""

from __future__ import annotations

import pytest
from flasher_unit_support import ELF_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

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
