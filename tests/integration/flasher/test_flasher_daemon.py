"""The m4-flasher daemon and CLI as processes, with the SWD-probe stand-in in place of openocd."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

from flasher_daemon_rig import ELF_DIR, GOOD, STANDIN, Rig, variant

from tests.support import wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_is_validated_flashed_and_reported(rig: Rig) -> None:
    rig.start()
    rig.upload_bytes(GOOD)  # the folder did not exist when the daemon started
    wait_for(lambda: rig.outcome_for(sha(GOOD), "success"), "a successful flash")
    assert rig.chip()["sha256"] == sha(GOOD) and rig.chip()["state"] == "programmed"
    (run,) = rig.runs()
    assert run["argv"][-2:] == [
        "-c",
        f"program {{{run['argv'][-1].split('{')[1].split('}')[0]}}} verify reset exit",
    ]
    assert "/spool/" in run["argv"][-1], "openocd reads the private snapshot, never the upload path"
    status = rig.cli("status", "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["result"] == "success"
    human = rig.cli("status")
    assert "last result: success" in human.stdout and sha(GOOD) in human.stdout
    code, err = rig.stop()
    assert code == 0, err
    assert "success" in err and "programmed, verified and reset" in err


def test_rejected_upload_leaves_the_chip_alone(rig: Rig) -> None:
    rig.start()
    bad = (ELF_DIR / "m7-region.elf").read_bytes()
    rig.upload_bytes(bad)
    entry = wait_for(lambda: rig.outcome_for(sha(bad), "rejected"), "the rejection")
    assert "would overwrite the M7 firmware" in entry["reason"]
    assert rig.runs() == [] and rig.chip() == {}
    human = rig.cli("status")
    assert "last result: rejected" in human.stdout and "M7 firmware" in human.stdout
    rig.stop()


def test_burst_of_uploads_flashes_only_the_newest(rig: Rig) -> None:
    # Every run stays connecting (nothing written yet, as a real probe's init and reset) until the
    # test releases it: the burst is over before any run may program, however loaded the machine.
    rig.set_mode("hold-connecting")
    rig.start()
    uploads = [variant(number) for number in range(20)]
    for data in uploads:
        rig.upload_bytes(data)
    newest = sha(uploads[-1])
    # One worker: when the newest's run exists, every earlier run was stopped (and reaped) first.
    # Later reads of the upload path can only find the newest, which is not flashed a second time.
    wait_for(lambda: any(newest[:16] in run["argv"][-1] for run in rig.runs()), "the newest's openocd run")
    (rig.probe / "release").touch()
    wait_for(lambda: rig.outcome_for(newest, "success"), "the newest upload to be flashed")
    chip = rig.chip()
    assert chip["sha256"] == newest and chip["writes"] == 1, chip
    assert [e for e in rig.history() if e["result"] == "success"] == [rig.outcome_for(newest, "success")]
    assert sum(newest[:16] in run["argv"][-1] for run in rig.runs()) == 1, "the newest is written once"
    rig.stop()


def test_folder_removed_and_recreated(rig: Rig) -> None:
    rig.start()
    rig.upload_bytes(GOOD)
    wait_for(lambda: rig.outcome_for(sha(GOOD), "success"), "the first flash")
    shutil.rmtree(rig.upload.parent)
    second = variant(2)
    rig.upload_bytes(second)
    wait_for(lambda: rig.outcome_for(sha(second), "success"), "the flash after the folder came back")
    assert rig.chip()["sha256"] == sha(second)
    rig.stop()


def test_sigkill_mid_flash_is_reported_and_recovered_on_restart(rig: Rig) -> None:
    rig.set_mode("hang-programming")
    rig.start()
    rig.upload_bytes(GOOD)
    wait_for(lambda: rig.chip().get("state") == "programming", "programming to begin")
    stuck_pid = rig.runs()[-1]["pid"]
    wait_for(lambda: "openocd_pid" in json.loads((rig.state_dir / "in-progress.json").read_text()), "marker")
    rig.stop(signal.SIGKILL)
    # openocd runs in its own process group, so it outlives the daemon here (under systemd the
    # unit's cgroup is killed too); the restarted daemon must end it before touching the pins.
    assert Path(f"/proc/{stuck_pid}").exists()
    interrupted = rig.cli("status")
    assert "INTERRUPTED" in interrupted.stdout, interrupted.stdout
    rig.set_mode("success")
    rig.start()
    wait_for(lambda: rig.outcome_for(sha(GOOD), "success"), "the recovery flash")
    results = [entry["result"] for entry in rig.history()]
    assert results[:2] == ["success", "interrupted"], results
    assert rig.history()[0]["source"] == "recovery"
    assert rig.chip() | {"state": "programmed", "sha256": sha(GOOD)} == rig.chip()
    # The outcome is recorded before the marker goes: wait for the second step too.
    wait_for(lambda: not (rig.state_dir / "in-progress.json").exists(), "the marker to be cleared")
    wait_for(lambda: not Path(f"/proc/{stuck_pid}").exists(), "the orphaned openocd to be killed")
    rig.stop()


def test_manual_flash_waits_for_the_daemon_and_rollback_restores_last_good(rig: Rig) -> None:
    rig.set_mode("hold-programming")  # the daemon's write lasts until the test releases it
    rig.start()
    rig.upload_bytes(GOOD)
    wait_for(lambda: rig.chip().get("state") == "programming", "the daemon's flash to begin")
    manual = variant(7)
    manual_file = rig.root / "manual.elf"
    manual_file.write_bytes(manual)
    flashing = rig.cli_process("flash", str(manual_file))
    line = rig.wait_for_line(flashing, "waiting for the H7 lock")
    assert f"m4-flasher upload {sha(GOOD)[:12]}" in line, line  # it waits for the daemon's flash
    assert len(rig.runs()) == 1 and rig.chip()["sha256"] == sha(GOOD)  # and has not touched the pins
    (rig.probe / "release").touch()  # the daemon's write completes; then the manual flash may run
    out, err = flashing.communicate(timeout=60)
    assert flashing.returncode == 0, out + err
    assert "success" in out
    first, second = rig.runs()
    assert sha(GOOD)[:16] in first["argv"][-1] and sha(manual)[:16] in second["argv"][-1]
    upload_done, manual_done = rig.outcome_for(sha(GOOD), "success"), rig.outcome_for(sha(manual), "success")
    assert upload_done and manual_done
    history = rig.history()  # newest first: the daemon's flash finished before the manual one
    assert history.index(manual_done) < history.index(upload_done)
    assert "--openocd" not in flashing.args and STANDIN.name in second["argv"][0], "settings from daemon.json"
    assert rig.chip()["sha256"] == sha(manual) and rig.chip()["writes"] == 2

    rig.set_mode("fail")
    failed = rig.cli("flash", str(ELF_DIR / "sketch-ok-2.elf"))
    assert failed.returncode == 1 and "Programming Failed" in failed.stderr
    assert rig.chip()["state"] == "programming"  # a half-written bank
    rig.set_mode("success")
    rolled = rig.cli("rollback")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert rig.chip() | {"state": "programmed", "sha256": sha(manual)} == rig.chip()
    rig.stop()


def test_cli_exit_codes(rig: Rig) -> None:
    rejected = rig.cli("flash", str(ELF_DIR / "truncated.elf"), "--openocd", str(STANDIN))
    assert rejected.returncode == 3 and "truncated" in rejected.stdout
    missing = rig.cli("flash", str(rig.root / "nope.elf"), "--openocd", str(STANDIN))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    nothing = rig.cli("rollback", "--openocd", str(STANDIN))
    assert nothing.returncode == 2 and "no last good sketch" in nothing.stderr
    assert rig.runs() == []


def test_upload_made_while_the_daemon_was_down_is_flashed_once(rig: Rig) -> None:
    rig.upload_bytes(GOOD)
    rig.start()
    wait_for(lambda: rig.outcome_for(sha(GOOD), "success"), "the flash of the file present at start")
    rig.stop()
    rig.start()
    rig.upload_bytes(variant(1))
    wait_for(lambda: rig.outcome_for(sha(variant(1)), "success"), "the next upload")
    assert len(rig.runs()) == 2, "the file already flashed is not flashed again after a restart"
    rig.stop()


def test_startup_errors_exit_non_zero(rig: Rig) -> None:
    watch = ("--watch", str(rig.upload))
    no_openocd = rig.cli("daemon", *watch, "--openocd", "/nonexistent/openocd")
    assert no_openocd.returncode != 0 and "not found" in no_openocd.stderr
    blocked = rig.root / "blocked"
    blocked.write_text("a file where the state directory should be")
    bad_state = rig.cli("daemon", *watch, "--openocd", str(STANDIN), "--state-dir", str(blocked))
    assert bad_state.returncode != 0 and "state directory" in bad_state.stderr
    no_config = rig.cli("daemon", *watch, "--openocd", str(STANDIN), "--adapter-config", "/nonexistent.cfg")
    assert no_config.returncode != 0 and "config file" in no_config.stderr


def test_sigterm_lets_a_running_write_finish(rig: Rig) -> None:
    rig.set_mode("hold-programming")
    rig.start()
    rig.upload_bytes(GOOD)
    wait_for(lambda: rig.chip().get("state") == "programming", "programming to begin")
    during = rig.cli("status")
    assert "flashing sketch" in during.stdout and "H7 programming lock: held by" in during.stdout, (
        during.stdout
    )
    assert rig.daemon is not None
    rig.daemon.send_signal(signal.SIGTERM)
    rig.wait_notify("STOPPING=1")
    (rig.probe / "release").touch()  # the write completes after the daemon was told to stop
    code, err = rig.stop(signal.SIGTERM)
    assert code == 0, err
    assert "letting the running flash finish" in err
    assert rig.chip()["state"] == "programmed"
    assert rig.outcome_for(sha(GOOD), "success")
    assert not (rig.state_dir / "in-progress.json").exists()


def test_status_file_elsewhere_and_unreadable_upload_keep_the_daemon_running(rig: Rig) -> None:
    status_file = rig.root / "run" / "m4-flasher-status.json"
    rig.start("--status", str(status_file))
    rig.upload.parent.mkdir(parents=True)
    rig.upload.mkdir()  # a directory where the sketch should be: nothing to read, nothing to do
    rig.upload.rmdir()
    rig.upload_bytes(GOOD)
    wait_for(
        lambda: status_file.exists() and json.loads(status_file.read_text()).get("result") == "success",
        "the status in the chosen file",
    )
    shown = rig.cli("status", "--json")  # finds the file through the daemon's recorded settings
    assert json.loads(shown.stdout)["sketch"]["sha256"] == sha(GOOD)
    assert rig.daemon is not None and rig.daemon.poll() is None
    rig.stop()
