"""x8 apps push, the local half: which images a Factory would build from the folder, resolved with
FACTORY as compose resolves it, and clear errors for folders that cannot be pushed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.hostile import alias_bomb
from x8manager.host.apps_push import AppError, factory_images, interpolate, plan_push


@pytest.mark.parametrize(("text", "expected"), [
    ("hub.foundries.io/${FACTORY}/app:latest", "hub.foundries.io/acme/app:latest"),
    ("hub.foundries.io/$FACTORY/app", "hub.foundries.io/acme/app"),
    ("${REGISTRY:-hub.foundries.io}/${FACTORY}/a", "hub.foundries.io/acme/a"),
    ("${REGISTRY-x}/a", "x/a"),
    ("cost: $$5", "cost: $5"),
    ("${UNSET}/a", "/a"),
])
def test_interpolation_as_compose_does_it(text: str, expected: str) -> None:
    assert interpolate(text, {"FACTORY": "acme"}) == expected


def test_only_the_factory_s_images_are_built_here() -> None:
    compose = {"services": {
        "app": {"image": "hub.foundries.io/${FACTORY}/app:latest"},
        "sidecar": {"image": "hub.foundries.io/${FACTORY}/app:latest"},
        "redis": {"image": "redis:7"},
    }}
    assert factory_images(compose, {"FACTORY": "local"}) == ["hub.foundries.io/local/app:latest"]


def test_a_scaffold_like_app_plans_one_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACTORY", raising=False)
    app = tmp_path / "blinky"
    app.mkdir()
    (app / "docker-compose.yml").write_text(
        "services:\n  blinky:\n    image: hub.foundries.io/${FACTORY}/blinky:latest\n")
    (app / "Dockerfile").write_text("FROM scratch\n")
    plan = plan_push(app)
    assert (plan.name, plan.factory) == ("blinky", "local")
    assert plan.images == ["hub.foundries.io/local/blinky:latest"]
    assert plan_push(app, "acme").images == ["hub.foundries.io/acme/blinky:latest"]


@pytest.mark.parametrize(("files", "complaint"), [
    ({}, "has no compose file"),
    ({"docker-compose.yml": "- a list\n"}, "not a compose file"),
    ({"docker-compose.yml": "services: [\n"}, "docker-compose.yml"),
    ({"docker-compose.yml": "version: '3'\n"}, "has no services"),
    ({"docker-compose.yml": "services:\n  a:\n    image: hub.foundries.io/${FACTORY}/a\n"}, "no Dockerfile"),
])
def test_folders_that_cannot_be_pushed(tmp_path: Path, files: dict[str, str], complaint: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(AppError, match=complaint):
        plan_push(tmp_path)


def test_a_file_is_not_an_app(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(AppError, match="is not a folder"):
        plan_push(tmp_path / "x")


def test_an_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(alias_bomb(7))
    with pytest.raises(AppError, match=r"docker-compose.yml:\d+: .*alias"):
        plan_push(tmp_path)


def test_a_compose_file_past_the_size_limit_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("# padding\n" * 30_000 + "services: {}\n")
    with pytest.raises(AppError, match="larger than 256 KiB"):
        plan_push(tmp_path)
