"""Another local user against the flasher's locks (issue 11, item 3).

The H7 lock lives in /run/lock, a 1777 directory, and the state directory is readable by all.
These tests put the files in a 1777 directory of their own and play the other user for real: a
child process running as ``nobody`` (so they need root, as the daemon does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from x8manager.flasher.lock import h7_lock
from x8manager.flasher.records import FlashRecord, InProgress, SketchRef
from x8manager.flasher.state import StateDir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays another user: needs root")

NOBODY = 65534
SRC = Path(__file__).resolve().parents[3] / "src"
# Run as nobody: open the file and hold an exclusive flock until stdin closes.
HOLD_AS_OTHER_USER = """
import fcntl, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
except OSError as error:
    print("denied", error.strerror, flush=True)
else:
    print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def sticky_dir() -> Iterator[Path]:
    """A world-writable sticky directory, like /run/lock and /tmp."""
    path = Path(tempfile.mkdtemp(prefix="m4-flasher-lock-test-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


class OtherUser:
    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            ["/usr/bin/python3", "-c", HOLD_AS_OTHER_USER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            user=NOBODY,
            group=NOBODY,
            cwd="/",
        )
        assert self.process.stdout is not None
        self.answer = self.process.stdout.readline().strip()

    def leave(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


def _hold_h7(path: Path) -> None:
    async def main() -> None:
        async with h7_lock(path, "test", wait_limit=5):
            pass

    asyncio.run(main())


def test_other_users_cannot_open_the_locks(sticky_dir: Path) -> None:
    state = StateDir(sticky_dir / "state")
    state.prepare()
    state.root.chmod(0o755)  # as systemd's StateDirectory= makes it
    state.update_status(lambda status: status.__setitem__("note", "x"))
    h7 = sticky_dir / "x8-h7-swd.lock"
    _hold_h7(h7)
    for lock in (state.root / "status.lock", h7):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600, lock
        other = OtherUser(lock)
        try:
            assert other.answer.startswith("denied"), f"nobody could flock {lock}: {other.answer}"
        finally:
            other.leave()


def test_status_lock_made_by_an_older_flasher_is_made_private(sticky_dir: Path) -> None:
    state = StateDir(sticky_dir / "state")
    state.prepare()
    state.root.chmod(0o755)
    lock = state.root / "status.lock"
    lock.touch(mode=0o644)
    lock.chmod(0o644)
    state.update_status(lambda status: None)
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_a_status_lock_held_by_root_elsewhere_never_blocks_for_long(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.prepare()
    state.update_status(lambda status: None)
    holder = subprocess.Popen(
        ["/usr/bin/python3", "-c", HOLD_AS_OTHER_USER, str(state.root / "status.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(state.update_status, lambda status: None)
            try:
                with pytest.raises(OSError, match="stayed locked"):
                    future.result(timeout=10)
            finally:
                assert holder.stdin is not None
                holder.stdin.close()  # frees a thread stuck in a blocking flock (old code)
    finally:
        holder.wait(timeout=10)


def test_symlink_planted_at_the_lock_path_is_not_followed(sticky_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0:root:/root:/bin/sh\n")
    lock = sticky_dir / "x8-h7-swd.lock"
    os.symlink(victim, lock)
    os.lchown(lock, NOBODY, NOBODY)  # planted by another user
    _hold_h7(lock)
    assert victim.read_text() == "root:x:0:0:root:/root:/bin/sh\n", "the lock truncated the symlink's target"
    assert not lock.is_symlink() and lock.stat().st_uid == 0


def test_lock_file_created_and_held_by_another_user_does_not_block_the_flasher(sticky_dir: Path) -> None:
    lock = sticky_dir / "x8-h7-swd.lock"
    other = OtherUser(lock)  # creates it (its own, 0644) and holds it
    try:
        assert other.answer == "held"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(_hold_h7, lock).result(timeout=30)  # old code: LockTimeout after 5 s
        assert lock.stat().st_uid == 0 and stat.S_IMODE(lock.stat().st_mode) == 0o600
    finally:
        other.leave()


def test_other_users_still_read_the_status(sticky_dir: Path) -> None:
    """Private locks and marker do not make `m4-flasher status` fail for everyone else."""
    state = StateDir(sticky_dir / "state")
    state.prepare()
    state.root.chmod(0o755)
    state.record_outcome(FlashRecord(result="success", reason="flashed", sketch=SketchRef(sha256="ab" * 32)))
    state.write_marker(InProgress(record=FlashRecord(), spool_path="/x"))  # 0600, as while flashing
    h7 = sticky_dir / "x8-h7-swd.lock"
    _hold_h7(h7)
    shown = subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "x8manager.flasher.cli",
            "status",
            "--state-dir",
            str(state.root),
            "--lock",
            str(h7),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        user=NOBODY,
        group=NOBODY,
        cwd="/",
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "last result: success" in shown.stdout and "INTERRUPTED" not in shown.stdout
