"""The bounds on what one peer may send, shared by the distributor, nodes and clients.

Every limit is a setting of :class:`~jobreactor.config.Config`; :class:`Limits` is the
frozen copy a protocol, the job model and ``enqueue`` check against. The checks here run on
the raw bytes or on already-parsed values and are cheap: a hostile peer must be refused
before it costs memory or CPU in proportion to what it claims, and the same limit must hold
on the distributor and on the node (a job one side accepts and the other cannot handle
would be lost between them).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import attrs

from jobreactor.errors import InvalidJobError

if TYPE_CHECKING:
    from jobreactor.config import Config

#: Bytes of a job or report besides its args: ids, names, times, and two error texts.
FIELDS_BYTES = 16 * 1024
#: A list of jobs or reports is cut into boxes of about this many bytes of JSON, so one box
#: never nears the 16 MiB limit of a value and a big batch does not stall the connection.
BOX_BUDGET_BYTES = 4 * 1024 * 1024
#: And into boxes of at most this many items, to interleave with other traffic.
BOX_MAX_ITEMS = 200


@attrs.frozen
class Limits:
    """What one box, one command and one job may hold (see ``docs/hostile-input.md``)."""

    #: Bytes of one AMP box, counted as it streams in (keys, values and their length prefixes).
    max_box_bytes: int = 8 * 1024 * 1024
    #: Keys in one AMP box.
    max_box_keys: int = 1024
    #: Jobs, reports or ids in one command.
    max_items: int = 1000
    #: How deep job args may nest (``{"a": [1]}`` is 2 deep).
    max_depth: int = 64
    #: Largest JSON form of one job's args.
    max_args_bytes: int = 1024 * 1024
    #: Characters of a job id, job name, node or client name.
    max_name_length: int = 256
    #: Characters of an error text carried by a job or report (longer ones are cut by the
    #: side that makes them, and refused from a peer).
    max_error_length: int = 8 * 1024
    #: Smallest ``period`` of a periodic job, in seconds.
    min_period: float = 0.1

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(
            max_box_bytes=config.max_box_bytes,
            max_box_keys=config.max_box_keys,
            max_items=config.max_items_per_command,
            max_depth=config.max_nesting_depth,
            max_args_bytes=config.max_args_bytes,
            max_name_length=config.max_name_length,
            max_error_length=config.max_error_length,
            min_period=config.min_period,
        )

    @property
    def max_item_bytes(self) -> int:
        """Largest JSON form of one whole job or report: its args plus every other field."""
        return self.max_args_bytes + 2 * self.max_error_length * 6 + FIELDS_BYTES

    @property
    def box_bytes(self) -> int:
        """The box limit in force: never below what one largest job needs."""
        return max(self.max_box_bytes, self.max_item_bytes + 64 * 1024)

    @property
    def items_per_box(self) -> int:
        """Most items this side puts in one box of jobs or reports: its own
        ``max_items_per_command`` too, so a peer configured alike never refuses a box."""
        return min(BOX_MAX_ITEMS, self.max_items)

    @property
    def bytes_per_box(self) -> int:
        """JSON bytes this side puts in one box: half its box limit and half its keys at most
        (a 64 KiB value per key), so a peer configured alike never refuses the box."""
        return max(1, min(BOX_BUDGET_BYTES, self.box_bytes // 2, self.max_box_keys // 2 * 0xFFFF))


DEFAULT_LIMITS = Limits()

# A JSON string (with its escapes); opening and closing brackets mapped to "(" and ")",
# every other byte deleted.
# (Unrolled: a run of plain bytes is one step, not one alternation per byte.)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
# A \u escape that may start a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


#: Passes of innermost-pair removal :func:`deeper_than` makes at most.
DEPTH_PASSES = 1


def deeper_than(data: bytes, limit: int) -> bool:
    """A cheap guard run before ``json.loads``: True only if the JSON text ``data`` surely
    nests more than ``limit`` levels.

    Strings are cut out and brackets kept; a run of ``limit + 1`` opening brackets means that
    depth. Each of a few passes removes the innermost empty pairs (exactly one level), which
    turns ``[[],[[],[...`` shapes into such runs. All of it is C string work over the bytes,
    never a Python loop per byte. What this does not catch is bounded anyway: ``json.loads``
    stops at Python's recursion limit (``RecursionError``, a ``BAD_MESSAGE``), and the exact
    limit is checked on each parsed job (:func:`jobreactor.model.encode_args`).
    """
    brackets = _brackets_outside_strings(data)
    for removed in range(DEPTH_PASSES + 1):
        if b"(" * (limit + 1 - removed) in brackets:
            return True
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            return False
        brackets = shorter
    return False


def _brackets_outside_strings(data: bytes) -> bytes:
    """The brackets of ``data`` that are outside its JSON strings, as "(" and ")"."""
    if b"\\" not in data:
        # No escape: each quote opens or closes a string, so what lies outside strings is
        # every other piece between quotes. C-level work, not a regex match per string.
        kept = data.translate(_BRACKETS, _NOT_BRACKETS_OR_QUOTES)
        if not kept.count(b'"') % 2:
            return b"".join(kept.split(b'"')[::2])
    return _JSON_STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` holds a lone surrogate (not encodable as UTF-8)."""
    if isinstance(value, str):
        if value.isascii():
            return False  # the common case, without building any JSON
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_SPACE = re.compile(r"[ \t\n\r]*")


class TooManyItems(ValueError):
    """A JSON list from a peer holds more items than a command may carry."""


def _loads(text: str, max_items: int) -> Any:
    """``json.loads``, except that a top-level list is read item by item and refused at
    item ``max_items + 1``: a box of millions of tiny items costs no more than the limit."""
    start = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("[", start):
        return _DECODER.decode(text)
    items: list[Any] = []
    index = _SPACE.match(text, start + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", index):
        index += 1
    else:
        while True:
            if len(items) >= max_items:
                raise TooManyItems(f"more than {max_items} items")
            item, index = _DECODER.raw_decode(text, index)
            items.append(item)
            index = _SPACE.match(text, index).end()  # type: ignore[union-attr]
            if text.startswith("]", index):
                index += 1
                break
            if not text.startswith(",", index):
                raise ValueError(f"expected ',' or ']' at character {index}")
            index = _SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
    if _SPACE.match(text, index).end() != len(text):  # type: ignore[union-attr]
        raise ValueError(f"extra data at character {index}")
    return items


def loads_bounded(data: bytes, depth: int, max_items: int = DEFAULT_LIMITS.max_items) -> Any:
    """Parse JSON from a peer: valid UTF-8, no NaN/Infinity, no lone surrogate, bounded depth,
    at most ``max_items`` items in a top-level list.

    Raises ``ValueError`` saying which rule was broken (:class:`TooManyItems` for the last).
    """
    if deeper_than(data, depth):
        raise ValueError(f"nested more than {depth} levels deep")
    value = _loads(data.decode("utf-8"), max_items)
    if _SURROGATE_ESCAPE.search(data) and has_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff), not valid Unicode")
    return value


def check_name(value: Any, what: str, limits: Limits) -> str:
    """``value`` as a non-empty name (id, job name, node name) of bounded length."""
    if not isinstance(value, str) or not value:
        raise InvalidJobError(f"{what} must be a non-empty string")
    if len(value) > limits.max_name_length:
        raise InvalidJobError(
            f"{what} is {len(value)} characters long, above the limit of "
            f"{limits.max_name_length} (JR.config.max_name_length)"
        )
    if has_lone_surrogate(value):
        raise InvalidJobError(f"{what} holds a lone surrogate: not valid Unicode")
    return value


def check_error_text(value: Any, what: str, limits: Limits) -> str | None:
    """An optional error text from a peer: a string of bounded length."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidJobError(f"{what} must be a string")
    if len(value) > limits.max_error_length:
        raise InvalidJobError(
            f"{what} is {len(value)} characters long, above the limit of "
            f"{limits.max_error_length} (JR.config.max_error_length)"
        )
    return value


def cut_error_text(text: str, limits: Limits) -> str:
    """An error text this side made, cut to the limit so the report carrying it can be sent."""
    if len(text) <= limits.max_error_length:
        return text
    marker = " [...cut]"
    return text[: limits.max_error_length - len(marker)] + marker


def printable(value: Any, limit: int = 200) -> str:
    """``value`` fit for a log line or a terminal: control characters and lone surrogates
    escaped, and at most ``limit`` characters (a peer's input is never logged whole)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + f"...[{len(text) - limit} more]"
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
