"""Apps that ship their M4 sketch: the m4-sketch template and lint's X8115-X8119."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.support.hostile import alias_bomb, run_bounded
from tests.support.sketches import SKETCH
from x8manager.apps.cli import main
from x8manager.apps.device import App, sketch_status_lines
from x8manager.apps.scaffold import ScaffoldError, create_app


def lint(capsys: pytest.CaptureFixture[str], app: Path) -> tuple[int, list[tuple[str, str | None]]]:
    capsys.readouterr()
    code = main(["lint", "--format", "json", str(app)])
    report = json.loads(capsys.readouterr().out)
    return code, sorted((f["rule"], f["service"]) for f in report["findings"])


def lint_report(capsys: pytest.CaptureFixture[str], app: Path) -> list[dict[str, object]]:
    capsys.readouterr()
    main(["lint", "--format", "json", str(app)])
    findings: list[dict[str, object]] = json.loads(capsys.readouterr().out)["findings"]
    return findings


def sketch_app(tmp_path: Path, *, built: bool = True) -> Path:
    return create_app("thermo", "m4-sketch", tmp_path, sketch=SKETCH if built else None)


def edit_compose(app: Path, change: object) -> None:
    path = app / "docker-compose.yml"
    document = yaml.safe_load(path.read_text())
    change(document["services"])  # type: ignore[operator]
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_the_template_makes_a_sketch_service_the_app_waits_for(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    app = sketch_app(tmp_path)
    services = yaml.safe_load((app / "docker-compose.yml").read_text())["services"]
    sidecar, main_service = services["thermo-sketch"], services["thermo"]
    assert sidecar["command"] == ["python3", "-m", "x8manager.flasher.client"]
    assert sidecar["restart"] == "no" and "/run/m4-flasher:/run/m4-flasher" in sidecar["volumes"]
    assert sidecar["environment"]["X8_SKETCH"] == "/app/sketch/thermo.elf"
    assert main_service["depends_on"] == {"thermo-sketch": {"condition": "service_completed_successfully"}}
    assert (app / "sketch" / "thermo.elf").read_bytes() == SKETCH.read_bytes()
    assert 'RPC.bind("health"' in (app / "sketch" / "thermo.ino").read_text()
    assert (app / "vendor" / "x8manager" / "flasher" / "client.py").is_file()
    assert not (app / "vendor" / "x8manager" / "flasher" / "daemon.py").exists()
    assert lint(capsys, app) == (0, [])


def test_an_unbuilt_sketch_is_a_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lint(capsys, sketch_app(tmp_path, built=False)) == (1, [("X8115", "thermo-sketch")])


def test_a_sketch_the_dockerfile_does_not_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = sketch_app(tmp_path)
    dockerfile = app / "Dockerfile"
    copy = "COPY sketch/thermo.elf /app/sketch/thermo.elf\n"
    dockerfile.write_text(dockerfile.read_text().replace(copy, ""))
    assert lint(capsys, app) == (1, [("X8115", "thermo-sketch")])


def test_a_sketch_compiled_by_a_build_stage_is_in_the_image(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    app = sketch_app(tmp_path, built=False)
    dockerfile = app / "Dockerfile"
    staged = "COPY --from=sketch /out/thermo.elf /app/sketch/thermo.elf\n"
    text = dockerfile.read_text().replace("COPY sketch/thermo.elf /app/sketch/thermo.elf\n", staged)
    dockerfile.write_text("FROM debian:bookworm-slim AS sketch\n" + text)
    assert lint(capsys, app) == (0, [])


def test_a_health_method_the_sketch_never_binds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = sketch_app(tmp_path)
    edit_compose(app, lambda s: s["thermo-sketch"]["environment"].update(X8_SKETCH_HEALTH_BOUND="health,gas"))
    assert lint(capsys, app) == (1, [("X8116", "thermo-sketch")])


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda s: s["thermo-sketch"].update(restart="unless-stopped"), "X8118"),
        (lambda s: s["thermo-sketch"].pop("volumes"), "X8117"),
        (lambda s: s["thermo"].pop("depends_on"), "X8119"),
    ],
)
def test_sidecar_wiring_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object,
                                 rule: str) -> None:
    app = sketch_app(tmp_path)
    edit_compose(app, change)
    assert lint(capsys, app) == (1, [(rule, "thermo-sketch")])


def test_only_the_sketch_template_takes_a_sketch(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="ships no sketch"):
        create_app("plain", "m4-service", tmp_path, sketch=SKETCH)
    assert list(tmp_path.iterdir()) == []


def test_status_shows_the_newest_flash_the_app_asked_for(tmp_path: Path) -> None:
    app_folder = sketch_app(tmp_path)
    app = App("thermo", app_folder, app_folder / "docker-compose.yml", in_apps_root=True, managed=True)
    status = tmp_path / "status.json"
    (never,) = sketch_status_lines(app, status)
    assert never == f"   sketch: never flashed by this app (m4-flasher status: {status})"
    origin = "app thermo: /app/sketch/thermo.elf (request from pid 7 uid 0)"
    history = [
        {"result": "upload", "origin": "/tmp/arduino/m4-user-sketch.elf", "reason": "someone else's"},
        {"result": "unhealthy", "origin": origin, "sketch": {"sha256": "c" * 64}, "finished_at": "T3",
         "reason": "health() did not answer; the last good sketch is back",
         "health": {"healthy": False, "reason": "health() did not answer within 10 s"}},
        {"result": "success", "origin": origin, "sketch": {"sha256": "b" * 64}, "finished_at": "T2"},
    ]
    status.write_text(json.dumps({"history": history}))
    first, second = sketch_status_lines(app, status)
    assert first == ("   sketch: unhealthy cccccccccccc at T3, "
                     "health FAILED: health() did not answer within 10 s")
    assert "last good sketch is back" in second


def test_status_does_not_expand_an_alias_bomb_in_an_apps_compose_file(tmp_path: Path) -> None:
    # 539 bytes: plain yaml.safe_load shares the aliases, but status then turned the environment
    # into strings (9**8 "lol"s): 35 s and 2.8 GB. Through lint's loader it is refused at once.
    app = tmp_path / "bomb"
    app.mkdir()
    (app / "docker-compose.yml").write_text(
        alias_bomb(7, "services:\n  app:\n    image: x\n    environment:\n      X8_SKETCH: *a7\n"))
    code = (f"from pathlib import Path\nfrom x8manager.apps.device import App, sketch_status_lines\n"
            f"folder = Path({str(app)!r})\n"
            "app = App('bomb', folder, folder / 'docker-compose.yml', in_apps_root=True, managed=False)\n"
            "print(sketch_status_lines(app, Path('/nonexistent/status.json')))\n")
    done = run_bounded(code)
    assert done.returncode == 0, done.stderr[-500:]
    assert "docker-compose.yml not read" in done.stdout and "alias" in done.stdout


def copy_sketch_from(tmp_path: Path, source: str) -> Path:
    """A built thermo app whose Dockerfile copies its sketch from *source* ({elsewhere}: a folder
    beside the app holding a copy of the sketch and a source binding something else)."""
    app = sketch_app(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "thermo.elf").write_bytes(SKETCH.read_bytes())
    (elsewhere / "other.ino").write_text('RPC.bind("other", other);\n')
    dockerfile = app / "Dockerfile"
    copy = f"COPY {source.format(elsewhere=elsewhere)} "
    dockerfile.write_text(dockerfile.read_text().replace("COPY sketch/thermo.elf ", copy))
    return app


@pytest.mark.parametrize("source", ["../elsewhere/thermo.elf", "sketch/../../elsewhere/thermo.elf"])
def test_a_sketch_copied_from_outside_the_app_folder_is_a_finding_not_a_crash(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        source: str) -> None:
    # lint scanned the outside folder for RPC.bind, and from inside the folder (x8-apps lint .)
    # crashed on it (ValueError, exit 1).
    app = copy_sketch_from(tmp_path, source)
    assert lint(capsys, app) == (1, [("X8120", "thermo-sketch")])
    monkeypatch.chdir(app)
    assert lint(capsys, Path(".")) == (1, [("X8120", "thermo-sketch")])
    main(["lint", "."])
    assert "put the sketch in the folder (sketch/thermo.elf)" in capsys.readouterr().out


def test_a_copy_source_from_the_context_root_is_inside_the_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # docker reads "COPY /sketch/x.elf" from the build context's root, which is the app folder.
    assert lint(capsys, copy_sketch_from(tmp_path, "/sketch/thermo.elf")) == (0, [])


def test_an_absolute_copy_source_is_looked_up_in_the_folder_not_on_this_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lint read the host's /.../elsewhere, scanned it for RPC.bind and crashed (ValueError, exit 1).
    app = copy_sketch_from(tmp_path, "{elsewhere}/thermo.elf")
    assert lint(capsys, app) == (1, [("X8115", "thermo-sketch")])


def test_the_template_s_sketch_is_written_the_way_an_x8_s_m4_needs(tmp_path: Path) -> None:
    sketch = (sketch_app(tmp_path) / "sketch" / "thermo.ino").read_text()
    code = "\n".join(line for line in sketch.splitlines() if not line.lstrip().startswith("//"))
    assert "#include <RPC.h>" in code and "#include <SerialRPC.h>" in code
    assert "while (!Serial)" not in code and "RPC.setTimeout(" in code
    # An error reply is nil on the M4, and .as<T>() on nil halts it: the result is checked first.
    assert re.search(r"RPC\.call\([^;]*\)\s*\.as<", code) is None
    assert "RPC.timedOut()" in code and "RPCLIB_MSGPACK::type::" in code


WAITS = [
    "void setup() {\n  Serial.begin(115200);\n  while (!Serial) {}\n}\n",
    "void setup() {\n  RPC.begin();\n  while(!RPC);\n}\n",
    "void setup() {\n  SerialRPC.begin();\n  while ( ! SerialRPC ) { delay(10); }\n}\n",
]


@pytest.mark.parametrize("body", WAITS)
def test_waiting_for_serial_is_a_finding_with_its_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      body: str) -> None:
    app = sketch_app(tmp_path)
    head = "#include <RPC.h>\n#include <SerialRPC.h>\nint health() { return 1; }\n"
    (app / "sketch" / "thermo.ino").write_text(head + body + 'void loop() { RPC.bind("health", health); }\n')
    report = lint_report(capsys, app)
    assert [(f["rule"], f["path"], f["line"]) for f in report] == [
        ("X8121", str(app / "sketch" / "thermo.ino"), 6)]
    assert "never ends on an X8's M4" in str(report[0]["message"])
    assert "remove the wait" in str(report[0]["message"])


def test_serial_without_serialrpc_h_is_a_finding_with_its_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = sketch_app(tmp_path)
    (app / "sketch" / "thermo.ino").write_text(
        '#include <RPC.h>\n// Serial.println("in a comment");\nint health() { return 1; }\n'
        'void setup() {\n  RPC.begin();\n  RPC.bind("health", health);\n}\n'
        'void loop() {\n  Serial.println("hello");\n}\n')
    report = lint_report(capsys, app)
    assert [(f["rule"], f["line"]) for f in report] == [("X8122", 9)]
    assert "#include <RPC.h> and #include <SerialRPC.h>" in str(report[0]["message"])


def test_commented_waits_strings_and_includes_in_another_ino_file_are_fine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # arduino-cli joins a sketch's .ino files: SerialRPC.h included in one covers them all.
    app = sketch_app(tmp_path)
    (app / "sketch" / "helpers.ino").write_text('#include "SerialRPC.h"\n')
    (app / "sketch" / "thermo.ino").write_text(
        '#include <RPC.h>\nint health() { return 1; }\nvoid setup() {\n  Serial.begin(115200);\n'
        '  //while (!Serial) {}\n  /* while (!Serial) {}\n  */\n  Serial.println("while (!Serial) {}");\n'
        '  RPC.bind("health", health);\n}\nvoid loop() {}\n')
    assert lint_report(capsys, app) == []
