"""Old X8 container code (msgpack-rpc-python 0.4.1, msgpack-python 0.5.6, tornado 4.5.3), run
unchanged in its own venv against the real m4-proxy daemon and the virtual M4 on a pty."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.support import free_port
from tests.support.legacy import Legacy, Proxy, Sim, read_fd
from tests.support.live import eventually, stop
from x8manager.m4sim import open_pty

pytestmark = pytest.mark.legacy


def started(process: subprocess.Popen[str], expected_prefix: str) -> str:
    """Wait for the service's first stdout line (it prints it once registered)."""
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith(expected_prefix), f"unexpected first line {line!r}"
    return line


@pytest.fixture
def example_service(legacy: Legacy, proxy: Proxy) -> Iterator[str]:
    """m4-rpc-example: register(port, ['multiply', 'divide']) and serve them."""
    process = legacy.start("rpc_example_service.py", "127.0.0.1", proxy.register_port, free_port())
    try:
        yield started(process, "registered")
    finally:
        stop(process)


def test_register_reply_and_m4_calls_into_legacy_service(example_service: str, m4: Sim) -> None:
    assert example_service == "registered b''"  # 94 01 00 c0 a0, as msgpackrpc 0.4.1 reads it
    assert m4.control.request("call", "multiply", [3, 4]) == 12
    assert m4.control.request("call", "divide", [10, 4]) == 2.5  # floats cross intact
    assert m4.control.request("call", "multiply", ["ab", 3]) == "ababab"


def test_legacy_service_error_reaches_the_m4_as_nil(example_service: str, m4: Sim) -> None:
    # RPC.call keeps only the result: the sketch sees nil, the error text ("division by zero") is lost.
    assert m4.control.request("call", "divide", [1, 0]) is None
    assert m4.control.request("stats")["error_replies"] == 1
    assert m4.control.request("call", "multiply", [2, 21]) == 42  # the service and proxy carry on


def test_linux_calls_m4(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    assert legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "add", 1, 2) == ["ok 3"]
    whoami = legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "whoami")
    # A 32..255-byte str from the M4 is str8 (d9), which crashed the original proxy.
    assert whoami == ["ok b'virtual M4 (m4-sim stand-in for the Portenta X8 M4 sketch)'"]
    floats = legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "echo", 1.5)
    assert floats == ["ok 1.5"]  # the original sent the M4 the uint64 bit pattern


def test_unbound_function_gives_rpclib_error(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    lines = legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "gas")
    assert lines == [
        "error RPCError b\"rpclib: server could not find function 'gas' with argument count 0.\""
    ]
    assert legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "temperature") == ["ok 215"]


def test_notify_reaches_m4(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    assert legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "notify", "tty", '"hello"') == ["ok None"]
    eventually(
        lambda: True if ["tty", ["hello"], True] in m4.control.request("calls_received") else None,
        "the M4 received the tty notification",
    )
    assert m4.control.request("serial_read") == b"hello"


def test_new_client_per_call_gets_its_own_answers(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    lines = legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "fresh:20", "add", 100)
    assert lines == [f"ok {100 + n}" for n in range(20)]


def test_concurrent_legacy_clients_get_their_own_answers(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    """16 msgpackrpc clients at once, every one with msgid 0: the original routed replies FIFO
    (crosstalk); the proxy matches them by its own ids on the M4 wire."""
    lines = legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "threads:16", "add", 1000)
    assert lines == [f"ok {1000 + n}" for n in range(16)]


def test_no_stale_reply_after_a_timeout(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    """The M4 answers after the proxy's 1 s wait: the client times out as with the original, and
    the late reply is dropped instead of being handed to the next caller (the stale shift)."""
    slow = legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "delay", 1500, CALL_TIMEOUT="2")
    assert slow == ["error TimeoutError Request timed out"]
    assert legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "add", 1, 2) == ["ok 3"]
    assert legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "call", "add", 2, 2) == ["ok 4"]


def test_second_call_on_same_client(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    """One call per connection, as the original: msgpackrpc's second call on the same Client then
    depends on whether tornado saw the proxy's end of stream before sending it. Allowed: the right
    answer (the client noticed and reconnected) or a prompt StreamClosedError (what E21 saw with
    the original). Never a wrong or stale answer.

    If the second request leaves before tornado has read the end of stream, the proxy resets the
    connection, but msgpackrpc's close handler does not fail the pending call, so it waits for its
    own timeout. The same timing can hit the original (inferred, not measured); the closer the
    end of stream follows the reply, the rarer it is. Reported as xfail, not hidden."""
    first, second = legacy.run("call_m4.py", "127.0.0.1", proxy.call_port, "twice", "add", 20, 22)
    assert first == "ok 42"
    if second.startswith("error TimeoutError"):
        pytest.xfail("second request sent before the client saw the proxy's end of stream (race, see doc)")
    assert second == "ok 42" or second.startswith("error StreamClosedError"), second


def test_serial_forwarder_pattern(legacy: Legacy, proxy: Proxy, m4: Sim) -> None:
    """m4-serial-forward-python: M4 Serial output lines go to the gadget port, and lines typed on
    the gadget port reach the M4's Serial; the M4 can also call the forwarder's ``echo``."""
    gadget, gadget_path = open_pty()  # stand-in for /dev/ttyGS0 (the USB gadget serial port)
    process = legacy.start(
        "serial_forwarder.py", "127.0.0.1", proxy.register_port, proxy.call_port, free_port(), gadget_path
    )
    try:
        started(process, "registered")
        assert m4.control.request("call", "echo", ["ping"]) == "ping"
        # Serial.println("hello from M4") is two tty notifications: the text, then CR LF.
        m4.control.request("serial_println", "hello from M4")
        received = b""
        while not received.endswith(b"\r\n"):
            received += read_fd(gadget.fd)
        assert received == b"hello from M4\r\n"

        os.write(gadget.fd, b"to the M4\n")
        eventually(
            lambda: True if ["tty", ["to the M4"], False] in m4.control.request("calls_received") else None,
            "the M4 received the gadget line as a tty call",
        )
        assert m4.control.request("serial_read") == b"to the M4"
    finally:
        stop(process)
        os.close(gadget.fd)
