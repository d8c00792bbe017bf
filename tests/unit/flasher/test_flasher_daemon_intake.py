"""An upload the daemon cannot read or spool for a moment (out of descriptors) is looked at again,
never dropped: no later inotify event may come for it."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest
from flasher_unit_support import ELF_DIR

from tests.support import wait_until
from x8manager.flasher.daemon import FlasherDaemon
from x8manager.flasher.pipeline import Flasher

GOOD = (ELF_DIR / "sketch-ok.elf").read_bytes()


@pytest.mark.parametrize("step", ["snapshot", "admit"])
def test_an_upload_that_meets_emfile_is_read_again_not_lost(
    flasher: Flasher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    upload = tmp_path / "arduino" / "m4-user-sketch.elf"
    upload.parent.mkdir()
    upload.write_bytes(GOOD)
    real = getattr(flasher, step)
    failures = iter([OSError(errno.EMFILE, "Too many open files")])

    def starved(*args: object, **kwargs: object) -> object:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(flasher, step, starved)
    daemon = FlasherDaemon(flasher, upload)

    async def scenario() -> None:
        daemon._on_change("close-write")  # what the watcher calls
        await wait_until(lambda: daemon._pending is not None, "the upload to be admitted after all")

    asyncio.run(scenario())
    assert daemon._pending is not None and daemon._pending.spool_path.read_bytes() == GOOD
