"""The ELF check sees what real openocd will write: Debian's openocd ``test_image`` is the oracle.

``test_image FILE`` opens the file with openocd's own image loader (the one ``program`` uses) and
lists every section it would write as ``address 0x... length 0x...``. It needs a target but no
hardware: the dummy adapter and a ``testee`` target are enough. One openocd process checks many
files (each ``test_image`` inside ``catch``), so the fuzzing below costs one start-up.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from flasher_daemon_rig import ELF_DIR

from tests.support.elfcraft import hostile_elfs
from x8manager.flasher import elfcheck
from x8manager.flasher.elfcheck import M4_FLASH_END, M4_FLASH_START, SketchRejected, validate_sketch

_SETUP = (
    "adapter driver dummy; transport select jtag; "
    "jtag newtap t cpu -irlen 4 -expected-id 0; target create t.cpu testee -chain-position t.cpu; init"
)
_SECTION = re.compile(r"address 0x([0-9a-f]+) length 0x([0-9a-f]+)")
Sections = list[tuple[int, int]]


def openocd_view(files: list[Path]) -> list[Sections | None]:
    """For each file, the (address, length) sections real openocd would write; None if it refuses it."""
    program = shutil.which("openocd")
    assert program, "openocd is needed (scripts/deps/apt.txt installs Debian's package)"
    script = [_SETUP]
    for number, path in enumerate(files):
        assert not set(str(path)) & set('{}\\ \n[]$"'), path
        script.append(
            f'if {{[catch {{capture {{test_image {path}}}}} out]}} {{echo "IMAGE {number} ERROR"}} '
            f'else {{echo "IMAGE {number} OK $out END"}}'
        )
    script.append("shutdown")
    run = subprocess.run(
        [program, "-d0", "-c", "; ".join(script)], capture_output=True, text=True, timeout=120, check=False
    )
    output = run.stdout + run.stderr
    views: list[Sections | None] = []
    for number in range(len(files)):
        found = re.search(rf"IMAGE {number} (ERROR|OK (.*?) END)", output, re.DOTALL)
        assert found, f"openocd said nothing about file {number}:\n{output[-3000:]}"
        if found.group(1) == "ERROR":
            views.append(None)
        else:
            views.append([(int(a, 16), int(n, 16)) for a, n in _SECTION.findall(found.group(2))])
    return views


def _in_window(sections: Sections) -> bool:
    return all(address >= M4_FLASH_START and address + size <= M4_FLASH_END for address, size in sections)


def _model(data: bytes) -> Sections | None:
    try:
        sections = elfcheck.openocd_sections(data)
    except SketchRejected:
        return None
    return [(s.address, s.size) for s in sections] or None


def test_good_sketches_validated_as_openocd_writes_them(tmp_path: Path) -> None:
    names = ["sketch-ok.elf", "sketch-ok-2.elf"]
    views = openocd_view([ELF_DIR / name for name in names])
    for name, view in zip(names, views, strict=True):
        info = validate_sketch((ELF_DIR / name).read_bytes())
        assert view == [(s.address, s.size) for s in info.segments], name
        assert _in_window(view)


# The crafted files that would make openocd write outside the M4 window (two of them the M7 bank).
OUTSIDE = ["phentsize-64-hides-m7-load", "paddr-0-single-load", "paddr-0-loads-note-paddr-set"]


@pytest.mark.parametrize("name", OUTSIDE)
def test_hostile_elf_refused_where_openocd_would_write_outside_the_window(tmp_path: Path, name: str) -> None:
    data = hostile_elfs()[name]
    path = tmp_path / f"{name}.elf"
    path.write_bytes(data)
    (view,) = openocd_view([path])
    assert view is not None, "openocd accepts the file: it would program it"
    assert not _in_window(view), f"openocd would write {view}"
    with pytest.raises(SketchRejected):
        validate_sketch(data)


def test_stride_64_file_makes_openocd_write_the_m7_bank(tmp_path: Path) -> None:
    path = tmp_path / "stride.elf"
    path.write_bytes(hostile_elfs()["phentsize-64-hides-m7-load"])
    (view,) = openocd_view([path])
    assert view is not None and any(address == 0x08000000 for address, _ in view), view
    with pytest.raises(SketchRejected, match="openocd reads them 32 bytes apart"):
        validate_sketch(path.read_bytes())


def test_model_of_openocds_loader_matches_openocd_on_hostile_and_fuzzed_files(tmp_path: Path) -> None:
    """openocd_sections() agrees with openocd on every file, and nothing validated leaves the window."""
    good = (ELF_DIR / "sketch-ok.elf").read_bytes()
    samples = dict(hostile_elfs())
    rng = random.Random(11)
    (phoff,) = struct.unpack_from("<I", good, 28)
    table = range(phoff, phoff + 3 * 32)
    for number in range(250):
        data = bytearray(rng.choice(list(samples.values())) if number % 3 == 0 else good)
        for _ in range(rng.randint(1, 4)):
            where = rng.choice([rng.choice(table), rng.randint(16, 51)])
            value = rng.choice([0, 1, 0x20, 0x40, 0x08, 0x10, 0xFF, rng.randint(0, 255)])
            data[where] = value
        samples[f"fuzz-{number}"] = bytes(data)
    paths = []
    for number, data in enumerate(samples.values()):
        path = tmp_path / f"{number}.elf"
        path.write_bytes(data)
        paths.append(path)
    views = openocd_view(paths)
    accepted = 0
    for (name, data), view in zip(samples.items(), views, strict=True):
        assert _model(data) == view, f"{name}: openocd loads {view}, the model says {_model(data)}"
        try:
            validate_sketch(data)
        except SketchRejected:
            continue
        accepted += 1
        assert view is not None and _in_window(view), f"{name} was accepted but openocd writes {view}"
    assert accepted > 0  # some mutations are harmless (flags, alignment): the check is not just "no"
