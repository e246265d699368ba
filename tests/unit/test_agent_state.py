"""Agent state: model detection, update diffing, exact round trips, misfit errors (pure)."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import pytest

from mas.agent import Agent
from mas.agent.state import StateModel, check_state_model
from mas.errors import StateError


class Counter(msgspec.Struct):
    handled: int = 0
    label: str = "none"
    flag: bool | None = None
    items: list[Any] = []
    extra: dict[str, Any] = {}


class Other(msgspec.Struct):
    name: str = ""


class Point(msgspec.Struct, frozen=True):
    x: int
    y: int


class Shape(msgspec.Struct):
    corner: Point = Point(0, 0)


class CounterAgent(Agent[Counter]):
    pass


class DictAgent(Agent[dict[str, object]]):
    pass


class PlainAgent(Agent):  # type: ignore[type-arg]
    pass


class SubCounterAgent(CounterAgent):
    pass


S = TypeVar("S")


class GenericBase(Agent[S]):
    pass


class ConcreteFromGeneric(GenericBase[Other]):
    pass


def stored(model: StateModel, state: Any) -> dict[str, str]:
    """What the server would hold after storing every key of ``state``."""
    _, changed = model.plan_update(model.defaults(), model.to_dict(state))
    return changed


# -- which model -----------------------------------------------------------------------------


def test_model_comes_from_the_generic_parameter() -> None:
    agent = CounterAgent("a")
    assert agent.state == Counter()
    assert agent._state_model.model is Counter


def test_subclasses_inherit_the_model() -> None:
    assert SubCounterAgent("a")._state_model.model is Counter


def test_model_comes_through_a_generic_intermediate_class() -> None:
    assert ConcreteFromGeneric("a")._state_model.model is Other


@pytest.mark.parametrize("cls", [DictAgent, PlainAgent, GenericBase])
def test_dict_or_no_parameter_means_a_plain_dict_state(cls: type[Agent[Any]]) -> None:
    agent = cls("a")
    assert agent.state == {}
    assert agent._state_model.model is None


def test_state_model_keyword_overrides_the_generic_parameter() -> None:
    agent = CounterAgent("a", state_model=Other)
    assert agent.state == Other()
    assert DictAgent("a", state_model=Counter).state == Counter()


def test_a_model_that_is_not_a_struct_is_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match=r"msgspec\.Struct"):

        class Bad(Agent[int]):
            pass


def test_a_model_with_a_required_field_is_refused() -> None:
    with pytest.raises(TypeError, match="default"):
        check_state_model(Point)
    with pytest.raises(TypeError, match="x, y"):
        DictAgent("a", state_model=Point)


# -- updates ---------------------------------------------------------------------------------


def test_update_sends_only_the_keys_whose_value_changed() -> None:
    model = StateModel(Counter)
    state = Counter(handled=3, label="x")
    new, changed = model.plan_update(state, {"handled": 3, "label": "y"})
    assert changed == {"label": '"y"'}
    assert new == Counter(handled=3, label="y")
    assert state == Counter(handled=3, label="x")  # the old state is untouched


def test_an_update_that_changes_nothing_sends_nothing() -> None:
    model = StateModel(Counter)
    _, changed = model.plan_update(Counter(), {"handled": 0, "flag": None, "items": []})
    assert changed == {}


@pytest.mark.parametrize(
    ("key", "before", "after"),
    [
        ("flag", None, True),
        ("flag", True, None),
        ("flag", False, None),
        ("items", [1], [True]),  # 1 == True in Python, but not on the wire
        ("items", [0], [False]),
        ("items", [1.0], [1]),
        ("extra", {"a": None}, {"a": False}),
        ("extra", {"a": {"b": [1, {"c": None}]}}, {"a": {"b": [1, {"c": 0}]}}),
    ],
)
def test_changes_are_detected_by_exact_json(key: str, before: Any, after: Any) -> None:
    model = StateModel(Counter)
    state, _ = model.plan_update(Counter(), {key: before})
    _, changed = model.plan_update(state, {key: after})
    assert list(changed) == [key]
    assert msgspec.json.decode(changed[key]) == after


def test_values_round_trip_exactly_through_the_stored_map() -> None:
    model = StateModel(Counter)
    state = Counter(
        handled=7,
        label="é ✓",
        flag=False,
        items=[None, True, 0, 1.5, "s", [], {}, [{"x": [None]}]],
        extra={"nested": {"deep": [False, None, {"k": True}]}, "none": None},
    )
    again = model.load(stored(model, state))
    assert again == state
    assert type(again.items[1]) is bool and type(again.items[2]) is int
    assert again.extra["none"] is None


def test_dict_state_round_trips_and_diffs_the_same_way() -> None:
    model = StateModel(None)
    state, changed = model.plan_update({}, {"a": None, "b": True, "c": [1, {"d": None}]})
    assert changed == {"a": "null", "b": "true", "c": '[1,{"d":null}]'}
    assert model.load(changed) == state == {"a": None, "b": True, "c": [1, {"d": None}]}
    new, changed = model.plan_update(state, {"a": None, "b": 1})
    assert changed == {"b": "1"}
    assert new == {"a": None, "b": 1, "c": [1, {"d": None}]}


def test_struct_values_are_stored_as_json_objects() -> None:
    model = StateModel(Shape)
    new, changed = model.plan_update(Shape(), {"corner": Point(1, 2)})
    assert changed == {"corner": '{"x":1,"y":2}'}
    assert new == Shape(corner=Point(1, 2))
    _, changed = model.plan_update(new, {"corner": {"x": 1, "y": 2}})
    assert changed == {}


def test_an_update_that_misfits_the_model_raises_and_plans_nothing() -> None:
    model = StateModel(Counter)
    with pytest.raises(StateError, match="handled"):
        model.plan_update(Counter(), {"handled": "three"})


def test_an_unknown_key_is_a_state_error() -> None:
    with pytest.raises(StateError, match="'handeld'"):
        StateModel(Counter).plan_update(Counter(), {"handeld": 1})


def test_a_value_without_json_form_is_a_state_error() -> None:
    with pytest.raises(StateError, match="JSON"):
        StateModel(None).plan_update({}, {"x": object()})


def test_updates_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="dict"):
        StateModel(None).plan_update({}, [("a", 1)])  # type: ignore[arg-type]


# -- loading ---------------------------------------------------------------------------------


def test_missing_keys_take_the_model_defaults_and_unknown_keys_are_ignored() -> None:
    model = StateModel(Counter)
    assert model.load({"label": '"x"', "retired_key": "1"}) == Counter(label="x")
    assert model.load({}) == model.defaults() == Counter()


def test_a_stored_value_that_misfits_the_model_raises_naming_the_key() -> None:
    model = StateModel(Counter)
    with pytest.raises(StateError, match="'handled'") as caught:
        model.load({"label": '"fine"', "handled": '"not a number"'})
    assert "Counter" in str(caught.value)


def test_a_stored_value_that_is_not_json_raises_naming_the_key() -> None:
    with pytest.raises(StateError, match="'label'"):
        StateModel(Counter).load({"label": "{not json"})


def test_nested_misfit_names_the_top_level_key() -> None:
    with pytest.raises(StateError, match="'corner'"):
        StateModel(Shape).load({"corner": '{"x": 1, "y": "two"}'})


def test_reset_gives_fresh_defaults_each_time() -> None:
    model = StateModel(Counter)
    first = model.defaults()
    first.items.append(1)
    assert model.defaults().items == []
    assert StateModel(None).defaults() == {}
