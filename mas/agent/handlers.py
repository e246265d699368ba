"""Message handlers: the ``@Agent.on`` registry, payload validation, and outcomes (pure).

``on(message_type, model=...)`` marks an ``async def`` method; ``collect_handlers`` builds a
class's registry when the class is created, walking the MRO from the root so that subclasses
inherit their bases' handlers and may override them:

- decorating a method for a type a base already handles replaces the base's handler;
- overriding a base's handler method by name, without the decorator, keeps the registration
  (dispatch looks the method up on the instance, so the override is what runs);
- re-decorating a base's handler method for another type moves it to that type.

Two handlers for one type in the same class body are a ``TypeError`` at class creation.

``decide`` is the whole delivery-outcome table: what the SDK sends back to the server after a
handler returned, raised, timed out, or its payload failed validation.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import msgspec

from ..errors import REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR

_MARK: Final = "__mas_handler__"

F = TypeVar("F", bound=Callable[..., Any])


class HandlerSpec(msgspec.Struct, frozen=True):
    """One registration: ``message_type`` is handled by the method named ``attr``."""

    message_type: str
    attr: str
    model: Any = None  # a type for msgspec.convert, or None for an unvalidated handler


def on(message_type: str, *, model: Any = None) -> Callable[[F], F]:
    """Mark an ``async def`` method as the handler of ``message_type``.

    With ``model`` the payload is validated with ``msgspec.convert(data, model)`` and the
    method is called as ``handler(self, message, payload)``; without, as
    ``handler(self, message)``.
    """
    if not isinstance(message_type, str) or not message_type:
        raise TypeError(f"message_type must be a non-empty string, got {message_type!r}")
    if model is not None and not isinstance(model, type) and typing.get_origin(model) is None:
        raise TypeError(f"model must be a type (e.g. a msgspec.Struct), got {model!r}")

    def mark(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"handler {getattr(func, '__qualname__', func)!r} for {message_type!r} "
                "must be an async def method"
            )
        setattr(func, _MARK, (message_type, model))
        return func

    return mark


def own_handlers(cls: type) -> dict[str, HandlerSpec]:
    """The handlers declared in ``cls``'s own body; ``TypeError`` on a duplicate type."""
    found: dict[str, HandlerSpec] = {}
    for attr, value in vars(cls).items():
        mark = getattr(value, _MARK, None)
        if mark is None:
            continue
        message_type, model = mark
        if message_type in found:
            raise TypeError(
                f"{cls.__qualname__} registers two handlers for {message_type!r}: "
                f"{found[message_type].attr} and {attr}"
            )
        found[message_type] = HandlerSpec(message_type, attr, model)
    return found


def collect_handlers(cls: type) -> dict[str, HandlerSpec]:
    """The full registry of ``cls``: its bases' handlers, overridden by its own."""
    registry: dict[str, HandlerSpec] = {}
    for klass in reversed(cls.__mro__):
        own = own_handlers(klass)
        if not own:
            continue
        moved = {spec.attr for spec in own.values()}
        registry = {kind: spec for kind, spec in registry.items() if spec.attr not in moved}
        registry.update(own)
    return registry


def convert_payload(model: Any, data: Mapping[str, Any]) -> Any:
    """Validate a payload against a handler's model; raises ``msgspec.ValidationError``."""
    return msgspec.convert(data, model)


def describe_exception(exc: BaseException, limit: int = 2000) -> str:
    """``"<ExcType>: <text>"``, cut to ``limit`` characters, for an error reply."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Failure(enum.Enum):
    """How handling a delivery went wrong."""

    HANDLER_ERROR = "handler_error"  # the handler raised
    TIMEOUT = "timeout"  # the handler did not finish within handler_timeout
    VALIDATION = "validation"  # the payload did not fit the handler's model


class Outcome(msgspec.Struct, frozen=True):
    """What to answer the server: an optional error reply, then an ack or a nack."""

    ack: bool
    retryable: bool = False
    error_reply_kind: str | None = None  # send an error reply of this kind before acking

    @property
    def nack(self) -> bool:
        return not self.ack


ACK: Final = Outcome(ack=True)


def decide(*, expects_reply: bool, failure: Failure | None, replied: bool) -> Outcome:
    """The outcome table.

    ========================  =================================  ===========================
    failure                   request (expects a reply)          plain send
    ========================  =================================  ===========================
    none                      ack                                ack
    handler raised/timed out  error reply (handler_error), ack   nack, retryable
    payload invalid           error reply (validation_error),    nack, not retryable
                              ack
    ========================  =================================  ===========================

    A request the handler already replied to is only acked: it gets exactly one reply.
    """
    if failure is None:
        return ACK
    if expects_reply:
        if replied:
            return ACK
        kind = REMOTE_VALIDATION_ERROR if failure is Failure.VALIDATION else REMOTE_HANDLER_ERROR
        return Outcome(ack=True, error_reply_kind=kind)
    return Outcome(ack=False, retryable=failure is not Failure.VALIDATION)
