"""x8-apps new: containers.git layout, Factory image names, proxy wiring, lint-clean output."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.sketches import SKETCH
from x8manager.apps.cli import main
from x8manager.apps.scaffold import (
    BRIDGE_DISTRIBUTION,
    ROUTER_GROUP_GID,
    TEMPLATES,
    ScaffoldError,
    create_app,
)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_template_scaffolds_a_lint_clean_factory_app(
    template: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ships_sketch = TEMPLATES[template].ships_sketch
    sketch = ["--sketch", str(SKETCH)] if ships_sketch else []
    assert main(["new", "demo-app", "--template", template, "--dir", str(tmp_path), *sketch]) == 0
    app = tmp_path / "demo-app"
    assert {p.name for p in app.iterdir()} == {"docker-compose.yml", "Dockerfile", "docker-build.conf",
                                              "main.py", "vendor"} | ({"sketch"} if ships_sketch else set())
    compose = yaml.safe_load((app / "docker-compose.yml").read_text())
    service = compose["services"]["demo-app"]
    assert service["image"] == "hub.foundries.io/${FACTORY}/demo-app:latest"
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True
    assert "/tmp:/tmp" in service["volumes"]
    port = TEMPLATES[template].default_port
    if TEMPLATES[template].library == BRIDGE_DISTRIBUTION:
        # The router socket at the Bridge's default address, and its group.
        assert "/var/run/arduino-router.sock:/var/run/arduino-router.sock" in service["volumes"]
        assert service["group_add"] == [str(ROUTER_GROUP_GID)]
        assert (app / "vendor" / "arduino" / "router_bridge" / "__init__.py").is_file()
        assert list((app / "vendor").glob("LICENSE-arduino-router-bridge-*.txt"))
        assert "from arduino.router_bridge import" in (app / "main.py").read_text()
        assert not (app / "vendor" / "x8manager").exists()
        capsys.readouterr()
        assert main(["lint", str(app)]) == 0, capsys.readouterr().out
        return
    assert service["extra_hosts"] == ["m4-proxy:host-gateway"]
    assert service["environment"]["M4_PROXY_HOST"] == "m4-proxy"
    if port is None:
        assert "ports" not in service
    else:
        assert service["ports"] == [f"{port}:{port}"]
        assert service["environment"]["RPC_SERVICE_PORT"] == str(port)
    ast.parse((app / "main.py").read_text())
    assert (app / "vendor" / "x8manager" / "rpc" / "__init__.py").is_file()
    assert not list(app.rglob("*.tmpl")) and not list(app.rglob("__pycache__"))
    assert "@@" not in "".join(p.read_text() for p in app.rglob("*") if p.is_file() and p.suffix != ".elf")
    capsys.readouterr()
    assert main(["lint", str(app)]) == 0, capsys.readouterr().out


def test_port_and_image_prefix_options(tmp_path: Path) -> None:
    app = create_app("svc", "m4-service", tmp_path, port=5012, image_prefix="registry.example/team/")
    service = yaml.safe_load((app / "docker-compose.yml").read_text())["services"]["svc"]
    assert service["image"] == "registry.example/team/svc:latest"
    assert service["ports"] == ["5012:5012"]
    assert 'os.environ.get("RPC_SERVICE_PORT", "5012")' in (app / "main.py").read_text()


@pytest.mark.parametrize(
    ("name", "template", "port", "message"),
    [
        ("Bad_Name", "m4-service", None, "use lower-case letters"),
        ("a/b", "m4-service", None, "use lower-case letters"),
        ("ok", "m4-client", 5005, "serves no procedures"),
        ("ok", "m4-service", 5001, "m4-proxy's own port"),
        ("ok", "m4-service", 80, "from 1024 to 65535"),
        ("ok", "nope", None, "unknown template"),
    ],
)
def test_bad_requests_are_refused(tmp_path: Path, name: str, template: str, port: int | None,
                                  message: str) -> None:
    with pytest.raises(ScaffoldError, match=message):
        create_app(name, template, tmp_path, port=port)
    assert list(tmp_path.iterdir()) == []


def test_a_name_with_a_trailing_newline_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # The name check's "$" matched before a final newline: "foo\n" made a folder "foo\n".
    assert main(["new", "foo\n", "-t", "m4-service", "--dir", str(tmp_path)]) == 2
    assert "use lower-case letters" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_app_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "main.py").write_text("precious")
    assert main(["new", "mine", "-t", "m4-service", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "mine" / "main.py").read_text() == "precious"


def test_without_template_an_m4_facing_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "x", "--dir", str(tmp_path)]) == 0
    assert "from template m4-service" in capsys.readouterr().out
    service = yaml.safe_load((tmp_path / "x" / "docker-compose.yml").read_text())["services"]["x"]
    port = TEMPLATES["m4-service"].default_port
    assert service["ports"] == [f"{port}:{port}"]
    assert "RpcService" in (tmp_path / "x" / "main.py").read_text()


def test_unknown_template_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["new", "x", "--template", "nope", "--dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert list(tmp_path.iterdir()) == []


def test_scaffolded_code_passes_the_projects_ruff_and_mypy_strict(tmp_path: Path) -> None:
    """Users start from this code: it meets the same bar as ours (ruff config, mypy --strict)."""
    root = Path(__file__).resolve().parents[3]
    bin_dir = Path(sys.executable).parent
    apps = [create_app(f"typed-{name}", name, tmp_path) for name in sorted(TEMPLATES)]
    ruff = subprocess.run([str(bin_dir / "ruff"), "check", "--config", str(root / "pyproject.toml"),
                           *(str(app / "main.py") for app in apps)],
                          capture_output=True, text=True, check=False)
    assert ruff.returncode == 0, ruff.stdout
    for app in apps:
        mypy = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                               "--ignore-missing-imports", "main.py"], cwd=app,
                              env={**os.environ, "MYPYPATH": str(app / "vendor")},
                              capture_output=True, text=True, check=False)
        assert mypy.returncode == 0, f"{app.name}: {mypy.stdout}"
