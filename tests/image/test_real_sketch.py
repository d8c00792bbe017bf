"""A sketch with the habits of Arduino's real RPC library runs through the twin with every answer right.

The virtual M4 on the host plays the sketch (reference section 15): each sketch thread calls with its
one fixed msgid, ``RPC.setTimeout`` makes it give up on a slow call and call again with the same id,
and a ``Serial.println`` longer than an RPMsg payload reaches Linux cut at 496 bytes. In the guest the
real m4-proxy runs under systemd with a Linux service registered on port 5000, a reader of the monitor
port (the sketch's ``Serial``) and a program calling the M4 through port 5001 all the while. The
guest's side is ``guest/real_sketch_guest.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from x8manager.m4sim import ControlClient, parse_endpoint
from x8manager.qemu import Console
from x8manager.qemu.virtual_x8 import WRITABLE_HELPER_DIR, VirtualX8, poll

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

GUEST_SCRIPT = Path(__file__).parent / "guest" / "real_sketch_guest.py"
SCRIPT = f"{WRITABLE_HELPER_DIR}/real-sketch-guest"  # /var: writable on an LmP image too
RUN = "/run/x8-real-sketch"  # owned by the login user: what the guest programs write
SERVICE_UNIT = "x8-real-sketch-service"
MONITOR_UNIT = "x8-real-sketch-monitor"
LINUX_CALLS_UNIT = "x8-real-sketch-linux-calls"

GIVE_UP_MS = 1000  # the sketch's RPC.setTimeout for the call the service holds until the next one
# A bound for calls answered at once, so a lost reply fails the test instead of hanging it.
PROMPT_MS = 120_000
CALLS_PER_THREAD = 100
LONG_LINE = "".join(f"{n:03d}," for n in range(150))  # 600 characters: more than one RPMsg payload


class Sketch:
    """The sketch's threads and its Serial, driven through the virtual M4's control surface."""

    def __init__(self, x8: VirtualX8) -> None:
        m4 = x8.require_m4()
        # Its own client: a batch of calls under TCG may take longer than the virtual X8's default.
        self.control = ControlClient(parse_endpoint(f"unix:{m4.control_socket}"), timeout=1200)

    def calls(self, thread: int, calls: list[tuple[str, list[Any]]],
              timeout_ms: int | None = PROMPT_MS) -> list[tuple[Any, bool]]:
        """``RPC.setTimeout(timeout_ms)``, then *calls* one after the other from sketch thread
        *thread* (its fixed msgid): each ``(result, RPC.timedOut())``."""
        answers = self.control.request("thread_calls", thread, [list(call) for call in calls], timeout_ms)
        return [(result, timed_out) for result, timed_out in answers]

    def call(self, thread: int, name: str, *args: Any,
             timeout_ms: int | None = PROMPT_MS) -> tuple[Any, bool]:
        (answer,) = self.calls(thread, [(name, list(args))], timeout_ms)
        return answer

    def serial_println(self, text: str) -> None:
        self.control.request("serial_println", text)

    def cut_messages(self) -> int:
        """How many messages the M4 sent cut to their first 496 bytes (OpenAMP's cut)."""
        count: int = self.control.request("stats")["cut_oversize_out"]
        return count

    def rpc_print(self, text: str) -> None:
        """``RPC.print`` on the raw endpoint: one RPMsg message per byte."""
        self.control.request("print_raw", text)


def run_unit(console: Console, unit: str, *args: str, user: str | None = None) -> None:
    """Run the guest script as the transient unit *unit* (again from scratch if it ran before)."""
    console.run(f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null")
    as_user = f"--uid={shlex.quote(user)} " if user else ""
    console.check(f"systemd-run --unit={unit} --quiet {as_user}/usr/bin/python3 {SCRIPT} "
                  + " ".join(shlex.quote(arg) for arg in args))


@pytest.fixture(scope="module")
def sketch(virtual_x8: VirtualX8) -> Iterator[Sketch]:
    """The guest's service registered and answering the sketch; the sketch to drive."""
    console = virtual_x8.machine.require_console()
    console.write_file(SCRIPT, GUEST_SCRIPT.read_bytes(), 0o755)
    user = shlex.quote(virtual_x8.login_user)
    console.check(f"rm -rf {RUN} && mkdir -p {RUN} && chown {user} {RUN}")
    run_unit(console, SERVICE_UNIT, "service", user=virtual_x8.login_user)
    m4 = virtual_x8.require_m4()
    poll("the guest's service registered with m4-proxy (the M4 calls answer)",
         lambda: m4.call("answer", 0, -1), timeout=120)
    try:
        yield Sketch(virtual_x8)
    finally:
        console.run(f"systemctl stop {SERVICE_UNIT} {MONITOR_UNIT} {LINUX_CALLS_UNIT} 2>/dev/null")


def guest_json(console: Console, path: str) -> dict[str, Any] | None:
    text = console.check(f"cat {path} 2>/dev/null || true").strip()
    result: dict[str, Any] | None = json.loads(text) if text else None
    return result


@contextlib.contextmanager
def linux_calls_meanwhile(x8: VirtualX8) -> Iterator[None]:
    """A guest program calls the M4's ``add`` through port 5001 from before the body until after it;
    every answer must be right."""
    console = x8.machine.require_console()
    stop, report = f"{RUN}/linux-calls.stop", f"{RUN}/linux-calls.json"
    console.check(f"rm -f {stop} {report}")
    run_unit(console, LINUX_CALLS_UNIT, "linux-calls", stop, report, user=x8.login_user)
    try:
        poll("the guest's first Linux -> M4 call answered", lambda: guest_json(console, report), timeout=120)
        yield
        console.check(f"touch {stop}")
        final = poll("the guest's Linux -> M4 calls finished",
                     lambda: (r if (r := guest_json(console, report)) and r["done"] else None), timeout=300)
        assert final["wrong"] == [], final
        assert final["calls"] > 1
    finally:
        console.run(f"systemctl stop {LINUX_CALLS_UNIT} 2>/dev/null")


def two_threads_calling(sketch: Sketch, threads: tuple[int, int] = (1, 2)) -> Callable[[], None]:
    """Threads *threads* each make CALLS_PER_THREAD calls in a row, at the same time; the returned
    function waits for them and checks every answer."""
    pool = ThreadPoolExecutor(max_workers=len(threads))
    batches = {thread: pool.submit(sketch.calls, thread, [("answer", [thread, n])
                                                          for n in range(CALLS_PER_THREAD)])
               for thread in threads}

    def check() -> None:
        try:
            for thread, batch in batches.items():
                answers = batch.result()
                wrong = [(n, got) for n, got in enumerate(answers) if got != ([thread, n], False)]
                assert wrong == [], f"sketch thread {thread}: {len(wrong)} wrong answers, first {wrong[:5]}"
        finally:
            pool.shutdown()

    return check


def test_a_thread_that_gave_up_on_a_call_gets_its_own_reply_to_the_next(
        virtual_x8: VirtualX8, sketch: Sketch) -> None:
    with linux_calls_meanwhile(virtual_x8):
        # The service holds its first answer until its next call comes, so the sketch gives up.
        assert sketch.call(1, "held_once", "first", timeout_ms=GIVE_UP_MS) == (None, True)
        # The same thread, the same msgid: the late reply to "first" reaches the proxy before this
        # call's own, and must not be taken for it.
        assert sketch.call(1, "held_once", "second") == ("second", False)
        two_threads_calling(sketch)()


def monitor_output(console: Console) -> bytes:
    return base64.b64decode(console.check(f"base64 -w0 {RUN}/monitor.out 2>/dev/null || true").strip())


def test_a_serial_line_cut_at_496_bytes_costs_only_itself(virtual_x8: VirtualX8, sketch: Sketch) -> None:
    console = virtual_x8.machine.require_console()
    console.check(f"rm -f {RUN}/monitor.out")
    run_unit(console, MONITOR_UNIT, "monitor", f"{RUN}/monitor.out", user=virtual_x8.login_user)

    def monitor_reads() -> bytes | None:
        sketch.serial_println("sync")  # until the reader is connected, Serial goes to the journal
        return out if b"sync\r\n" in (out := monitor_output(console)) else None

    poll("the guest's monitor reader sees the sketch's Serial", monitor_reads, timeout=120)
    with linux_calls_meanwhile(virtual_x8):
        other_threads = two_threads_calling(sketch, (2, 3))
        sketch.serial_println("before")
        sketch.rpc_print("RPC.print between\r\n")
        cut_before = sketch.cut_messages()
        sketch.serial_println(LONG_LINE)  # on the wire its first 496 bytes, then the "\r\n" message
        assert sketch.cut_messages() == cut_before + 1
        sketch.serial_println("after")
        assert sketch.call(1, "answer", 1, 496) == ([1, 496], False)
        out = poll("the line after the long one on the monitor port",
                   lambda: o if b"after\r\n" in (o := monitor_output(console)) else None, timeout=120)
        other_threads()
    console.run(f"systemctl stop {MONITOR_UNIT}")
    lines = out.split(b"\r\n")
    assert b"before" in lines and b"after" in lines, out
    # The long line is lost, or what of it arrived is its start: no line carries other messages' bytes.
    expected = (b"sync", b"before", b"after")
    unexpected = [line for line in lines if line not in expected and not LONG_LINE.encode().startswith(line)]
    assert unexpected == [], out
