"""x8-apps lint and the router socket: an app folder whose code uses arduino-router-bridge must
mount m4-proxy's router socket where the Bridge looks for it (X8113), and a socket mount must
connect the host's router socket to the Bridge's default path (X8114)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from x8manager.apps.cli import main
from x8manager.apps.rules import ROUTER_SOCKET

BRIDGE_CODE = "from arduino.router_bridge import Bridge\n\nBridge().connect()\n"
SERVICE = (
    "services:\n"
    "  app:\n"
    "    image: hub.foundries.io/${{FACTORY}}/app:latest\n"
    "    restart: unless-stopped\n"
    "    read_only: true\n"
    "{volumes}"
)


def app_folder(root: Path, *, code: str, volumes: list[str]) -> Path:
    folder = root / "app"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM python:3.11-slim\nCOPY main.py /app/main.py\n")
    (folder / "main.py").write_text(code)
    listed = "".join(f'      - "{volume}"\n' for volume in volumes)
    block = f"    volumes:\n{listed}" if volumes else ""
    (folder / "docker-compose.yml").write_text(SERVICE.format(volumes=block))
    return folder


def findings(capsys: pytest.CaptureFixture[str], folder: Path) -> tuple[int, list[tuple[object, ...]]]:
    code = main(["lint", "--format", "json", str(folder)])
    found = json.loads(capsys.readouterr().out)["findings"]
    return code, [(f["rule"], f["line"], f["service"]) for f in found]


def test_bridge_app_with_the_socket_mounted_is_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mounts = [f"{ROUTER_SOCKET}:{ROUTER_SOCKET}", "/tmp:/tmp"]
    folder = app_folder(tmp_path, code=BRIDGE_CODE, volumes=mounts)
    assert findings(capsys, folder) == (0, [])


def test_bridge_app_without_the_socket_is_a_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = app_folder(tmp_path, code=BRIDGE_CODE, volumes=["/tmp:/tmp"])
    code, found = findings(capsys, folder)
    assert (code, found) == (1, [("X8113", 2, "app")])


def test_the_bridge_named_only_in_a_requirements_file_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = app_folder(tmp_path, code="print('hello')\n", volumes=[])
    (folder / "requirements.txt").write_text("arduino-router-bridge==0.5.1\n")
    assert findings(capsys, folder)[1] == [("X8113", 2, "app")]


def test_a_vendored_copy_alone_is_no_use_of_the_bridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = app_folder(tmp_path, code="print('legacy app')\n", volumes=[])
    vendored = folder / "vendor" / "arduino" / "router_bridge"
    vendored.mkdir(parents=True)
    (vendored / "__init__.py").write_text('"""arduino.router_bridge"""\n')
    assert findings(capsys, folder) == (0, [])


@pytest.mark.parametrize(
    ("volume", "rules"),
    [
        # The host's socket, but not where the Bridge looks.
        (f"{ROUTER_SOCKET}:/sockets/router.sock", ["X8114"]),
        # The Bridge's path, but another host file: and the router socket is still not mounted.
        ("/tmp/other.sock:/var/run/arduino-router.sock", ["X8113", "X8114"]),
    ],
)
def test_the_socket_mounted_elsewhere_is_a_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], volume: str, rules: list[str]
) -> None:
    folder = app_folder(tmp_path, code=BRIDGE_CODE, volumes=[volume])
    code, found = findings(capsys, folder)
    assert code == 1
    assert sorted(str(rule) for rule, _, _ in found) == rules


def test_on_a_device_without_a_dockerfile_only_the_mount_itself_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = app_folder(tmp_path, code=BRIDGE_CODE, volumes=["/run/arduino-router.sock:/run/x.sock"])
    (folder / "Dockerfile").unlink()
    assert findings(capsys, folder)[1] == [("X8114", 7, "app")]
