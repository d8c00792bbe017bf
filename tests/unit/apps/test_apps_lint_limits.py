"""x8-apps lint against hostile compose files (issue 11 item 12).

Alias bombs, deep nesting, huge files and port ranges times huge port lists are refused by
counted limits (exit 2, one X8003 finding) instead of eating memory and minutes; Python tags
are an X8004 finding. Nothing here measures time: each case asserts on the limits' counters
or on a bound that only the limits can keep.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.hostile import BOMB_SERVICES, alias_bomb
from x8manager.apps.cli import main
from x8manager.apps.lint import MAX_FILE_BYTES
from x8manager.apps.rules import MAX_PROCEDURE_PORTS
from x8manager.apps.yamlsource import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_VALUES,
    YamlLimitError,
    YamlTagError,
    load_compose_text,
)

HEADER = BOMB_SERVICES


def lint(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
         ) -> tuple[int, list[dict[str, object]]]:
    compose = tmp_path / "compose.yaml"
    compose.write_text(text)
    code = main(["lint", "--format", "json", str(compose)])
    return code, json.loads(capsys.readouterr().out)["findings"]


def test_alias_bomb_is_refused_after_a_bounded_number_of_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(YamlLimitError, match="alias"):
        load_compose_text(alias_bomb(7))  # 9**8 values once expanded
    code, findings = lint(tmp_path, capsys, alias_bomb(7))
    assert code == 2
    assert [(f["rule"], f["name"]) for f in findings] == [("X8003", "input-limit")]
    assert "alias" in str(findings[0]["message"])


def test_merge_key_bomb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["x-m0: &m0 {a: 1, b: 2, c: 3, d: 4}"]
    for level in range(1, 12):
        lines.append(f"x-m{level}: &m{level} {{k{level}: [*m{level - 1}, *m{level - 1}, *m{level - 1}], "
                     f"<<: [*m{level - 1}, *m{level - 1}]}}")
    code, findings = lint(tmp_path, capsys, "\n".join(lines) + "\n" + HEADER)
    assert code == 2
    assert findings[0]["rule"] == "X8003"


def test_aliases_within_the_budget_still_work() -> None:
    source = load_compose_text(alias_bomb(3))  # 9**4 = 6,561 values
    assert source.values_built < MAX_VALUES
    assert source.document["x-a3"][0][0][0] == ["lol"] * 9


@pytest.mark.parametrize("style", ["block", "flow"])
def test_deep_nesting_is_a_finding_not_a_recursion_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], style: str) -> None:
    text = ("[" * 5000 + "]" * 5000 if style == "flow"
            else "".join("  " * level + "-\n" for level in range(200)) + "  " * 200 + "x\n")
    code, findings = lint(tmp_path, capsys, text)
    assert code == 2
    assert findings[0]["rule"] == "X8003"
    assert f"deeper than {MAX_DEPTH}" in str(findings[0]["message"])


def test_nesting_through_aliases_is_bounded() -> None:
    lines = ["x-0: &n0 " + "[" * 30 + "]" * 30]
    lines += [f"x-{i}: &n{i} " + "[" * 30 + f"*n{i - 1}" + "]" * 30 for i in range(1, 4)]
    with pytest.raises(YamlLimitError, match="through YAML aliases"):
        load_compose_text("\n".join(lines) + "\n")


def test_a_file_past_the_size_limit_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 50 MB took 52 s and 1 GB; the limit means only MAX_FILE_BYTES + 1 bytes are ever read.
    compose = tmp_path / "compose.yaml"
    with compose.open("w") as file:
        file.write(HEADER)
        file.truncate(50 * 1024 * 1024)
    code = main(["lint", "--format", "json", str(compose)])
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert code == 2
    assert findings[0]["rule"] == "X8003"
    assert f"{MAX_FILE_BYTES // 1024} KiB" in str(findings[0]["message"])


def test_too_many_nodes_under_the_size_limit_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = HEADER + "    labels: [" + ", ".join("x" for _ in range(MAX_NODES)) + "]\n"
    assert len(text) < MAX_FILE_BYTES
    code, findings = lint(tmp_path, capsys, text)
    assert code == 2
    assert "YAML nodes" in str(findings[0]["message"])


def test_port_range_times_a_huge_port_list_is_bounded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ports = ",".join(str(5002 + i) for i in range(20_000))
    text = (HEADER + '    ports: ["1-65535:1-65535"]\n    extra_hosts: ["m4-proxy:host-gateway"]\n'
            f"    environment:\n      RPC_SERVICE_PORTS: \"{ports}\"\n")
    code, findings = lint(tmp_path, capsys, text)
    assert code == 2
    limits = [f for f in findings if f["rule"] == "X8003"]
    assert len(limits) == 1
    assert f"more than {MAX_PROCEDURE_PORTS} ports" in str(limits[0]["message"])


def test_many_ranges_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = HEADER + "    ports:\n" + "".join(f'      - "{1 + i}-{60000 + i}:{1 + i}-{60000 + i}"\n'
                                             for i in range(50))
    code, findings = lint(tmp_path, capsys, text)
    assert code == 2
    assert ["port mappings" in str(f["message"]) for f in findings if f["rule"] == "X8003"] == [True]


def test_a_port_range_with_a_normal_port_list_is_still_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (HEADER + '    ports: ["6000-6100:6000-6100"]\n    extra_hosts: ["m4-proxy:host-gateway"]\n'
            '    environment:\n      RPC_SERVICE_PORTS: "6001,6050,7000"\n')
    code, findings = lint(tmp_path, capsys, text)
    assert code == 1
    assert [("7000" in str(f["message"])) for f in findings if f["rule"] == "X8103"] == [True]
    assert "X8003" not in [f["rule"] for f in findings]


@pytest.mark.parametrize("value", [
    "!!python/object/apply:os.system [\"touch /tmp/pwned\"]",
    "!!python/name:os.system",
    "!!python/object/new:subprocess.Popen {args: [id]}",
])
def test_python_tags_are_a_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(YamlTagError, match="Python object"):
        load_compose_text(HEADER + f"    command: {value}\n")
    code, findings = lint(tmp_path, capsys, HEADER + f"    command: {value}\n")
    assert code == 1
    assert [(f["rule"], f["name"], f["line"]) for f in findings] == [("X8004", "yaml-tag", 5)]
    assert not (Path("/tmp/pwned")).exists()


def test_an_unknown_tag_on_a_list_is_not_silently_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, findings = lint(tmp_path, capsys, HEADER + "    command: !mystery [a, b]\n")
    assert code == 1
    assert findings[0]["rule"] == "X8004"


def test_compose_reset_and_override_tags_are_read() -> None:
    source = load_compose_text(HEADER + "    ports: !reset []\n    volumes: !override [a:/a]\n")
    assert source.document["services"]["app"]["volumes"] == ["a:/a"]
