"""State values of compatible clients: any text round-trips, JSON values read as their text."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mas.server.state_wire import stored_from_text, text_from_stored, texts_from_stored


@given(st.text())
def test_any_text_a_compatible_client_sends_comes_back_unchanged(text: str) -> None:
    stored = stored_from_text(text)
    assert msgspec.json.decode(stored) == text  # kept as a JSON string: a mas agent reads it
    assert text_from_stored(stored) == text


@pytest.mark.parametrize("text", ["bob", "True", "None", "{'a': 1}", '"q"', "", "1e3", "[1, 2]"])
def test_seed_sdk_values_are_kept_as_given(text: str) -> None:
    assert text_from_stored(stored_from_text(text)) == text


def test_json_values_of_mas_agents_read_as_their_json_text_strings_unquoted() -> None:
    stored = {"n": "3", "on": "true", "off": "null", "deep": '[1,{"a":null}]', "s": '"x"'}
    assert texts_from_stored(stored) == {**stored, "s": "x"}
