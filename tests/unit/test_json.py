"""``_json.dumps_array`` (the bulk enqueue's encoder) against ``_json.dumps`` (one value): the
same text for what both accept, the same error for the first value either refuses."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchworks import PayloadError, _json

TEXT = st.text(st.characters(blacklist_categories=()), max_size=12)  # NUL and surrogates too
ATOMS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities too
    | TEXT
    | st.sampled_from(["\\u0000", "\x00", "\ud800", "é", "😀", "\\"])
)
NOT_JSON = st.sampled_from([datetime.now(UTC), Decimal("0.1"), b"b", frozenset({1}), uuid.uuid4()])
VALUES = st.recursive(
    ATOMS | NOT_JSON,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(TEXT | st.integers() | st.none(), children, max_size=4)
    ),
    max_leaves=12,
)
LIMIT = 200  # bytes: small, so that the size check is exercised too


def one_by_one(values: list[Any]) -> str:
    return (
        "["
        + ",".join(_json.dumps(v, what=f"#{i}", limit=LIMIT) for i, v in enumerate(values))
        + "]"
    )


def outcome(encode: Any, values: list[Any]) -> tuple[str, str]:
    try:
        return "ok", encode(values)
    except PayloadError as exc:
        return "refused", str(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(VALUES, max_size=6))
def test_dumps_array_matches_dumps_value_by_value(values: list[Any]) -> None:
    array = outcome(lambda vs: _json.dumps_array(vs, what=lambda i: f"#{i}", limit=LIMIT), values)
    each = outcome(one_by_one, values)

    assert array == each
    if array[0] == "ok":
        assert json.loads(array[1]) == json.loads(each[1])


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([{"ok": 1}, "x" * 500], "#1 is 502 bytes of JSON, over the limit of 200"),
        ([{"ok": 1}, {7: "a"}], "#1 is not JSON: int key 7"),
        ([1, 2, {"a": "\x00"}], "#2 contains a NUL character"),
        ([1, "\udfff"], "#1 contains a lone surrogate"),
        ([[], math.nan], "#1 is not JSON: nan"),
    ],
    ids=["too-big", "int-key", "nul", "surrogate", "nan"],
)
def test_dumps_array_names_the_value_it_refuses(values: list[Any], fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment.replace("(", r"\(")):
        _json.dumps_array(values, what=lambda i: f"#{i}", limit=LIMIT)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_loads_reads_back_what_dumps_and_json_write(value: Any) -> None:
    try:
        text = _json.dumps(value, what="value")
    except PayloadError:
        return  # NUL or a lone surrogate: never stored, never read
    # What dumps wrote, and the same value as PostgreSQL's jsonb output spells it (spaces).
    for spelled in (text, json.dumps(value, ensure_ascii=False)):
        assert _json.loads(spelled) == json.loads(spelled)


@pytest.mark.parametrize(
    ("text", "value"),
    [(' {"a": 1}', {"a": 1}), ('{"a": 1}\n', {"a": 1}), ("1", 1), ('"x"', "x"), ("null", None)],
)
def test_loads_takes_white_space_and_bare_scalars(text: str, value: Any) -> None:
    assert _json.loads(text) == value


@pytest.mark.parametrize("text", ["", "{", "[1,", "1 2", "nope", '{"a": 1}}'])
def test_loads_refuses_what_is_not_one_json_value_as_json_does(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        _json.loads(text)
