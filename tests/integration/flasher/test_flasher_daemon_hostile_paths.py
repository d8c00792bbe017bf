"""The daemon against what a hostile container can put at /tmp/arduino (issue 11, item 2).

Each trick is played the way it reaches the daemon: a rename onto the watched name (one
IN_MOVED_TO, as a finished upload), or a folder swapped under the watch. The daemon must not block,
must not read through a symlink, and must flash the next honest upload.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from flasher_daemon_rig import Rig, variant

from tests.support import wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _refusal(rig: Rig, words: str) -> dict[str, Any] | None:
    for entry in rig.history():
        if entry["result"] == "rejected" and words in entry["reason"]:
            return entry
    return None


def _rename_onto_upload(rig: Rig, make: Any) -> None:
    rig.upload.parent.mkdir(parents=True, exist_ok=True)
    temp = rig.upload.with_name(".incoming")
    make(temp)
    os.rename(temp, rig.upload)


def test_fifo_at_the_upload_path_neither_blocks_nor_stops_the_next_upload(rig: Rig) -> None:
    rig.start()
    _rename_onto_upload(rig, os.mkfifo)
    wait_for(lambda: _refusal(rig, "a FIFO"), "the FIFO to be refused")
    rig.upload.unlink()
    honest = variant(1)
    rig.upload_bytes(honest)
    wait_for(lambda: rig.outcome_for(sha(honest), "success"), "the next upload to be flashed")
    code, err = rig.stop()
    assert code == 0, err


def test_symlink_to_a_root_only_file_is_not_read_nor_reported(rig: Rig) -> None:
    secret = rig.root / "root-only" / "shadow"
    secret.parent.mkdir(mode=0o700)
    hidden = variant(7)  # a valid sketch even: the uploader could not read it, so it is not theirs
    secret.write_bytes(hidden)
    secret.chmod(0o600)
    rig.start()
    _rename_onto_upload(rig, lambda temp: temp.symlink_to(secret))
    entry = wait_for(lambda: _refusal(rig, "is a symlink"), "the symlink to be refused")
    assert entry["sketch"] == {}
    status_text = (rig.state_dir / "status.json").read_text()
    assert sha(hidden) not in status_text and '"size"' not in status_text  # nothing of it is recorded
    assert rig.chip() == {} and rig.runs() == []
    rig.stop()


def test_folder_that_is_a_symlink_is_not_followed_and_watching_goes_on(rig: Rig) -> None:
    elsewhere = rig.root / "elsewhere"
    elsewhere.mkdir()
    behind = variant(3)
    (elsewhere / rig.upload.name).write_bytes(behind)
    rig.upload.parent.parent.mkdir(parents=True)
    rig.upload.parent.symlink_to(elsewhere)
    rig.start()  # the start-up rescan looks at the upload path: through the symlink it must not
    wait_for(lambda: _refusal(rig, "is a symlink: the flasher does not follow it"), "the refusal")
    behind_again = variant(5)
    (elsewhere / rig.upload.name).write_bytes(behind_again)  # seen only by a watch that follows
    rig.upload.parent.unlink()
    honest = variant(4)
    rig.upload_bytes(honest)
    wait_for(lambda: rig.outcome_for(sha(honest), "success"), "the upload into the real folder")
    assert rig.outcome_for(sha(behind)) is None and rig.outcome_for(sha(behind_again)) is None
    chip = rig.chip()
    assert chip["sha256"] == sha(honest) and chip["writes"] == 1, chip
    rig.stop()


def test_daemon_starts_and_keeps_watching_when_the_folder_is_a_symlink_loop(rig: Rig) -> None:
    rig.upload.parent.parent.mkdir(parents=True)
    rig.upload.parent.symlink_to(rig.upload.parent)  # arduino -> arduino: ELOOP when followed
    rig.start()
    rig.upload.parent.unlink()
    honest = variant(6)
    rig.upload_bytes(honest)
    wait_for(lambda: rig.outcome_for(sha(honest), "success"), "the upload once the folder is real")
    rig.stop()
