"""An agent's typed state: model detection, loading, and update diffing (pure).

The server keeps each agent's state as a map from key to the JSON text of that key's value.
An agent describes its state with a msgspec ``Struct`` whose fields all have defaults (given as
``state_model=`` or as the generic parameter of ``Agent[Model]``), or works with a plain dict
(``Agent[dict[str, object]]`` or no parameter at all).

``StateModel`` does everything that needs no I/O:

- ``defaults()``: the state before anything was stored, and after ``reset_state``;
- ``load(stored)``: the server's map -> the state, raising ``StateError`` naming the key whose
  stored value no longer fits the model (never silently falling back to a default);
  ``unknown_keys(stored)`` names the stored keys the model has no field for (a renamed field);
- ``plan_update(state, updates)``: validates the merged result against the model first and
  returns the new state together with every key the caller named, as JSON text. It never
  compares with ``state``, which the caller may have changed already: a key named is sent;
- ``changes(acknowledged, state)``: for ``edit_state``, the keys whose JSON text differs from
  what the server acknowledged (the state the change started from), after validating ``state``.

Values round-trip exactly: each is encoded with msgspec's JSON encoder, and "changed" compares
JSON texts, so ``True`` and ``1`` differ, and ``None`` is a value like any other.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ..errors import StateError

_encoder: Final = msgspec.json.Encoder()
_MISSING: Final = object()


def _json(value: Any) -> str:
    return _encoder.encode(value).decode()


def is_dict_model(model: object) -> bool:
    """True for ``dict`` and parametrised dicts such as ``dict[str, object]``."""
    return model is dict or typing.get_origin(model) is dict


def check_state_model(model: object) -> type[msgspec.Struct] | None:
    """Validate a state model; ``None`` stands for a plain dict state.

    Raises ``TypeError`` unless ``model`` is ``None``, a dict type, or a msgspec ``Struct``
    whose fields all have defaults (``reset_state`` must be able to build it from nothing).
    """
    if model is None or is_dict_model(model):
        return None
    if not (isinstance(model, type) and issubclass(model, msgspec.Struct)):
        raise TypeError(
            f"a state model must be a msgspec.Struct subclass or dict[str, object], got {model!r}"
        )
    required = [field.name for field in msgspec.structs.fields(model) if field.required]
    if required:
        raise TypeError(
            f"state model {model.__qualname__} must give every field a default "
            f"(reset_state rebuilds it from nothing); no default for: {', '.join(required)}"
        )
    return model


def model_from_generic_bases(cls: type, generic_base: type) -> tuple[bool, object]:
    """Read the state model a class declares through ``generic_base[Model]``.

    Returns ``(True, model)`` when ``cls`` itself names a concrete parameter (a type, not a
    ``TypeVar``), else ``(False, None)`` so the caller keeps what ``cls`` inherited.
    """
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = typing.get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, generic_base)):
            continue
        args = typing.get_args(base)
        if args and not isinstance(args[0], typing.TypeVar):
            return True, args[0]
    return False, None


class StateModel:
    """Converts between the server's ``{key: json}`` map and the agent's state value."""

    def __init__(self, model: object = None) -> None:
        self.model: type[msgspec.Struct] | None = check_state_model(model)
        self._names: dict[str, str] = {}
        if self.model is not None:
            for field in msgspec.structs.fields(self.model):
                self._names[field.name] = field.encode_name
                self._names[field.encode_name] = field.encode_name

    @property
    def name(self) -> str:
        """The model's name, for messages."""
        return "dict" if self.model is None else self.model.__qualname__

    def defaults(self) -> Any:
        """The state before anything is stored: the model's defaults, or ``{}``."""
        return {} if self.model is None else self.model()

    def to_dict(self, state: Any) -> dict[str, Any]:
        """The state as JSON-compatible builtins, keyed as on the server."""
        if self.model is None:
            return dict(msgspec.to_builtins(state))
        return {
            field.encode_name: msgspec.to_builtins(getattr(state, field.name))
            for field in msgspec.structs.fields(self.model)
        }

    def load(self, stored: Mapping[str, str]) -> Any:
        """Build the state from the server's map; ``StateError`` names a key that misfits."""
        values: dict[str, Any] = {}
        for key, text in stored.items():
            try:
                values[key] = msgspec.json.decode(text)
            except msgspec.DecodeError as exc:
                raise StateError(f"stored state key {key!r} is not valid JSON: {exc}") from exc
        if self.model is None:
            return values
        try:
            return msgspec.convert(values, self.model)
        except msgspec.ValidationError as exc:
            culprit = self._culprit(values)
            where = f"stored state key {culprit!r}" if culprit else "stored state"
            raise StateError(
                f"{where} does not fit the state model {self.name}: {exc}; fix or reset the "
                "stored value (reset_state) or make the model accept it"
            ) from exc

    def unknown_keys(self, stored: Mapping[str, str]) -> list[str]:
        """Stored keys the model has no field for: not loaded, still kept on the server."""
        if self.model is None:
            return []
        return [key for key in stored if key not in self._names]

    def plan_update(self, state: Any, updates: Mapping[str, Any]) -> tuple[Any, dict[str, str]]:
        """Merge ``updates`` into ``state``; return ``(new_state, {key: json})`` to send.

        Every key named in ``updates`` is sent, whatever ``state`` holds: the caller may
        have set ``self.state`` to the new value already, and a write is never skipped on
        the strength of a local copy. Validates the merged state against the model before
        anything could be sent, and raises ``StateError`` on an unknown key, a value of
        the wrong type, or a value that has no JSON form.
        """
        if not isinstance(updates, Mapping):
            raise TypeError(f"update_state takes a dict of key -> value, got {type(updates)!r}")
        current = self.to_dict(state)
        try:
            incoming = {str(key): msgspec.to_builtins(value) for key, value in updates.items()}
        except TypeError as exc:
            raise StateError(f"state update has a value with no JSON form: {exc}") from exc
        if self.model is not None:
            unknown = [key for key in incoming if key not in self._names]
            if unknown:
                raise StateError(
                    f"state model {self.name} has no field {', '.join(map(repr, unknown))}"
                )
            incoming = {self._names[key]: value for key, value in incoming.items()}
        merged = {**current, **incoming}
        if self.model is None:
            new_state: Any = merged
            new_values = merged
        else:
            try:
                new_state = msgspec.convert(merged, self.model)
            except msgspec.ValidationError as exc:
                raise StateError(
                    f"state update does not fit the state model {self.name}: {exc}"
                ) from exc
            new_values = self.to_dict(new_state)
        return new_state, {key: _json(new_values[key]) for key in incoming}

    def changes(self, acknowledged: Mapping[str, str], state: Any) -> dict[str, str]:
        """The keys of ``state`` whose JSON differs from the state ``acknowledged`` loads as.

        ``state`` is what a change made of ``load(acknowledged)``; it is validated against
        the model (a field set to a value of the wrong type is a ``StateError``), and a
        plain-dict state may not lose keys (the protocol has no delete: set the key to
        ``None`` instead, or ``reset_state``).
        """
        expected = dict if self.model is None else self.model
        if not isinstance(state, expected):
            raise StateError(f"the edited state must be a {self.name}, got {type(state).__name__}")
        base = self.to_dict(self.load(acknowledged))
        try:
            current = self.to_dict(state)
        except TypeError as exc:
            raise StateError(f"the edited state has a value with no JSON form: {exc}") from exc
        if self.model is not None:
            try:
                msgspec.convert(current, self.model)
            except msgspec.ValidationError as exc:
                raise StateError(
                    f"the edited state does not fit the state model {self.name}: {exc}"
                ) from exc
        else:
            removed = [key for key in base if key not in current]
            if removed:
                raise StateError(
                    f"edit_state cannot remove keys ({', '.join(map(repr, removed))}): set them "
                    "to None instead, or reset_state"
                )
        changed: dict[str, str] = {}
        for key, value in current.items():
            text = _json(value)
            old = base.get(key, _MISSING)
            if old is _MISSING or _json(old) != text:
                changed[str(key)] = text
        return changed

    def _culprit(self, values: Mapping[str, Any]) -> str | None:
        """The first stored key that misfits the model on its own, if any."""
        assert self.model is not None
        base = self.to_dict(self.model())
        for key, value in values.items():
            if key not in base:
                continue
            try:
                msgspec.convert({**base, key: value}, self.model)
            except msgspec.ValidationError:
                return key
        return None
