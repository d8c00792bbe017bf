"""An app using arduino-router-bridge 0.5.1, driven by the tests one JSON line at a time.

Runs in the Bridge venv (tests/bridge/make_venv.py), with the library unchanged. Usage:
``python bridge_driver.py ADDRESS``. Each stdin line is ``{"id": N, "op": ..., ...}``; each
answer is one stdout line ``{"id": N, "ok": value}`` or ``{"id": N, "error": {...}}``.
Handlers the tests can provide (``"kind"``): ``echo`` (returns its arguments), ``add``,
``fail`` (raises RuntimeError), ``record`` (announces each call or notification with an event
line, returns its arguments), ``hang`` (never returns; announces itself with an event line).
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from arduino.router_bridge import Bridge, RpcError

_out = threading.Lock()
_hang = threading.Event()


def emit(message: dict[str, Any]) -> None:
    with _out:
        sys.stdout.write(json.dumps(message, default=repr) + "\n")
        sys.stdout.flush()


def error_of(exc: BaseException) -> dict[str, Any]:
    found: dict[str, Any] = {"type": type(exc).__name__, "text": str(exc)}
    if isinstance(exc, RpcError):
        found.update(code=exc.code, message=exc.message)
    return found


def handler(kind: str, name: str) -> Any:
    if kind == "echo":
        return lambda *args: list(args)
    if kind == "add":
        return lambda a, b: a + b
    if kind == "fail":
        def fail(*args: Any) -> Any:
            raise RuntimeError(f"{name} failed on purpose")
        return fail
    if kind == "record":
        def record(*args: Any) -> Any:
            emit({"event": "called", "name": name, "args": list(args)})
            return list(args)
        return record
    if kind == "hang":
        def hang(*args: Any) -> Any:
            emit({"event": "hanging", "name": name})
            _hang.wait()
        return hang
    raise ValueError(f"unknown handler kind {kind!r}")


def run(bridge: Bridge, request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "connect":
        return bridge.connect(timeout=request.get("timeout", 10))
    if op == "call":
        return bridge.call(request["method"], *request.get("args", []), timeout=request.get("timeout", 10))
    if op == "call_many":
        def one(args: list[Any]) -> Any:
            try:
                return {"ok": bridge.call(request["method"], *args, timeout=request.get("timeout", 10))}
            except Exception as exc:
                return {"error": error_of(exc)}
        with ThreadPoolExecutor(len(request["calls"])) as pool:
            return list(pool.map(one, request["calls"]))
    if op == "notify":
        bridge.notify(request["method"], *request.get("args", []))
        return None
    if op == "provide":
        bridge.provide(request["method"], handler(request["kind"], request["method"]))
        return None
    if op == "unprovide":
        bridge.unprovide(request["method"])
        return None
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    bridge = Bridge(sys.argv[1])
    emit({"event": "started"})
    for line in sys.stdin:
        request = json.loads(line)

        def answer(request: dict[str, Any] = request) -> None:
            try:
                emit({"id": request["id"], "ok": run(bridge, request)})
            except Exception as exc:
                emit({"id": request["id"], "error": error_of(exc)})

        threading.Thread(target=answer, daemon=True).start()  # answers may come out of order
    bridge.disconnect()


if __name__ == "__main__":
    main()
