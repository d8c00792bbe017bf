"""The client side of the flasher's request socket, and the sketch sidecar of compose apps.

Standard library only: ``x8-apps new --template m4-sketch`` copies this file into the app's
``vendor/`` so the sidecar runs in the app's own image. The protocol is in
:mod:`x8manager.flasher.request` (the daemon side) and docs/architecture.md.

As a sidecar (``python3 -m x8manager.flasher.client``) it reads its settings from the environment
the app's compose file gives it, hands the sketch to the host's flasher and exits 0 only when the
sketch is flashed and healthy (or already running), so the app's M4-facing service can wait for
it with ``depends_on: {NAME-sketch: {condition: service_completed_successfully}}``:

  X8_SKETCH                  the ELF in the image (required)
  X8_APP                     the app's name, recorded with the flash (``x8-apps status`` shows it)
  X8_SKETCH_HEALTH_METHOD    after the flash, this method must answer
  X8_SKETCH_HEALTH_BOUND     comma-separated methods the sketch must bind
  X8_SKETCH_HEALTH_TIMEOUT   seconds for the health check (default 10)
  X8_SKETCH_HEALTH_PROXY     the proxy's call port as the host's flasher reaches it (127.0.0.1:5001)
  X8_SKETCH_IF_CHANGED       1 (default): no chip write when the M4 already runs this sketch
  X8_FLASHER_SOCKET          the daemon's socket (default /run/m4-flasher/request.sock)
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "APP_ORIGIN_PREFIX",
    "DEFAULT_SOCKET",
    "MAX_SKETCH_BYTES",
    "RequestError",
    "main",
    "read_sketch",
    "send_request",
]

DEFAULT_SOCKET = Path("/run/m4-flasher/request.sock")
MAX_SKETCH_BYTES = 32 * 1024 * 1024  # the flasher's own limit for a sketch file
# A flash an app's sidecar asked for is recorded with origin "app NAME: PATH".
APP_ORIGIN_PREFIX = "app "
# Exit codes, the same as `m4-flasher flash --wait`.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
_OK_RESULTS = ("success", "unchanged")


class RequestError(Exception):
    """The request could not be made or its outcome is unknown (the message says which)."""


def read_sketch(path: Path) -> bytes:
    """The sketch's bytes, read with the caller's rights; a symlink, FIFO or device is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as error:
        raise RequestError(f"cannot read {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RequestError(f"{path} is not a regular file")
        data = handle.read(MAX_SKETCH_BYTES + 1)
        if max(info.st_size, len(data)) > MAX_SKETCH_BYTES:
            raise RequestError(too_large(path, max(info.st_size, len(data))))
        return data


def too_large(what: object, size: int) -> str:
    return f"{what} is too large: {size} bytes, more than the {MAX_SKETCH_BYTES}-byte limit for a sketch"


def send_request(
    path: Path,
    data: bytes,
    *,
    origin: str,
    if_changed: bool,
    health: Mapping[str, Any] | None,
    progress: Callable[[dict[str, Any]], None],
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send one flash request to the daemon at *path*; return its result event (``progress``
    sees the others). *health*: ``{"method", "bound", "timeout", "host", "port"}`` or None.

    Raises :class:`RequestError` when the daemon cannot be reached or goes away before its result.
    """
    if len(data) > MAX_SKETCH_BYTES:
        # Said here, before anything is sent: the daemon would refuse it after the request line.
        raise RequestError(too_large("the sketch", len(data)))
    header: dict[str, Any] = {"op": "flash", "size": len(data), "origin": origin, "if_changed": if_changed}
    if health is not None:
        header["health"] = dict(health)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
    except OSError as error:
        raise RequestError(f"cannot reach the flasher daemon at {path}: {error.strerror or error}") from None
    with sock, sock.makefile("rb") as replies:
        try:
            try:
                sock.sendall(json.dumps(header).encode() + b"\n")
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The daemon refused the request line and closed: its reason is waiting to be
                # read, and says more than "Broken pipe".
                pass
            for line in replies:
                event = json.loads(line)
                if not isinstance(event, dict):
                    continue
                if event.get("event") == "result":
                    return event
                progress(event)
        except (OSError, ValueError) as error:
            raise RequestError(
                f"the connection to the flasher daemon broke ({error}): the outcome is unknown; "
                "see `m4-flasher status`"
            ) from None
    raise RequestError(
        "the flasher daemon closed the connection before the result (stopped or restarted?): "
        "the outcome is unknown; see `m4-flasher status`"
    )


def _health_from(env: Mapping[str, str]) -> dict[str, Any] | None:
    method = env.get("X8_SKETCH_HEALTH_METHOD", "").strip() or None
    bound = [name.strip() for name in env.get("X8_SKETCH_HEALTH_BOUND", "").split(",") if name.strip()]
    timeout_text = env.get("X8_SKETCH_HEALTH_TIMEOUT", "").strip()
    if not (method or bound or timeout_text):
        return None
    try:
        timeout = float(timeout_text or 10)
    except ValueError:
        raise RequestError(f"X8_SKETCH_HEALTH_TIMEOUT={timeout_text!r} is not a number of seconds") from None
    # The daemon runs the check on the host, where the proxy's call port is on loopback.
    proxy = env.get("X8_SKETCH_HEALTH_PROXY", "").strip() or "127.0.0.1:5001"
    host, _, port_text = proxy.rpartition(":")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RequestError(f"X8_SKETCH_HEALTH_PROXY={proxy!r}: expected HOST:PORT, PORT from 1 to 65535")
    if not host.isprintable() or any(char.isspace() for char in host):
        raise RequestError(f"X8_SKETCH_HEALTH_PROXY={proxy!r}: the host has spaces or control characters")
    return {"method": method, "bound": bound, "timeout": timeout, "host": host, "port": int(port_text)}


def _exit_code(result: str) -> int:
    if result in _OK_RESULTS:
        return EXIT_OK
    return EXIT_REJECTED if result == "rejected" else EXIT_FAILED


def main(environ: Mapping[str, str] | None = None) -> int:
    """The sidecar: flash ``$X8_SKETCH`` through the host's flasher; the exit code is the verdict."""
    env = os.environ if environ is None else environ
    program = "x8-sketch"

    def say(text: str) -> None:
        print(f"{program}: {text}", file=sys.stderr, flush=True)

    sketch = env.get("X8_SKETCH", "").strip()
    if not sketch:
        say("X8_SKETCH is not set: name the sketch ELF in the image (e.g. /app/sketch/app.elf)")
        return EXIT_USAGE
    app = env.get("X8_APP", "").strip() or "unnamed"
    try:
        health = _health_from(env)
        data = read_sketch(Path(sketch))
        result = send_request(
            Path(env.get("X8_FLASHER_SOCKET", "") or DEFAULT_SOCKET),
            data,
            origin=f"{APP_ORIGIN_PREFIX}{app}: {sketch}",
            if_changed=env.get("X8_SKETCH_IF_CHANGED", "1").strip() not in ("0", "no", "false"),
            health=health,
            progress=lambda event: say(f"{event.get('event')}: {event.get('reason') or ''}".rstrip(": ")),
        )
    except RequestError as error:
        say(str(error))
        return EXIT_FAILED
    verdict = str(result.get("result", "error"))
    say(f"{verdict}: {result.get('reason', '')} (sha256 {str(result.get('sha256', ''))[:12]})")
    print(json.dumps(result, sort_keys=True), flush=True)
    return _exit_code(verdict)


if __name__ == "__main__":
    sys.exit(main())
