"""The virtual M4 boots what was flashed: a test sketch's x8sim note decides what it binds."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from m4sim_memory_link import MemoryLink, run_with_m4

from tests.support.proxy import wait_for
from tests.support.sketches import SKETCH, sketch_elf
from x8manager.flasher.elfcheck import openocd_sections, validate_sketch
from x8manager.m4sim import VirtualM4
from x8manager.m4sim.sketch import read_profile
from x8manager.m4sim.swdwire import answer


def request(msgid: int, method: str, *params: Any) -> bytes:
    return bytes(msgpack.packb([0, msgid, method, list(params)]))


def test_a_profile_is_read_from_the_note() -> None:
    profile = read_profile(sketch_elf("B", ["health", "add"]))
    assert (profile.name, profile.binds, profile.behaviour) == ("B", ("health", "add"), "runs")
    assert profile.problem == ""


def test_a_sketch_without_a_note_runs_the_demo_set() -> None:
    profile = read_profile(SKETCH.read_bytes())
    assert (profile.binds, profile.behaviour, profile.problem) == (None, "runs", "")


def test_the_note_changes_nothing_the_flasher_or_openocd_load() -> None:
    plain, noted = SKETCH.read_bytes(), sketch_elf("C", behaviour="silent")
    assert openocd_sections(noted) == openocd_sections(plain)
    validate_sketch(noted)  # does not raise
    assert read_profile(noted).sha256 != read_profile(sketch_elf("D")).sha256


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(sketch_elf("T", ["x"]))), flip=st.integers(0, 255))
def test_a_damaged_file_never_raises_and_never_runs_more_than_it_says(cut: int, flip: int) -> None:
    data = bytearray(sketch_elf("T", ["x"])[:cut])
    if data:
        data[cut // 2] ^= flip
    profile = read_profile(bytes(data))
    assert profile.behaviour in ("runs", "silent", "crash")
    if profile.problem:
        assert profile.behaviour == "crash"


def test_booting_rebinds_what_the_sketch_binds() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        m4.boot(sketch_elf("B", ["health"]))
        assert m4.bound_names == ["health", "tty"]
        link.send(request(1, "health", 7))
        link.send(request(2, "add", 1, 2))  # the demo sketch had it; sketch B does not
        first, second = await link.messages(2)
        assert first == [1, 1, None, ["B", "health", 7]]
        assert second[3] is None and "could not find function 'add'" in second[2]

    run_with_m4(scenario)


def test_a_silent_sketch_reads_nothing_and_a_new_flash_brings_rpc_back() -> None:
    async def scenario(m4: VirtualM4, link: MemoryLink) -> None:
        m4.boot(sketch_elf("C", ["health"], behaviour="silent"))
        link.send(request(1, "health"))
        await wait_for(lambda: m4.stats.dropped_not_running == 1, what="the silent sketch to drop the call")
        assert link.writes == []
        m4.boot(sketch_elf("B", ["health"]))
        link.send(request(2, "health"))
        (reply,) = await link.messages(1)
        assert reply == [1, 2, None, ["B", "health"]]
        assert m4.stats.boots == 2

    run_with_m4(scenario)


def test_the_wire_answers_a_flash_and_refuses_anything_else() -> None:
    m4 = VirtualM4(demo=False)
    elf = sketch_elf("A", ["whoami"])
    assert answer(m4, ["flash", elf]) == ["booted", read_profile(elf).sha256, "A", "runs", ""]
    assert m4.bound_names == ["tty", "whoami"]
    assert answer(m4, ["erase"])[0] == "error"
    assert answer(m4, ["flash", "not bytes"])[0] == "error"

