"""The shared compact encoder writes what ``json.dumps`` writes and refuses what it refuses."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import pytest

from jobreactor import jsontext

VALUES: list[Any] = [
    {"n": 5},
    {"id": "8d35906e", "args": {"s": 'é\n\t"\\', "l": [None, True, False, 1.5, -0.0]}},
    [{"x": 10**18, "y": 1e-300, "z": "\u2028\ud800"}] * 3,
    "just text",
    3.25,
    None,
    {},
    [],
]


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def dumps_lenient(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=repr)


@pytest.mark.parametrize("encode", [jsontext.compact, jsontext._standard], ids=["fast", "std"])
@pytest.mark.parametrize("value", VALUES)
def test_the_text_is_json_dumps_compact_text(encode: Any, value: Any) -> None:
    assert encode(value) == dumps(value)


@pytest.mark.parametrize("encode", [jsontext.compact, jsontext._standard], ids=["fast", "std"])
def test_what_json_cannot_hold_is_refused(encode: Any) -> None:
    for bad in (float("nan"), float("-inf")):
        with pytest.raises(ValueError):
            encode({"x": [bad]})
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"x": object()})
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises((RecursionError, ValueError)):
        encode(circular)


def test_the_fast_encoder_is_used_where_the_c_encoder_exists() -> None:
    if importlib.util.find_spec("_json") is None:
        pytest.skip("this Python has no C JSON encoder")
    assert jsontext.compact is not jsontext._standard


def test_without_the_c_encoder_the_standard_path_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "_json", None)  # import fails
    assert jsontext._c_encoder(jsontext._COMPACT, jsontext._COMPACT.default, False) is None
    assert jsontext._c_encoder(jsontext._LENIENT, repr, True) is None


@pytest.mark.parametrize(
    "encode", [jsontext.lenient, jsontext._standard_lenient], ids=["fast", "std"]
)
@pytest.mark.parametrize("value", [*VALUES, {"nan": float("nan"), "inf": float("inf")}])
def test_the_lenient_text_is_json_dumps_text_with_repr_for_the_rest(
    encode: Any, value: Any
) -> None:
    assert encode(value) == dumps_lenient(value)
    odd = {"set": {1}, "value": value}  # a set is no JSON: its repr stands in for it
    assert encode(odd) == dumps_lenient(odd) == f'{{"set":"{{1}}","value":{dumps_lenient(value)}}}'
