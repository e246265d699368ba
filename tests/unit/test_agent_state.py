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


def test_update_sends_every_key_it_names() -> None:
    model = StateModel(Counter)
    state = Counter(handled=3, label="x")
    new, to_send = model.plan_update(state, {"handled": 3, "label": "y"})
    assert to_send == {"handled": "3", "label": '"y"'}
    assert new == Counter(handled=3, label="y")
    assert state == Counter(handled=3, label="x")  # the old state is untouched


def test_an_update_after_mutating_the_local_state_is_still_sent() -> None:
    # The seed's users write it this way: the local copy already has the new value.
    model = StateModel(Counter)
    state = Counter(handled=3)
    state.handled += 1
    new, to_send = model.plan_update(state, {"handled": state.handled})
    assert to_send == {"handled": "4"}
    assert new == Counter(handled=4)


def test_an_update_naming_no_key_sends_nothing() -> None:
    _, to_send = StateModel(Counter).plan_update(Counter(), {})
    assert to_send == {}


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
def test_edited_changes_are_detected_by_exact_json(key: str, before: Any, after: Any) -> None:
    model = StateModel(Counter)
    _, acknowledged = model.plan_update(Counter(), {key: before})
    state = model.load(acknowledged)
    setattr(state, key, after)
    changed = model.changes(acknowledged, state)
    assert list(changed) == [key]
    assert msgspec.json.decode(changed[key]) == after


def test_an_edit_that_changes_nothing_writes_nothing() -> None:
    model = StateModel(Counter)
    state = model.load({})
    state.handled = 0
    state.items = []
    assert model.changes({}, state) == {}
    assert model.changes({"handled": "2"}, model.load({"handled": "2"})) == {}


def test_an_edit_that_misfits_the_model_is_a_state_error() -> None:
    model = StateModel(Counter)
    state = model.load({})
    state.handled = "three"  # type: ignore[assignment]  # Structs do not check on assignment
    with pytest.raises(StateError, match="handled"):
        model.changes({}, state)


def test_an_edit_of_a_dict_state_may_not_remove_keys() -> None:
    model = StateModel(None)
    state = model.load({"a": "1", "b": "2"})
    del state["a"]
    state["c"] = None
    with pytest.raises(StateError, match="'a'"):
        model.changes({"a": "1", "b": "2"}, state)
    state["a"] = None
    assert model.changes({"a": "1", "b": "2"}, state) == {"a": "null", "c": "null"}


def test_an_edited_state_of_another_type_is_a_state_error() -> None:
    with pytest.raises(StateError, match="must be a Counter, got int"):
        StateModel(Counter).changes({}, 5)
    with pytest.raises(StateError, match="must be a dict, got Counter"):
        StateModel(None).changes({}, Counter())


def test_unknown_stored_keys_are_named() -> None:
    assert StateModel(Counter).unknown_keys({"handled": "1", "handeld": "2"}) == ["handeld"]
    assert StateModel(None).unknown_keys({"anything": "1"}) == []


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
    edited = model.load(changed)
    edited["b"] = 1
    assert model.changes(changed, edited) == {"b": "1"}


def test_struct_values_are_stored_as_json_objects() -> None:
    model = StateModel(Shape)
    new, changed = model.plan_update(Shape(), {"corner": Point(1, 2)})
    assert changed == {"corner": '{"x":1,"y":2}'}
    assert new == Shape(corner=Point(1, 2))
    assert model.changes(changed, model.load(changed)) == {}


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
