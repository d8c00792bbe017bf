"""rpclib's dispatcher as the RPC library runs it on the M4: synchronous, one message at a time.

What ``rpc::detail::dispatcher::dispatch(msg, suppress_exceptions=false)`` does (``dispatcher.cc``,
``dispatcher.inl``), and so what this class does:

- a message is a call or a notification by its **array length** (4 or 3), whatever its type field
  says; any other length is ignored;
- the envelope is converted to ``tuple<int8_t, uint32_t, std::string, object>`` (a notification:
  ``tuple<int8_t, std::string, object>``): a negative or too large msgid, a method that is not str/bin,
  a type outside int8 throw ``type_error`` outside any ``try``, and the M4 halts;
- an unknown name is answered ``rpclib: server could not find function 'NAME' with argument count N.``
  (a notification to an unknown name is dropped);
- a wrong argument count is answered ``rpclib: client error C0002: Function 'NAME' was called with an
  invalid number of arguments. Expected: SENT, got: BOUND`` (the counts swapped, as rpclib does); a
  notification with a wrong count throws through ``catch (...)`` and halts the M4;
- the arguments are converted to the parameter types (:mod:`x8manager.m4sim.cxx`); a mismatch, or any
  exception the procedure raises, is rethrown (``suppress_exceptions`` is false) and halts the M4.

A halt is :class:`SketchHalt` raised out of :meth:`Dispatcher.dispatch`: the caller stops the M4.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from x8manager.m4sim import wire
from x8manager.m4sim.cxx import CType, Signature, TypeMismatch, ctype, signature_of

__all__ = ["Binding", "Deferred", "Dispatcher", "Procedure", "ReceivedCall", "SketchHalt"]

Procedure = Callable[..., Any]

_TYPE = ctype("int8_t")
_MSGID = ctype("uint32_t")
_NAME = ctype("std::string")


class SketchHalt(Exception):
    """An exception left a sketch thread: ``std::terminate``, and the M4 answers nothing until reset."""


@dataclass
class ReceivedCall:
    """A request or notification the M4 received from Linux (its envelope converted)."""

    method: str
    params: list[Any]
    notification: bool


@dataclass(frozen=True)
class Binding:
    fn: Procedure
    signature: Signature


@dataclass(frozen=True)
class Deferred:
    """A procedure that is a coroutine: await *work*, then *finish* its result into the reply
    bytes (None: nothing to send). Awaiting it may raise, which halts the M4 like a throw."""

    work: Awaitable[Any]
    finish: Callable[[Any], bytes | None]


Outcome = bytes | Deferred | None


def _array_size(args: Any) -> int:
    """``args.via.array.size`` as rpclib reads it, also when *args* is not an array (a union read)."""
    if isinstance(args, list | dict | str | bytes):
        return len(args)
    if isinstance(args, int) and not isinstance(args, bool):
        return args & 0xFFFFFFFF
    return 0


def _convert(kind: CType, value: Any, what: str) -> Any:
    try:
        return kind.convert(value)
    except TypeMismatch as exc:
        raise SketchHalt(f"{what}: {exc}") from None


class Dispatcher:
    """rpclib's dispatcher: ``bind`` procedures, ``dispatch`` one decoded message."""

    def __init__(self, observer: Callable[[ReceivedCall], None] | None = None) -> None:
        self._bindings: dict[str, Binding] = {}
        self._observer = observer

    # -- binding ------------------------------------------------------------------------------
    def bind(self, name: str, fn: Procedure, *, params: Sequence[CType | str] | None = None,
             returns: CType | str | None = None, replace: bool = False) -> None:
        """``RPC.bind(name, fn)``: parameter types from *params* (C++ names) or *fn*'s annotations.
        A name binds once (rpclib throws ``logic_error``); *replace* is a test switch."""
        if name in self._bindings and not replace:
            raise ValueError(f"Function name already bound: '{name}'. Please use unique function names")
        self._bindings[name] = Binding(fn, signature_of(fn, params, returns))

    def clear(self) -> None:
        self._bindings.clear()

    @property
    def bound_names(self) -> list[str]:
        return sorted(self._bindings)

    def binding(self, name: str) -> Binding | None:
        return self._bindings.get(name)

    # -- dispatching --------------------------------------------------------------------------
    def dispatch(self, message: Any) -> Outcome:
        """The reply bytes for *message* (None: no reply), or a :class:`Deferred` for a coroutine;
        raises :class:`SketchHalt` where the real M4 would terminate."""
        if isinstance(message, dict) and len(message) in (3, 4):
            raise SketchHalt("a map where rpclib converts the call tuple: msgpack type_error")
        if not isinstance(message, list):
            return None
        if len(message) == 4:
            return self._call(message)
        if len(message) == 3:
            return self._notification(message)
        return None

    def _call(self, message: list[Any]) -> Outcome:
        _convert(_TYPE, message[0], "the call's type")
        msgid = _convert(_MSGID, message[1], "the call's msgid")
        name = _convert(_NAME, message[2], "the call's method")
        args = message[3]
        self._observe(name, args, notification=False)
        binding = self._bindings.get(name)
        count = _array_size(args)
        if binding is None:
            return wire.response(msgid, wire.not_found_error(name, count), None)
        params = binding.signature.params
        if params is not None and count != len(params):
            return wire.response(msgid, wire.arity_error(name, count, len(params)), None)
        returns = binding.signature.returns

        def finish(result: Any) -> bytes:
            return wire.response(msgid, None, returns.pack_value(result))

        result = self._invoke(name, binding, args)
        if inspect.isawaitable(result):
            return Deferred(result, finish)
        return finish(result)

    def _notification(self, message: list[Any]) -> Deferred | None:
        _convert(_TYPE, message[0], "the notification's type")
        name = _convert(_NAME, message[1], "the notification's method")
        args = message[2]
        self._observe(name, args, notification=True)
        binding = self._bindings.get(name)
        if binding is None:
            return None
        params = binding.signature.params
        count = _array_size(args)
        if params is not None and count != len(params):
            # dispatch_notification catches the arity client_error in catch (...) and rethrows.
            raise SketchHalt(wire.arity_error(name, count, len(params)) + " (a notification: rethrown)")
        result = self._invoke(name, binding, args)
        if inspect.isawaitable(result):
            return Deferred(result, lambda _result: None)
        return None

    def _invoke(self, name: str, binding: Binding, args: Any) -> Any:
        if not isinstance(args, list):
            raise SketchHalt(f"{name}: the arguments are not an array: msgpack type_error")
        params = binding.signature.params
        if params is not None:
            args = [_convert(kind, value, f"{name}() argument {i + 1}") for i, (kind, value)
                    in enumerate(zip(params, args, strict=True))]
        try:
            return binding.fn(*args)
        except Exception as exc:
            raise SketchHalt(f"{name}() threw {type(exc).__name__}: {exc}") from exc

    def _observe(self, name: str, args: Any, *, notification: bool) -> None:
        if self._observer is not None:
            self._observer(ReceivedCall(name, args if isinstance(args, list) else [args], notification))
