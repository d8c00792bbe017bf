"""rpclib's dispatcher as the M4 runs it, tested synchronously (no event loop), byte for byte."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from x8manager.m4sim.demo import demo_procedures
from x8manager.m4sim.dispatcher import Dispatcher, ReceivedCall, SketchHalt


def dispatcher() -> Dispatcher:
    found = Dispatcher()
    for name, fn in demo_procedures().items():
        found.bind(name, fn)
    found.bind("say", lambda text: text, params=["std::string"], returns="std::string")
    return found


def reply(outcome: Any) -> list[Any]:
    assert isinstance(outcome, bytes), outcome
    decoded: list[Any] = msgpack.unpackb(outcome)
    return decoded


def test_a_call_is_answered_with_reference_bytes_e1() -> None:
    assert dispatcher().dispatch([0, 7, "add", [1, 2]]) == bytes.fromhex("940107c003")


def test_an_unknown_function_gets_rpclib_text_as_str8() -> None:
    text = b"rpclib: server could not find function 'gas' with argument count 0."
    assert dispatcher().dispatch([0, 3, "gas", []]) == (
        bytes.fromhex("940103d9") + bytes([len(text)]) + text + b"\xc0"
    )


def test_a_wrong_count_gets_rpclib_text_with_the_counts_swapped() -> None:
    # rpclib passes (found=bound, expected=sent) to a (func, found, expected) signature.
    assert reply(dispatcher().dispatch([0, 9, "add", [1]])) == [
        1, 9,
        "rpclib: client error C0002: Function 'add' was called with an invalid number of arguments. "
        "Expected: 1, got: 2",
        None,
    ]
    assert "Expected: 17, got: 0" in reply(dispatcher().dispatch([0, 9, "whoami", [None] * 17]))[2]


def test_a_name_binds_only_once() -> None:
    found = dispatcher()
    with pytest.raises(ValueError, match="already bound"):
        found.bind("add", lambda a, b: a)
    found.bind("add", lambda a, b: 0, replace=True)


def test_call_or_notification_is_told_by_length_not_type() -> None:
    """A 4-element "notification" (the Go serial example) is answered; a 3-element call is not."""
    seen: list[ReceivedCall] = []
    found = Dispatcher(observer=seen.append)
    found.bind("echo", lambda value: value)
    assert reply(found.dispatch([2, 77, "echo", ["loud"]])) == [1, 77, None, "loud"]
    assert found.dispatch([0, "echo", ["quiet"]]) is None
    assert [c.notification for c in seen] == [False, True]
    assert found.dispatch([0, 1, "echo", ["x"], "fifth"]) is None  # no such length: ignored


@pytest.mark.parametrize(
    ("method", "args"),
    [("add", ["a", "b"]), ("add", [1.5, 2]), ("add", [2**31, 1]), ("add", [True, 1]), ("add", [None, 1]),
     ("say", [5]), ("say", [None]), ("led", [1]), ("add", "ab")],
)
def test_a_wrong_typed_call_halts_instead_of_answering(method: str, args: Any) -> None:
    # "ab" is no array: rpclib reads its length (2) as the count, then its conversion throws.
    with pytest.raises(SketchHalt, match="type_error"):
        dispatcher().dispatch([0, 1, method, args])


def test_a_wrong_envelope_halts() -> None:
    for message in ([0, -1, "add", [1, 1]], [0, 2**32, "add", [1, 1]], [0, 1, 5, []], [300, 1, "add", [1, 1]],
                    [0, 4, 5], {"a": 1, "b": 2, "c": 3}):
        with pytest.raises(SketchHalt):
            dispatcher().dispatch(message)


def test_a_notification_with_a_wrong_count_halts_but_an_unknown_one_is_dropped() -> None:
    with pytest.raises(SketchHalt, match="invalid number of arguments"):
        dispatcher().dispatch([2, "add", [1]])
    assert dispatcher().dispatch([2, "nobody", [1]]) is None


def test_a_procedure_that_throws_halts() -> None:
    found = Dispatcher()

    def broken() -> None:
        raise RuntimeError("sensor unplugged")

    found.bind("broken", broken)
    with pytest.raises(SketchHalt, match="sensor unplugged"):
        found.dispatch([0, 1, "broken", []])


def test_a_float_result_is_float32_and_a_double_float64() -> None:
    found = Dispatcher()
    found.bind("f", lambda: 1.5, returns="float")
    found.bind("d", lambda: 1.5)  # unannotated: whatever Python packs, float64
    found.bind("typed", _typed_double)
    assert found.dispatch([0, 1, "f", []]) == bytes.fromhex("940101c0ca3fc00000")
    assert found.dispatch([0, 1, "d", []]) == bytes.fromhex("940101c0cb3ff8000000000000")
    assert found.dispatch([0, 1, "typed", [2]]) == bytes.fromhex("940101c0cb4000000000000000")


def _typed_double(x: float) -> float:
    return x  # an int converts to double, as msgpack-c converts it


def test_strings_and_byte_vectors_take_str_or_bin_and_void_answers_nil() -> None:
    found = Dispatcher()
    got: list[Any] = []
    found.bind("say", got.append, params=["std::string"], returns="void")
    found.bind("tty", got.append, params=["std::vector<uint8_t>"], returns="void")
    messages = ([0, 1, "say", ["x"]], [0, 1, "say", [b"y"]], [0, 1, "tty", ["z"]], [0, 1, "tty", [b"\xff"]])
    for message in messages:
        assert reply(found.dispatch(message)) == [1, 1, None, None]
    assert got == ["x", "y", b"z", b"\xff"]


def test_a_coroutine_procedure_is_deferred() -> None:
    found = Dispatcher()

    async def twice(x: int) -> int:
        return 2 * x

    found.bind("twice", twice)
    deferred = found.dispatch([0, 5, "twice", [21]])
    assert not isinstance(deferred, bytes) and deferred is not None
    coroutine = deferred.work
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)  # type: ignore[attr-defined]
    assert deferred.finish(done.value.value) == bytes.fromhex("940105c02a")
