"""The virtual X8: a booted machine plus the virtual M4 (``m4-sim``) on the host end of its M4 link.

The machine's virtio serial port ``m4`` (the guest's ``/dev/virtio-ports/m4``, standing for
``/dev/x8h7_ui``) is a UNIX socket on the host; ``m4-sim --connect unix:PATH --reconnect`` opens it
and serves its control surface on another UNIX socket, through which the host makes the M4 call
Linux (:meth:`VirtualX8.m4_call`). :meth:`VirtualX8.linux_call` runs ``M4Client`` inside the guest,
so Linux calls a procedure bound on the virtual M4.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from x8manager.m4sim import ControlClient, parse_endpoint

from .machine import Machine, MachineError

__all__ = ["GUEST_HELPER_DIR", "WRITABLE_HELPER_DIR", "VirtualM4Process", "VirtualX8", "poll"]

# Baked into the Debian test image (images/x8-test/overlay); a service using x8manager.rpc.RpcService.
GUEST_HELPER_DIR = "/usr/lib/x8-test"
# Where the tests copy the helpers into an image that lacks them: /usr is read-only on an OSTree LmP
# image, /var is writable and kept.
WRITABLE_HELPER_DIR = "/var/lib/x8-test"
DEMO_SERVICE_UNIT = "x8-demo-service"


def poll(what: str, attempt: Any, timeout: float, interval: float = 0.5) -> Any:
    """Call *attempt* until it returns a value other than None or raises nothing; give up after *timeout*.

    For conditions only the far side knows (a service registered, a unit restarted); the last error
    is in the message.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = attempt()
            if result is not None:
                return result
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s (last error: {last})")
        time.sleep(interval)


class VirtualM4Process:
    """``m4-sim`` as a child process, connected to the machine's M4 socket, with its control client."""

    def __init__(self, m4_socket: Path, control_socket: Path, log: IO[str] | None = None, *,
                 swd_socket: Path | None = None) -> None:
        self.m4_socket = m4_socket
        self.control_socket = control_socket
        argv = [sys.executable, "-m", "x8manager.m4sim.cli", "--connect", f"unix:{m4_socket}",
                "--reconnect", "--control", f"unix:{control_socket}"]
        if swd_socket is not None:
            argv += ["--swd", f"unix:{swd_socket}"]  # a flash in the guest boots the flashed sketch
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._log = log
        # The child's output must be read or it blocks; a thread keeps it flowing into the log.
        self._reader = threading.Thread(target=self._read_output, name="m4-sim-output", daemon=True)
        self._reader.start()
        if not self._ready.wait(30) or self.process.poll() is not None:
            self.stop()
            raise MachineError(f"m4-sim did not start:\n{''.join(self._lines)[-3000:]}")
        self.control = ControlClient(parse_endpoint(f"unix:{control_socket}"), timeout=60)

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)
            if self._log is not None:
                self._log.write(f"[m4-sim] {line}")
                self._log.flush()
            if line.strip() == "ready":
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def call(self, name: str, *args: Any, reply_timeout: float | None = None) -> Any:
        """The M4 calls the Linux procedure *name*: its result, None after an error reply (a sketch
        sees nil), ControlError when no reply came within *reply_timeout* (default: m4-sim's)."""
        if reply_timeout is None:
            return self.control.request("call", name, list(args))
        return self.control.request("call", name, list(args), round(reply_timeout * 1000))

    def calls_received(self) -> list[list[Any]]:
        result: list[list[Any]] = self.control.request("calls_received")
        return result

    def sketch(self) -> dict[str, Any] | None:
        """The sketch the virtual M4 runs (m4sim.sketch profile), None before the first flash."""
        result: dict[str, Any] | None = self.control.request("sketch")
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class VirtualX8:
    """A started :class:`Machine` with the virtual M4 attached; ``with VirtualX8(machine) as x8: ...``."""

    def __init__(self, machine: Machine, m4_log: IO[str] | None = None) -> None:
        self.helper_dir = GUEST_HELPER_DIR
        self.machine = machine
        self.m4_log = m4_log
        self.m4: VirtualM4Process | None = None

    def start(self, wait_ready: bool = True) -> float:
        """Start QEMU and the virtual M4, wait for boot (unless not *wait_ready*); return the seconds."""
        started = time.monotonic()
        if self.machine.process is None:
            self.machine.start()
        self.m4 = VirtualM4Process(self.machine.m4_socket, self.machine.workdir / "m4-control.sock",
                                   self.m4_log, swd_socket=self.machine.swd_socket)
        if wait_ready:
            self.machine.wait_ready()
        return time.monotonic() - started

    def stop(self) -> None:
        if self.m4 is not None:
            self.m4.stop()
            self.m4 = None
        self.machine.stop()

    def __enter__(self) -> VirtualX8:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def login_user(self) -> str:
        """The user a developer logs in as (fio on LmP); the console itself is root, via sudo."""
        profile = self.machine.profile
        return profile.ssh.user if profile.ssh is not None else profile.login.user

    def as_user(self, command: str) -> str:
        """*command* for the root console, run as :attr:`login_user` (what the user would run on LmP)."""
        return f"sudo -u {shlex.quote(self.login_user)} -H -- sh -c {shlex.quote(command)}"

    def require_m4(self) -> VirtualM4Process:
        if self.m4 is None:
            raise MachineError("virtual M4 not started")
        return self.m4

    def start_demo_service(self, port: int = 5005, timeout: float = 90) -> None:
        """Start the guest's demo service and wait until the M4 can call it."""
        console = self.machine.require_console()
        console.run(f"systemctl stop {DEMO_SERVICE_UNIT} 2>/dev/null; "
                    f"systemctl reset-failed {DEMO_SERVICE_UNIT} 2>/dev/null")
        console.check(f"systemd-run --unit={DEMO_SERVICE_UNIT} --quiet /usr/bin/python3 "
                      f"{self.helper_dir}/demo-service {port}")
        m4 = self.require_m4()
        poll("the demo service registered with m4-proxy (M4 calls multiply)",
             lambda: m4.call("multiply", 1, 1), timeout)

    def m4_call(self, name: str, *args: Any) -> Any:
        """An M4 -> Linux call, made by the virtual M4 on the host."""
        return self.require_m4().call(name, *args)

    def linux_call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """A Linux -> M4 call, made inside the guest with ``x8manager.rpc.M4Client``; the decoded result."""
        script = ("import json,sys; from x8manager.rpc import M4Client; "
                  "print(json.dumps(M4Client().call(sys.argv[1], *json.loads(sys.argv[2]))))")
        command = (f"python3 -c {shlex.quote(script)} {shlex.quote(name)} "
                   f"{shlex.quote(json.dumps(list(args)))}")
        # As the login user: on LmP an app or a developer's script calls the M4, not root.
        output = self.machine.require_console().check(self.as_user(command), timeout)
        return json.loads(output.strip().splitlines()[-1])

