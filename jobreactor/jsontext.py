"""Compact JSON text, from one encoder built once.

``json.dumps`` with any option builds a new ``JSONEncoder`` on every call, and even a kept
``JSONEncoder`` builds a new C-level encoder inside each ``encode``; together they cost more
than encoding a small job's args. Every job is encoded a few times on its way, so the C
encoder is made once here (checked against the standard path at import, which it replaces
only where it gives the same text). Strict: NaN and Infinity raise ``ValueError`` (JSON has
neither), a value JSON cannot hold raises ``TypeError``, a circular one ``RecursionError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

_COMPACT = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _standard(value: Any) -> str:
    return _COMPACT.encode(value)


def _c_encoder(
    standard: json.JSONEncoder, default: Callable[[Any], Any], allow_nan: bool
) -> Callable[[Any], str] | None:
    """The C encoder ``standard.encode`` would build, built once; None if this Python's
    differs (its private signature is not a promise) or gives other text."""
    try:
        from _json import make_encoder  # type: ignore[import-not-found]

        # No circular check (``markers`` None): our values come from JSON or from users'
        # args, where a cycle surfaces as RecursionError instead of ValueError.
        encode_chunks = make_encoder(
            None, default, encode_basestring_ascii, None, ":", ",", False, False, allow_nan
        )
    except Exception:
        return None

    def fast(value: Any) -> str:
        if type(value) is str:
            return encode_basestring_ascii(value)
        return "".join(encode_chunks(value, 0))

    sample = {"a": [1, 2.5, None, True, "\u00e9\n\ud83d"], "b": {"c": -1e300, "": 10**20}}
    try:
        for value in (sample, "x\u2028", [float("nan"), float("inf"), object()]):
            try:
                expected = standard.encode(value)
            except (ValueError, TypeError) as error:
                try:
                    fast(value)
                except type(error):
                    continue
                return None
            if fast(value) != expected:
                return None
    except Exception:
        return None
    return fast


#: ``json.dumps(value, allow_nan=False, separators=(",", ":"))``, faster.
compact: Callable[[Any], str] = _c_encoder(_COMPACT, _COMPACT.default, False) or _standard

_LENIENT = json.JSONEncoder(separators=(",", ":"), default=repr)


def _standard_lenient(value: Any) -> str:
    return _LENIENT.encode(value)


#: ``json.dumps(value, separators=(",", ":"), default=repr)``, faster: for sizes, where a
#: value JSON cannot carry must still count (what it will be replaced by is about as long).
lenient: Callable[[Any], str] = _c_encoder(_LENIENT, repr, True) or _standard_lenient
