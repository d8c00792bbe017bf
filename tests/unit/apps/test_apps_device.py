"""x8-apps list/status/start/stop/logs: app discovery, aktualizr-lite ownership, no-engine path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from x8manager.apps.cli import main
from x8manager.apps.device import (
    DockerUnavailable,
    discover_apps,
    find_compose_tool,
    parse_compose_ps,
    read_sota_config,
)

COMPOSE = "services:\n  {name}:\n    image: hub.foundries.io/${{FACTORY}}/{name}:latest\n"


def make_apps(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "docker-compose.yml").write_text(COMPOSE.format(name=name))
    return root


@pytest.fixture
def device(tmp_path: Path) -> dict[str, Path]:
    apps = make_apps(tmp_path / "compose-apps", "shellhttpd", "m4-service")
    (apps / "not-an-app").mkdir()
    dev = make_apps(tmp_path / "dev-apps", "my-experiment")
    return {"apps": apps, "dev": dev, "sota": tmp_path / "sota" / "sota.toml", "tmp": tmp_path}


def args(device: dict[str, Path], *extra: str) -> list[str]:
    return ["--apps-root", str(device["apps"]), "--dev-root", str(device["dev"]),
            "--sota-toml", str(device["sota"]), "--docker", str(device["tmp"] / "no-docker-here"), *extra]


def test_sota_config_not_registered_manages_nothing(tmp_path: Path) -> None:
    config = read_sota_config(tmp_path / "sota.toml", ())
    assert not config.registered
    assert not config.manages("anything")


def test_sota_config_without_an_app_list_manages_every_app(tmp_path: Path) -> None:
    sota = tmp_path / "sota.toml"
    sota.write_text('[pacman]\ntype = "ostree+compose_apps"\n')
    config = read_sota_config(sota, ())
    assert config.registered and config.manages("any-app")


def test_sota_config_app_list_and_conf_d_override(tmp_path: Path) -> None:
    sota = tmp_path / "sota.toml"
    sota.write_text('[pacman]\ncompose_apps = "shellhttpd"\ncompose_apps_root = "/var/sota/compose-apps"\n')
    early, late = tmp_path / "usr-conf.d", tmp_path / "etc-conf.d"
    early.mkdir()
    late.mkdir()
    (early / "10-defaults.toml").write_text('[pacman]\ncompose_apps = "ignored"\n')
    (late / "z-50-fioctl-01.toml").write_text('[pacman]\ncompose_apps = "shellhttpd, m4-service"\n')
    config = read_sota_config(sota, (early, late))
    assert config.compose_apps == {"shellhttpd", "m4-service"}
    assert config.apps_root == Path("/var/sota/compose-apps")
    assert config.sources == (str(early / "10-defaults.toml"), str(sota), str(late / "z-50-fioctl-01.toml"))


def test_unreadable_sota_config_is_skipped_with_a_message(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    sota = tmp_path / "sota.toml"
    sota.write_text("[pacman\n")
    config = read_sota_config(sota, ())
    assert config.registered and config.compose_apps is None
    assert "ignoring unreadable aktualizr-lite config" in capsys.readouterr().err


def test_discovery_marks_managed_apps_only_in_the_apps_root(device: dict[str, Path]) -> None:
    device["sota"].parent.mkdir()
    device["sota"].write_text('[pacman]\ncompose_apps = "shellhttpd,my-experiment"\n')
    apps = discover_apps(device["apps"], device["dev"], read_sota_config(device["sota"], ()))
    assert [(a.name, a.in_apps_root, a.managed) for a in apps] == [
        ("m4-service", True, False), ("shellhttpd", True, True), ("my-experiment", False, False)]


def test_missing_docker_cli_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DockerUnavailable, match=r"docker CLI .* not installed or not on PATH"):
        find_compose_tool(str(tmp_path / "no-docker"))


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI (not the engine)")
def test_docker_cli_without_an_engine_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(DockerUnavailable, match=r"no Docker engine is reachable .*systemctl start docker"):
        find_compose_tool("docker")


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI (not the engine)")
@pytest.mark.parametrize("compose", ["plugin", "standalone", "auto"])
def test_compose_choice_is_checked_after_the_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    compose: str) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(DockerUnavailable, match=r"no Docker engine is reachable"):
        find_compose_tool("docker", compose)


def test_unknown_compose_choice_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DockerUnavailable, match=r"unknown compose choice 'v3' .*plugin, standalone"):
        find_compose_tool("docker", "v3")


def test_compose_flag_takes_only_known_choices(device: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["list", *args(device), "--compose", "v3"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'v3'" in capsys.readouterr().err


def test_unknown_compose_choice_from_the_environment_is_a_usage_error(
        device: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("X8_APPS_COMPOSE", "v3")
    with pytest.raises(SystemExit) as exit_info:
        main(["list", *args(device)])
    assert exit_info.value.code == 2
    assert "$X8_APPS_COMPOSE='v3': use one of auto, plugin, standalone" in capsys.readouterr().err


def test_list_without_docker_shows_the_apps_and_exits_3(device: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", *args(device), "--format", "json"]) == 3
    captured = capsys.readouterr()
    assert "not installed or not on PATH" in captured.err
    listing = json.loads(captured.out)
    assert listing["aktualizr_lite"] is False
    assert [(a["name"], a["root"], a["state"]) for a in listing["apps"]] == [
        ("m4-service", "apps", "unknown (no Docker engine)"),
        ("shellhttpd", "apps", "unknown (no Docker engine)"),
        ("my-experiment", "dev", "unknown (no Docker engine)"),
    ]


@pytest.mark.parametrize("command", [["status"], ["start", "m4-service"], ["stop", "my-experiment"],
                                     ["logs", "shellhttpd"]])
def test_device_commands_without_docker_exit_3(device: dict[str, Path], command: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, *args(device)]) == 3
    err = capsys.readouterr().err
    assert f"x8-apps {command[0]}: the docker CLI" in err


@pytest.mark.parametrize("command", [["status", "nope"], ["start", "nope"], ["logs", "nope"]])
def test_unknown_app_is_a_usage_error(device: dict[str, Path], command: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, *args(device)]) == 2
    err = capsys.readouterr().err
    assert "no app nope in" in err
    assert "apps there: m4-service, my-experiment, shellhttpd" in err


def test_managed_app_is_left_to_aktualizr_lite_unless_forced(device: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    device["sota"].parent.mkdir()
    device["sota"].write_text("[pacman]\n")
    assert main(["stop", "shellhttpd", *args(device)]) == 4
    assert "managed by aktualizr-lite" in capsys.readouterr().err
    # Forced, it goes on to docker (absent here).
    assert main(["stop", "shellhttpd", "--force", *args(device)]) == 3
    # Apps in the development root are never aktualizr-lite's.
    assert main(["start", "my-experiment", *args(device)]) == 3


@pytest.mark.parametrize("argv", [["start"], ["stop"], ["logs"], ["list", "extra"],
                                  ["logs", "a", "b", "c"], ["bogus"]])
def test_argument_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_missing_roots_have_no_apps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["list", "--apps-root", str(tmp_path / "none"), "--sota-toml", str(tmp_path / "sota.toml"),
                 "--docker", str(tmp_path / "no-docker")])
    assert code == 3
    assert f"no apps in {tmp_path / 'none'}" in capsys.readouterr().out


def test_compose_ps_json_in_both_formats() -> None:
    array = '[{"Name": "a-web-1", "State": "running"}, {"Name": "a-db-1", "State": "exited"}]'
    lines = '{"Name": "a-web-1", "State": "running"}\n{"Name": "a-db-1", "State": "exited"}\n'
    assert parse_compose_ps(array) == parse_compose_ps(lines) == [
        {"Name": "a-web-1", "State": "running"}, {"Name": "a-db-1", "State": "exited"}]
    assert parse_compose_ps("") == []


def test_dev_app_with_the_name_of_an_installed_app_is_ignored(
    device: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    make_apps(device["dev"], "shellhttpd")
    apps = discover_apps(device["apps"], device["dev"], read_sota_config(device["sota"], ()))
    assert [(a.name, a.in_apps_root) for a in apps] == [
        ("m4-service", True), ("shellhttpd", True), ("my-experiment", False)]
    assert "same name" in capsys.readouterr().err
