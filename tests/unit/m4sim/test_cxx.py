"""A sketch's C++ types from Python annotations or C++ names, converted as msgpack-c converts."""

from __future__ import annotations

from typing import Any

import pytest

from x8manager.m4sim.cxx import OBJECT, TypeMismatch, ctype, signature_of


def test_annotations_give_the_sketchs_types() -> None:
    def numbers(a: int, b: float, c: bool) -> None:
        pass

    def others(d: str, e: bytes, f: list[int], g: Any, h):  # type: ignore[no-untyped-def]
        return h

    first, second = signature_of(numbers), signature_of(others)
    assert first.params is not None and second.params is not None
    assert [t.name for t in first.params] == ["int", "double", "bool"]
    assert [t.name for t in second.params] == [
        "std::string", "std::vector<uint8_t>", "std::vector<int>", "msgpack::object", "msgpack::object"]
    assert first.returns.name == "void" and second.returns is OBJECT


def test_a_variadic_stand_in_takes_any_count() -> None:
    def echo(*args: Any) -> list[Any]:
        return list(args)

    assert signature_of(echo).params is None


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("int", [0, -2**31, 2**31 - 1], [2**31, 1.0, True, None, "1"]),
    ("uint8_t", [0, 255], [-1, 256]),
    ("float", [1, 1.5, -3], [True, None, "1.5"]),
    ("bool", [True, False], [0, 1, None]),
    ("std::string", ["x", b"y"], [5, None, ["x"]]),
    ("std::vector<uint8_t>", ["x", b"y"], [5, None, [1, 2]]),
    ("std::vector<int>", [[], [1, 2]], [[1, "2"], "12"]),
])
def test_conversion_matches_msgpack_c(name: str, good: list[Any], bad: list[Any]) -> None:
    kind = ctype(name)
    for value in good:
        kind.convert(value)
    for value in bad:
        with pytest.raises(TypeMismatch):
            kind.convert(value)


def test_a_float_is_rounded_to_float32_and_anything_converts_to_an_object() -> None:
    assert ctype("float").convert(0.1) != 0.1
    assert ctype("double").convert(0.1) == 0.1
    assert OBJECT.convert({"any": [None]}) == {"any": [None]}
    with pytest.raises(ValueError, match="unknown C\\+\\+ type"):
        ctype("String")
