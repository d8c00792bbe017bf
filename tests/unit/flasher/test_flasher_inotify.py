"""The upload-path watcher: close-write, rename, a folder that appears late or is recreated."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.support import wait_until
from x8manager.flasher.inotify import FileWatcher


def _put(path: Path, data: bytes) -> None:
    path.write_bytes(data)


Scenario = Callable[[Path, list[str], Callable[[int], Awaitable[None]]], Awaitable[None]]


def _watch(path: Path, scenario: Scenario) -> list[str]:
    return _watch_with(path, lambda _watcher, events, until: scenario(path, events, until))


def _watch_with(
    path: Path,
    scenario: Callable[[FileWatcher, list[str], Callable[[int], Awaitable[None]]], Awaitable[None]],
) -> list[str]:
    events: list[str] = []

    async def main() -> None:
        changed = asyncio.Event()

        def record(reason: str) -> None:
            events.append(reason)
            changed.set()

        watcher = FileWatcher(path, record)
        watcher.start()

        async def until(count: int) -> None:
            async with asyncio.timeout(10):
                while len(events) < count:
                    changed.clear()
                    await changed.wait()

        try:
            await scenario(watcher, events, until)
        finally:
            watcher.close()

    asyncio.run(main())
    return events


def test_close_write_and_rename_are_seen(tmp_path: Path) -> None:
    async def scenario(path: Path, events: list[str], until: Callable[[int], Awaitable[None]]) -> None:
        _put(path, b"one")
        await until(1)
        temp = path.with_name(".upload.tmp")
        _put(temp, b"two")
        os.rename(temp, path)
        await until(2)
        _put((path.parent / "other.elf"), b"not ours")
        _put(path, b"three")
        await until(3)

    assert _watch(tmp_path / "m4-user-sketch.elf", scenario) == ["close-write", "moved-to", "close-write"]


def test_folder_created_later_and_recreated(tmp_path: Path) -> None:
    target = tmp_path / "tmp" / "arduino" / "m4-user-sketch.elf"

    async def scenario(path: Path, events: list[str], until: Callable[[int], Awaitable[None]]) -> None:
        path.parent.mkdir(parents=True)  # two levels appear at once: the watch climbs down
        _put(path, b"one")
        await until(1)
        shutil.rmtree(path.parent)
        path.parent.mkdir()
        _put(path, b"two")
        await until(2)

    events = _watch(target, scenario)
    # "appeared" when the file was already there by the time the directory watch was set up.
    assert len(events) == 2 and set(events) <= {"close-write", "appeared"}


def test_folder_moved_away_and_back(tmp_path: Path) -> None:
    target = tmp_path / "arduino" / "m4-user-sketch.elf"
    target.parent.mkdir()

    async def scenario(path: Path, events: list[str], until: Callable[[int], Awaitable[None]]) -> None:
        os.rename(path.parent, tmp_path / "moved")
        _put((tmp_path / "moved" / path.name), b"not watched any more")
        os.rename(tmp_path / "moved", path.parent)
        _put(path, b"new")
        await until(1)

    events = _watch(target, scenario)
    assert events[-1] in ("close-write", "appeared")


async def _until_watching(watcher: FileWatcher, directory: Path) -> None:
    """Poll (the watcher has no event for it) until the watch sits on *directory*; 10 s at most."""
    for _ in range(1000):
        if watcher.watched_directory == directory:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still watching {watcher.watched_directory}, not {directory}")


def _watch_replaced_folder(target: Path, replace: Callable[[Path], None]) -> list[str]:
    """The folder goes, *replace* puts something else there, a real folder comes back with an upload."""

    async def scenario(
        watcher: FileWatcher, events: list[str], until: Callable[[int], Awaitable[None]]
    ) -> None:
        target.parent.rmdir()
        replace(target.parent)
        # The watch moves up to the folder's parent: it never follows the symlink.
        await _until_watching(watcher, target.parent.parent)
        target.parent.unlink()
        target.parent.mkdir()
        await _until_watching(watcher, target.parent)
        _put(target, b"real folder again")
        await until(1)

    return _watch_with(target, scenario)


def test_folder_replaced_by_a_symlink_loop_then_restored_keeps_watching(tmp_path: Path) -> None:
    target = tmp_path / "tmp" / "arduino" / "m4-user-sketch.elf"
    target.parent.mkdir(parents=True)
    # arduino -> arduino: ELOOP for anything that follows it (the old watcher went deaf here).
    events = _watch_replaced_folder(target, lambda folder: folder.symlink_to(folder))
    assert events == ["close-write"]


def test_folder_replaced_by_a_symlink_is_not_watched_through(tmp_path: Path) -> None:
    target = tmp_path / "tmp" / "arduino" / "m4-user-sketch.elf"
    target.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    events = _watch_replaced_folder(target, lambda folder: folder.symlink_to(elsewhere))
    assert events == ["close-write"]


class _UploaderWinsTheRace:
    """The interpreter's libc, except that the first failed watch on *folder* is followed at once
    by an uploader's ``mkdir`` of it: before the watcher's next call (the watch on its parent)."""

    def __init__(self, libc: Any, folder: Path) -> None:
        self._libc = libc
        self._folder = os.fsencode(folder)
        self.made = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._libc, name)

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        wd = int(self._libc.inotify_add_watch(fd, path, mask))
        if wd < 0 and path == self._folder and not self.made:
            self.made = True
            os.mkdir(self._folder)  # plain syscalls: ctypes' saved errno of the failure stays
        return wd


def test_folder_made_between_two_watches_is_still_climbed_into(tmp_path: Path) -> None:
    # ``mkdir -p tmp/arduino`` right as the watcher climbs: tmp/arduino appears after the watch
    # on it failed and before the one on tmp exists, so no IN_CREATE ever names it.
    target = tmp_path / "tmp" / "arduino" / "m4-user-sketch.elf"
    (tmp_path / "tmp").mkdir()
    events: list[str] = []

    async def main() -> None:
        watcher = FileWatcher(target, events.append)
        race = _UploaderWinsTheRace(watcher._libc, target.parent)
        watcher._libc = race
        watcher.start()
        try:
            assert race.made
            assert watcher.watched_directory == target.parent  # not left on tmp, deaf to arduino
            _put(target, b"upload")
            await wait_until(lambda: events, "the upload's close-write")
        finally:
            watcher.close()

    asyncio.run(main())
    assert events == ["close-write"]
