"""A state directory that fills up while openocd writes the chip (issue 11, item 4).

The state directory is a real, small tmpfs (so these tests need root, as the daemon does). It is
filled to the last byte while the stand-in holds mid-programming; then the write finishes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flasher_daemon_rig import GOOD, Rig, variant

from tests.support import wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_state_dir(rig: Rig) -> Iterator[Path]:
    rig.state_dir.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(rig.state_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    yield rig.state_dir
    if rig.daemon is not None and rig.daemon.poll() is None:
        rig.daemon.kill()
        rig.daemon.communicate(timeout=30)
    subprocess.run(["umount", "-l", str(rig.state_dir)], check=False)


def _fill(path: Path) -> None:
    """Write *path* until the filesystem has no byte left (unbuffered: ENOSPC comes from write)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _flash_while_the_disk_fills(rig: Rig, data: bytes, *, without_reserve: bool = False) -> None:
    rig.set_mode("hold-programming")
    rig.upload_bytes(data)
    wait_for(lambda: rig.chip().get("state") == "programming", "programming to begin")
    _fill(rig.state_dir / "filler")
    if without_reserve:
        (rig.state_dir / ".reserve").unlink(missing_ok=True)  # as if an earlier full-disk flash had used it
        _fill(rig.state_dir / "filler-2")
    (rig.probe / "release").touch()


def test_full_disk_after_the_write_still_reports_the_chip_and_keeps_last_good(
    rig: Rig, small_state_dir: Path
) -> None:
    rig.start()
    rig.upload_bytes(GOOD)
    wait_for(lambda: rig.outcome_for(sha(GOOD), "success"), "the first flash")
    new = variant(1)
    _flash_while_the_disk_fills(rig, new)
    entry = wait_for(lambda: rig.outcome_for(sha(new), "success"), "the verified flash to be recorded")
    assert "verified" in entry["reason"]
    assert rig.status()["last_good"]["sha256"] == sha(new)
    assert rig.last_good_elf() == new
    assert list((rig.state_dir / "spool").iterdir()) == []
    assert not (rig.state_dir / "in-progress.json").exists()
    code, err = rig.stop()
    assert code == 0, err
    assert "is full: released its reserve" in err


def test_no_room_at_all_reports_the_chip_in_the_journal_and_never_loses_last_good(
    rig: Rig, small_state_dir: Path
) -> None:
    rig.start()
    rig.upload_bytes(GOOD)
    wait_for(lambda: rig.outcome_for(sha(GOOD), "success"), "the first flash")
    new = variant(2)
    _flash_while_the_disk_fills(rig, new, without_reserve=True)
    wait_for(
        lambda: rig.chip().get("state") == "programmed" and not (rig.state_dir / "in-progress.json").exists(),
        "the flash to finish",
    )
    # The previous last good sketch is whole: its .elf and its record still agree.
    assert rig.last_good_elf() == GOOD
    assert '"' + sha(GOOD) + '"' in (rig.state_dir / "last-good.json").read_text()
    assert list((rig.state_dir / "spool").iterdir()) == []
    assert not list(rig.state_dir.glob(".last-good*.tmp"))
    (rig.state_dir / "filler").unlink()
    (rig.state_dir / "filler-2").unlink()
    code, err = rig.stop()
    assert code == 0, err
    assert f"sketch {sha(new)[:12]}: success: programmed, verified and reset" in err
    assert "could not be kept as the last good sketch" in err
