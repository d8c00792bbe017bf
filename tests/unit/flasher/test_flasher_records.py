"""The typed flasher records: written with the keys the status file always had, read back tolerantly."""

from __future__ import annotations

from x8manager.flasher.records import DaemonSettings, FlashRecord, SketchRef, Status


def test_flash_record_round_trips_with_the_status_file_keys() -> None:
    record = FlashRecord(
        result="success",
        reason="programmed",
        source="upload",
        origin="/tmp/arduino/m4-user-sketch.elf",
        sketch=SketchRef(sha256="ab" * 32, size=100, flash_bytes=90, entry="0x08100013"),
        started_at="t0",
        finished_at="t1",
        attempts=1,
        openocd_exit=0,
        openocd_log_tail=["ok"],
    )
    document = record.to_json()
    assert set(document) >= {
        "result",
        "reason",
        "source",
        "origin",
        "sketch",
        "attempts",
        "openocd_exit",
        "openocd_log_tail",
        "started_at",
        "finished_at",
    }
    assert document["sketch"] == {"sha256": "ab" * 32, "size": 100, "flash_bytes": 90, "entry": "0x08100013"}
    assert FlashRecord.from_json(document) == record


def test_damaged_or_old_documents_read_back_with_defaults() -> None:
    record = FlashRecord.from_json({"result": 3, "sketch": "x", "attempts": "many", "openocd_log_tail": "?"})
    assert record == FlashRecord()
    assert DaemonSettings.from_json(["not", "an", "object"]) == DaemonSettings()
    assert Status.from_json(None).latest is None


def test_running_sketch_is_the_newest_chip_write_if_it_succeeded() -> None:
    def entry(result: str, sha: str, attempts: int) -> dict[str, object]:
        return {"result": result, "sketch": {"sha256": sha}, "attempts": attempts}

    status = Status.from_json(
        {
            "result": "unchanged",
            "history": [
                entry("unchanged", "b", 0),
                entry("rejected", "c", 0),
                entry("success", "a", 1),
                entry("failed", "z", 1),
            ],
        }
    )
    assert status.running_sha256() == "a"
    assert Status.from_json({"history": [entry("failed", "a", 2)]}).running_sha256() is None
    assert (
        Status.from_json(
            {"history": [entry("interrupted", "a", 0), entry("success", "a", 1)]}
        ).running_sha256()
        is None
    )
