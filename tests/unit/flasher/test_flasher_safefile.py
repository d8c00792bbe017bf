"""What sits at the upload path is read only if it is a plain file reached without symlinks.

Every read goes through ``Flasher.snapshot`` (the daemon's and the CLI's way in). A read that
would block (FIFO, terminal) runs in a thread with a deadline, so a regression fails instead of
hanging the test run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flasher_unit_support import ELF_DIR

from x8manager.flasher.pipeline import Flasher

GOOD = (ELF_DIR / "sketch-ok.elf").read_bytes()


@contextlib.contextmanager
def _reading(
    flasher: Flasher, path: Path, unblock: Path | int | None = None
) -> Iterator[concurrent.futures.Future[bytes]]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(flasher.snapshot, path)
    try:
        yield future
    finally:
        if not future.done() and isinstance(unblock, Path):  # free a thread stuck in open(FIFO)
            fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        elif not future.done() and isinstance(unblock, int):  # ... or in read(tty)
            os.write(unblock, b"x\n")
        pool.shutdown(wait=True)


def _refused(future: concurrent.futures.Future[bytes], words: str) -> None:
    try:
        result = future.result(timeout=5)
    except concurrent.futures.TimeoutError:
        pytest.fail("the read blocked")
    except OSError as error:
        assert words in str(error.strerror), error
    else:
        pytest.fail(f"read {len(result)} bytes through it")


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    path = tmp_path / "tmp" / "arduino" / "m4-user-sketch.elf"
    path.parent.mkdir(parents=True)
    return path


def test_plain_file_is_read(flasher: Flasher, upload: Path) -> None:
    upload.write_bytes(GOOD)
    assert flasher.snapshot(upload) == GOOD


def test_fifo_is_refused_without_blocking(flasher: Flasher, upload: Path) -> None:
    os.mkfifo(upload)
    with _reading(flasher, upload, unblock=upload) as future:
        _refused(future, "a FIFO")


def test_symlink_to_a_terminal_is_refused_without_blocking(flasher: Flasher, upload: Path) -> None:
    master, slave = os.openpty()
    try:
        upload.symlink_to(os.ttyname(slave))
        with _reading(flasher, upload, unblock=master) as future:
            _refused(future, "a symlink")
    finally:
        os.close(master)
        os.close(slave)


def test_symlink_to_a_file_the_uploader_cannot_read_is_not_followed(
    flasher: Flasher, upload: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "root-only" / "shadow"
    secret.parent.mkdir(mode=0o700)
    secret.write_bytes(GOOD)  # even a valid sketch: what counts is who may read it
    secret.chmod(0o600)
    upload.symlink_to(secret)
    with _reading(flasher, upload) as future:
        _refused(future, "a symlink")


def test_folder_replaced_by_a_symlink_is_not_followed(flasher: Flasher, upload: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / upload.name).write_bytes(GOOD)
    upload.parent.rmdir()
    upload.parent.symlink_to(elsewhere)
    with _reading(flasher, upload) as future:
        _refused(future, "is a symlink: the flasher does not follow it")


def test_hard_link_to_another_file_is_refused(flasher: Flasher, upload: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.elf"
    other.write_bytes(GOOD)
    os.link(other, upload)
    with _reading(flasher, upload) as future:
        _refused(future, "2 hard links")


def test_a_directory_is_refused(flasher: Flasher, upload: Path) -> None:
    upload.mkdir()
    with _reading(flasher, upload) as future:
        _refused(future, "a directory")


def test_manual_flash_path_may_have_symlinked_folders_but_not_be_one(
    flasher: Flasher, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "sketch.elf").write_bytes(GOOD)
    (tmp_path / "link").symlink_to(real)
    assert flasher.snapshot(tmp_path / "link" / "sketch.elf", strict=False) == GOOD
    (real / "alias.elf").symlink_to(real / "sketch.elf")
    with pytest.raises(OSError, match="is a symlink"):
        flasher.snapshot(real / "alias.elf", strict=False)
