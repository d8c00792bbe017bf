"""x8-apps lint: YAML with lines, the Compose specification, each X8 rule, output and exit codes."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from x8manager.apps import schema
from x8manager.apps.cli import main
from x8manager.apps.lint import lint_text
from x8manager.apps.schema import compose_schema

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "compose"
BROKEN = FIXTURES / "broken"
ARDUINO = FIXTURES / "arduino-style"


def run_json(capsys: pytest.CaptureFixture[str], *paths: Path | str, extra: tuple[str, ...] = ()
             ) -> tuple[int, list[dict[str, object]]]:
    code = main(["lint", "--format", "json", *extra, *map(str, paths)])
    out = capsys.readouterr().out
    return code, json.loads(out)["findings"]


def places(findings: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(f["rule"], f["line"], f["service"]) for f in findings]


def test_arduino_style_apps_that_follow_the_rules_are_clean(capsys: pytest.CaptureFixture[str]) -> None:
    for app in ("rpc-multiply", "sensor-reader", "serial-bridge", "weather-station"):
        code, findings = run_json(capsys, ARDUINO / app)
        assert (code, findings) == (0, []), app


def test_containers_git_root_checks_every_app_folder(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["lint", str(ARDUINO)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[-1] == "6 compose files checked: 2 error(s), 1 warning(s), 0 note(s)"


def test_legacy_fixed_proxy_address_is_a_warning_on_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, findings = run_json(capsys, ARDUINO / "legacy-rpc" / "docker-compose.yml")
    assert code == 1
    assert places(findings) == [("X8102", 15, "legacy-rpc")]
    assert findings[0]["severity"] == "warning"
    assert "host-gateway" in str(findings[0]["message"])


def test_containerised_proxy_conflicts_with_the_host_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    code, findings = run_json(capsys, ARDUINO / "containerised-proxy")
    assert code == 1
    assert places(findings) == [("X8105", 13, "containerised-proxy"), ("X8106", 16, "containerised-proxy")]
    assert "5000 and 5001" in str(findings[1]["message"])


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("bad-indent.yml", [("X8000", 7, None)]),
        ("duplicate-key.yml", [("X8001", 6, None)]),
        ("schema-errors.yml", [("X8002", 6, None), ("X8002", 10, None), ("X8002", 11, None)]),
        ("proxy-wiring-missing.yml", [("X8101", 7, "app")]),
        ("proxy-legacy-env.yml", [("X8102", 7, "app")]),
        ("procedure-ports.yml", [("X8103", 8, "unpublished"), ("X8104", 17, "other-number"),
                                 ("X8104", 25, "udp"), ("X8104", 34, "wrong-address")]),
        ("proxy-conflicts.yml", [("X8105", 7, "app"), ("X8105", 9, "app"), ("X8106", 11, "app"),
                                 ("X8106", 12, "app")]),
        ("image-missing.yml", [("X8107", 2, "built-only"), ("X8107", 6, "neither")]),
        ("devices.yml", [("X8108", 8, "app"), ("X8108", 9, "app"), ("X8108", 11, "app"),
                         ("X8108", 14, "app")]),
        ("privileges.yml", [("X8109", line, "app") for line in (6, 8, 9, 12, 13, 15, 16)]),
        ("restart-missing.yml", [("X8110", 2, "no-policy"), ("X8111", 5, "policy-no"),
                                 ("X8110", 7, "policy-no")]),
    ],
)
def test_each_broken_file_reports_its_rule_on_its_line(
    capsys: pytest.CaptureFixture[str], fixture: str, expected: list[tuple[object, object, object]]
) -> None:
    code, findings = run_json(capsys, BROKEN / fixture)
    assert code == 1
    assert places(findings) == expected
    assert all(f["path"] == str(BROKEN / fixture) for f in findings)


def test_messages_explain_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    _, findings = run_json(capsys, BROKEN / "schema-errors.yml")
    messages = [str(f["message"]) for f in findings]
    assert messages == [
        "services/app: unknown key 'extra_host' (not in the Compose specification)",
        "services/app/ports/0: unknown key 'publish' (not in the Compose specification)",
        "services/app/devices: '/dev/ttyGS0' is not of type 'array'",
    ]
    _, findings = run_json(capsys, BROKEN / "devices.yml")
    assert "/dev/ttyAMA0 does not exist on the Portenta X8" in str(findings[0]["message"])
    assert "/dev/ttymxc0..3" in str(findings[0]["message"])
    _, findings = run_json(capsys, BROKEN / "procedure-ports.yml")
    assert 'add ports: ["5005:5005"]' in str(findings[0]["message"])


def test_human_output_is_path_line_severity_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(BROKEN / "duplicate-key.yml")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{BROKEN / 'duplicate-key.yml'}:6: error X8001 duplicate-key: key 'image' appears again "
        "(first on line 3)",
        "1 compose file checked: 1 error(s), 0 warning(s), 0 note(s)",
    ]


def test_notes_alone_do_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  app:\n    image: hub.foundries.io/${FACTORY}/app:latest\n"
                       "    restart: unless-stopped\n")
    code, findings = run_json(capsys, compose)
    assert code == 0
    assert places(findings) == [("X8111", 2, "app")]


def test_ignore_skips_rules_by_id_or_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, findings = run_json(capsys, BROKEN / "restart-missing.yml",
                              extra=("--ignore", "X8110", "--ignore", "root-writable"))
    assert (code, findings) == (0, [])
    assert main(["lint", "--ignore", "X9999", str(BROKEN)]) == 2
    assert "unknown rule X9999" in capsys.readouterr().err


def test_missing_path_is_exit_2_and_other_paths_are_still_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["lint", "--format", "json", str(tmp_path / "nope"), str(ARDUINO / "rpc-multiply")])
    captured = capsys.readouterr()
    assert code == 2
    assert f"{tmp_path / 'nope'}: no such file or directory" in captured.err
    assert json.loads(captured.out)["files"] == [str(ARDUINO / "rpc-multiply" / "docker-compose.yml")]


def test_folder_without_compose_files_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty-app").mkdir()
    assert main(["lint", str(tmp_path)]) == 2
    assert "no compose file" in capsys.readouterr().err


def test_unreadable_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "docker-compose.yml"
    target.symlink_to(tmp_path / "missing-target")
    assert main(["lint", str(tmp_path / "docker-compose.yml")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_usage_errors_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["lint"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["lint", "--format", "xml", "x"])
    assert exit_info.value.code == 2


def test_missing_schema_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--schema", str(tmp_path / "none.json"), str(ARDUINO)]) == 2
    assert "cannot read the Compose schema" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "rule", "line"),
    [
        ("", "X8002", 1),
        ("services:\n  a: [1\n", "X8000", 3),
        ("a: b\n---\nc: d\n", "X8000", 3),
        ("services:\n  app: !!python/object:os.system x\n", "X8004", 2),
        ("services:\n\tapp: {}\n", "X8000", 2),
        ("- just\n- a list\n", "X8002", 1),
    ],
)
def test_odd_inputs_get_a_finding_with_a_line(text: str, rule: str, line: int) -> None:
    findings = lint_text(text, "x.yml", compose_schema())
    assert [(f.rule, f.line) for f in findings] == [(rule, line)]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("services:\n  1:\n    image: x\n", 2,
         "services: key 1 is read as a number, not a string; quote it ('1')"),
        ("services:\n  app:\n    image: x\n    labels:\n      yes: 1\n", 5,
         "services/app/labels: key true is read as a boolean, not a string; quote it ('true')"),
        ("services:\n  app:\n    image: x\n~: 1\n", 4,
         "(top level): key null is read as null, not a string; quote it ('null')"),
    ],
)
def test_keys_yaml_reads_as_numbers_booleans_or_null_are_findings(text: str, line: int, message: str) -> None:
    # docker compose refuses them ("service name 1 needs to be a string"); JSON schema validators
    # cannot match them against patternProperties at all (that was a crash).
    findings = lint_text(text, "x.yml", compose_schema())
    assert (line, message) in [(f.line, f.message) for f in findings if f.rule == "X8002"]


def test_non_utf8_file_is_a_yaml_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_bytes(b"services:\n  app:\n    image: \xff\n")
    code, findings = run_json(capsys, compose)
    assert code == 1
    assert places(findings) == [("X8000", 3, None)]


def test_anchors_and_merge_keys_are_understood(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        "x-common: &common\n"
        "  restart: unless-stopped\n"
        "  read_only: true\n"
        "  extra_hosts: [\"m4-proxy:host-gateway\"]\n"
        "services:\n"
        "  one:\n"
        "    <<: *common\n"
        "    image: hub.foundries.io/${FACTORY}/one:latest\n"
        "  two:\n"
        "    <<: *common\n"
        "    environment: [RPC_SERVICE_PORT=5010]\n"
        "    image: hub.foundries.io/${FACTORY}/two:latest\n"
    )
    code, findings = run_json(capsys, tmp_path)
    assert code == 1
    assert places(findings) == [("X8103", 11, "two")]


def test_rules_command_lists_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    for rule in ("X8000", "X8101", "X8111"):
        assert rule in out


def test_factory_image_must_be_built_by_a_containers_git_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = ("services:\n  {name}:\n    image: hub.foundries.io/${{FACTORY}}/{image}:latest\n"
               "    restart: unless-stopped\n    read_only: true\n")
    for name, image in (("api", "api"), ("worker", "api"), ("typo", "tpyo")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text("FROM scratch\n")
        (tmp_path / name / "docker-compose.yml").write_text(service.format(name=name, image=image))
    code, findings = run_json(capsys, tmp_path)
    assert code == 1
    assert places(findings) == [("X8112", 3, "typo")]
    assert "no folder tpyo/ with a Dockerfile" in str(findings[0]["message"])
    # On a device (/var/sota/compose-apps) app folders hold no Dockerfile: the rule stays quiet.
    (tmp_path / "typo" / "Dockerfile").unlink()
    assert run_json(capsys, tmp_path / "typo") == (0, [])


def test_without_check_jsonschema_the_system_copy_or_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(schema.metadata, "distribution", not_installed)
    missing = tmp_path / "compose-spec.json"
    with pytest.raises(schema.SchemaUnavailable, match="pip install check-jsonschema"):
        schema._packaged_schema_path(missing)
    missing.write_text("{}")
    assert schema._packaged_schema_path(missing) == missing


def test_proxy_named_in_the_command_line_needs_the_wiring_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  app:\n    image: hub.foundries.io/${FACTORY}/app:latest\n"
                       "    restart: unless-stopped\n    read_only: true\n"
                       "    command: [\"python3\", \"main.py\", \"--proxy\", \"m4-proxy\"]\n")
    code, findings = run_json(capsys, compose)
    assert code == 1
    assert places(findings) == [("X8101", 6, "app")]


@pytest.mark.parametrize(("device", "rule"), [("/dev/i2c-1\n", "X8108"), ("/dev/ttyAMA0\n", "X8108")])
def test_values_with_a_trailing_newline_do_not_pass_for_whole_matches(device: str, rule: str) -> None:
    # "$" matches before a final newline; the device patterns are matched whole (fullmatch).
    text = ("services:\n  app:\n    image: nginx\n    restart: always\n    read_only: true\n"
            f"    devices:\n      - {json.dumps(device)}\n")
    findings = lint_text(text, "x.yml", compose_schema())
    assert [(f.rule, "not a device of the Portenta X8" in f.message) for f in findings] == [(rule, True)]
