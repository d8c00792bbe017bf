"""The C++ types of a sketch's procedures, converted as msgpack-c 2.1.5 converts them.

rpclib converts a call's arguments into the bound function's parameter types with msgpack-c's
``object::convert``, and a sketch converts ``RPC.call(...)``'s result with ``.as<T>()``. Both throw
``msgpack::type_error`` on a mismatch (:class:`TypeMismatch` here); on the M4 nothing catches it,
so the sketch halts. The rules (msgpack-c ``adaptor/int.hpp``, ``float.hpp``, ``bool.hpp``,
``string.hpp``, ``vector_unsigned_char.hpp``, ``vector.hpp``):

- integers: only msgpack integers within the type's range (no bool, float or nil);
- ``float``/``double``: msgpack floats and integers; a ``float`` is float32 on the wire (``ca``);
- ``bool``: only true/false;
- ``std::string`` and ``std::vector<uint8_t>``: str or bin (never nil or a number);
- ``std::vector<T>``: an array whose every element converts to ``T``;
- ``msgpack::object``: anything.

A Python procedure gets its types from its annotations (``int`` is the sketch's 32-bit ``int``,
``float`` is ``double``, ``str`` is ``std::string``, ``bytes`` is ``std::vector<uint8_t>``,
``list[X]`` a vector, no annotation or ``Any`` a ``msgpack::object``) or from an explicit
signature of C++ type names (``("int", "float")``).
"""

from __future__ import annotations

import inspect
import struct
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OBJECT",
    "VOID",
    "CType",
    "Float32",
    "Signature",
    "TypeMismatch",
    "ctype",
    "signature_of",
]


class TypeMismatch(TypeError):
    """msgpack-c's ``type_error``: a value that does not convert to the C++ type asked for."""


class Float32(float):
    """A sketch's ``float``: packed as msgpack float32 (``ca``), as msgpack-c packs it."""


def _float32(value: float) -> float:
    (rounded,) = struct.unpack(">f", struct.pack(">f", value))
    return float(rounded)


@dataclass(frozen=True)
class CType:
    """One C++ type: its name and how msgpack-c converts a msgpack value into it."""

    name: str
    kind: str  # "int", "float", "bool", "string", "bytes", "vector", "object", "void"
    bits: int = 0
    signed: bool = True
    element: CType | None = None

    def __str__(self) -> str:
        return self.name

    def convert(self, value: Any) -> Any:
        """The value as the sketch sees it; raise :class:`TypeMismatch` as msgpack-c throws."""
        kind = self.kind
        if kind == "object":
            return value
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise self._mismatch(value)
            if not self._low <= value <= self._high:
                raise self._mismatch(value)
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self._mismatch(value)
            return _float32(float(value)) if self.bits == 32 else float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise self._mismatch(value)
            return value
        if kind == "string":
            if isinstance(value, bytes):
                return value.decode("utf-8", "surrogateescape")
            if not isinstance(value, str):
                raise self._mismatch(value)
            return value
        if kind == "bytes":
            if isinstance(value, str):
                return value.encode("utf-8", "surrogateescape")
            if not isinstance(value, bytes):
                raise self._mismatch(value)
            return value
        if kind == "vector":
            assert self.element is not None
            if not isinstance(value, list):
                raise self._mismatch(value)
            return [self.element.convert(item) for item in value]
        raise self._mismatch(value)  # void: nothing converts into it

    @property
    def _low(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def _high(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def pack_value(self, value: Any) -> Any:
        """A procedure's result as msgpack-c packs this return type (``float`` as float32)."""
        if self.kind == "void":
            return None
        if self.kind == "float" and self.bits == 32 and isinstance(value, int | float):
            return Float32(value)
        return value

    def _mismatch(self, value: Any) -> TypeMismatch:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return TypeMismatch(f"msgpack type_error: {shown} does not convert to {self.name}")


def _int(name: str, bits: int, signed: bool = True) -> CType:
    return CType(name, "int", bits, signed)


OBJECT = CType("msgpack::object", "object")
VOID = CType("void", "void")
_BYTES = CType("std::vector<uint8_t>", "bytes")
_NAMED: dict[str, CType] = {
    t.name: t
    for t in (
        _int("int", 32), _int("int8_t", 8), _int("int16_t", 16), _int("int32_t", 32), _int("int64_t", 64),
        _int("long", 32), _int("short", 16), _int("unsigned int", 32, False), _int("uint8_t", 8, False),
        _int("uint16_t", 16, False), _int("uint32_t", 32, False), _int("uint64_t", 64, False),
        CType("float", "float", 32), CType("double", "float", 64), CType("bool", "bool"),
        CType("std::string", "string"), _BYTES, CType("std::vector<char>", "bytes"), OBJECT, VOID,
    )
}
_PYTHON: dict[Any, CType] = {
    int: _NAMED["int"], float: _NAMED["double"], bool: _NAMED["bool"], str: _NAMED["std::string"],
    bytes: _BYTES, type(None): VOID, None: VOID, Any: OBJECT, inspect.Parameter.empty: OBJECT,
}


def ctype(spec: CType | str | Any) -> CType:
    """A C++ type from a :class:`CType`, a C++ name (``"uint8_t"``) or a Python annotation."""
    if isinstance(spec, CType):
        return spec
    if isinstance(spec, str):
        name = spec.replace("const ", "").replace("&", "").strip()
        if name.startswith("std::vector<") and name.endswith(">") and name not in _NAMED:
            element = ctype(name[len("std::vector<") : -1])
            return CType(name, "vector", element=element)
        try:
            return _NAMED[name]
        except KeyError:
            raise ValueError(f"unknown C++ type {spec!r} (known: {', '.join(sorted(_NAMED))})") from None
    if spec in _PYTHON:
        return _PYTHON[spec]
    if typing.get_origin(spec) is list:
        (element,) = typing.get_args(spec) or (Any,)
        inner = ctype(element)
        return CType(f"std::vector<{inner.name}>", "vector", element=inner)
    raise ValueError(f"no C++ type for the annotation {spec!r}")


@dataclass(frozen=True)
class Signature:
    """What rpclib knows of a bound function: its parameter types (None: a stand-in that takes any
    number of ``msgpack::object`` arguments, which no real sketch can bind) and its return type."""

    params: tuple[CType, ...] | None
    returns: CType = OBJECT


def signature_of(fn: Callable[..., Any], params: Sequence[CType | str] | None = None,
                 returns: CType | str | None = None) -> Signature:
    """The signature of *fn*: the explicit *params*/*returns*, else its annotations."""
    explicit_returns = None if returns is None else ctype(returns)
    if params is not None:
        return Signature(tuple(ctype(p) for p in params), explicit_returns or OBJECT)
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return Signature(None, explicit_returns or OBJECT)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    types: list[CType] = []
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return Signature(None, explicit_returns or _returns(fn, hints))
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            types.append(_param(hints.get(parameter.name, parameter.annotation)))
    return Signature(tuple(types), explicit_returns or _returns(fn, hints))


def _param(annotation: Any) -> CType:
    try:
        return ctype(annotation)
    except ValueError:
        return OBJECT  # an annotation with no C++ counterpart (a union): anything goes


def _returns(fn: Callable[..., Any], hints: dict[str, Any]) -> CType:
    if "return" not in hints:
        return OBJECT
    try:
        return ctype(hints["return"])
    except ValueError:
        return OBJECT
