"""The AMP side: JSON values split across keys above AMP's 64 KiB limit, and a malformed
message answered with ``BAD_MESSAGE`` while the connection carries on.

Connections are ``twisted.test.iosim`` pairs: no sockets, everything moves on ``flush()``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient

from jobreactor.protocol import (
    AMP_VALUE_LIMIT,
    JSON,
    MAX_JSON_CHUNKS,
    BadMessage,
    CancelJobs,
    Hello,
    JobReactorAMP,
    JobsDone,
    RunJobs,
)


class Echo(amp.Command):
    """A command for these tests only: the server answers with what it received."""

    arguments = [
        (b"payload", JSON()),
        (b"count", amp.Integer()),
        (b"extra", JSON(optional=True)),
    ]
    response = [(b"payload", JSON()), (b"keys", JSON())]
    errors = {BadMessage: b"BAD_MESSAGE"}


class EchoServer(JobReactorAMP):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.box_keys: list[list[str]] = []

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self.box_keys.append(sorted(key.decode() for key in box))
        super().ampBoxReceived(box)

    @Echo.responder
    def echo(self, payload: Any, count: int, extra: Any) -> dict[str, Any]:
        if payload == "refuse":
            raise BadMessage("payload 'refuse' is refused")
        self.received.append({"payload": payload, "count": count, "extra": extra})
        return {"payload": payload, "keys": self.box_keys[-1]}


def connect() -> tuple[JobReactorAMP, EchoServer, IOPump]:
    client, server, pump = connectedServerAndClient(EchoServer, JobReactorAMP)
    return client, server, pump


def result_of(deferred: Deferred[Any], pump: IOPump) -> Any:
    """The answer to a call, or its Failure (handled: AMP drops a connection otherwise)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    pump.flush()
    assert results, "no answer arrived"
    return results[0]


def remote_error(answer: Any) -> amp.RemoteAmpError:
    """The error an answer carries as it came off the wire."""
    assert isinstance(answer, Failure), answer
    assert isinstance(answer.value, amp.RemoteAmpError), answer.value
    return answer.value


def still_open(*protocols: amp.AMP) -> bool:
    return all(
        proto.transport is not None and not proto.transport.disconnecting  # type: ignore[attr-defined]
        for proto in protocols
    )


# -- the JSON argument on its own -------------------------------------------------------


def to_box(value: Any, name: bytes = b"value", argument: JSON | None = None) -> dict[bytes, bytes]:
    strings: dict[bytes, bytes] = {}
    (argument or JSON()).toBox(name, strings, {name.decode(): value}, None)
    return strings


def from_box(strings: dict[bytes, bytes], name: bytes = b"value", optional: bool = False) -> Any:
    objects: dict[str, Any] = {}
    JSON(optional=optional).fromBox(name, dict(strings), objects, None)
    return objects[name.decode()]


def test_a_small_value_is_one_key_of_compact_json() -> None:
    strings = to_box({"a": [1, "ż"]})

    assert strings == {b"value": json.dumps({"a": [1, "ż"]}, separators=(",", ":")).encode()}
    assert from_box(strings) == {"a": [1, "ż"]}


def test_a_value_above_the_amp_limit_is_split_across_numbered_keys() -> None:
    value = {"blob": "x" * 200_000}
    text = json.dumps(value, separators=(",", ":")).encode()

    strings = to_box(value)

    assert sorted(strings) == [b"value", b"value.2", b"value.3", b"value.4"]
    assert all(len(chunk) <= AMP_VALUE_LIMIT for chunk in strings.values())
    assert len(strings[b"value"]) == AMP_VALUE_LIMIT
    joined = b"".join(strings[key] for key in (b"value", b"value.2", b"value.3", b"value.4"))
    assert joined == text
    assert from_box(strings) == value


def test_a_long_non_ascii_value_joins_back() -> None:
    value = {"text": "żółw ✓ 猫" * 10_000}

    strings = to_box(value)

    assert len(strings) > 1
    assert from_box(strings) == value


def test_exactly_the_limit_is_one_key_and_one_byte_more_is_two() -> None:
    at_limit = "x" * (AMP_VALUE_LIMIT - 2)  # plus two quotes

    assert list(to_box(at_limit)) == [b"value"]
    assert list(to_box(at_limit + "x")) == [b"value", b"value.2"]


def test_an_optional_value_may_be_absent() -> None:
    assert to_box(None, argument=JSON(optional=True)) == {}
    assert from_box({}, optional=True) is None


def test_a_missing_required_value_is_a_bad_message_naming_it() -> None:
    with pytest.raises(BadMessage, match="'value' is missing"):
        from_box({})


def test_a_value_json_cannot_carry_is_refused_naming_the_argument() -> None:
    with pytest.raises(BadMessage, match="'value' is not JSON"):
        to_box({"when": object()})
    with pytest.raises(BadMessage, match="'value' is not JSON"):
        to_box({"ratio": float("nan")})


def test_more_keys_than_the_chunk_limit_are_refused_on_both_sides() -> None:
    strings = {b"value": b"["}
    strings.update({f"value.{n}".encode(): b"1," for n in range(2, MAX_JSON_CHUNKS + 2)})

    with pytest.raises(BadMessage, match=f"more than {MAX_JSON_CHUNKS} keys"):
        from_box(strings)
    with pytest.raises(BadMessage, match="above the 16 MiB limit"):
        to_box("x" * (AMP_VALUE_LIMIT * MAX_JSON_CHUNKS))


def test_a_value_of_exactly_the_chunk_limit_is_accepted() -> None:
    value = "x" * (AMP_VALUE_LIMIT * MAX_JSON_CHUNKS - 2)

    strings = to_box(value)

    assert len(strings) == MAX_JSON_CHUNKS
    assert from_box(strings) == value


# -- across a connection ----------------------------------------------------------------


def test_a_200_kb_args_dict_travels_through_a_real_amp_connection() -> None:
    client, server, pump = connect()
    args = {"blob": "x" * 200_000, "items": list(range(1000)), "text": "żółw ✓"}

    answer = result_of(client.callRemote(Echo, payload=args, count=7, extra=None), pump)

    assert not isinstance(answer, Failure), answer
    assert server.received == [{"payload": args, "count": 7, "extra": None}]
    assert answer["payload"] == args
    assert {"payload", "payload.2", "payload.3", "payload.4"} <= set(answer["keys"])
    assert still_open(client, server)


def test_malformed_json_is_answered_with_bad_message_and_the_connection_stays_open() -> None:
    client, server, pump = connect()

    answer = result_of(client.callRemoteString(b"Echo", payload=b"{not json", count=b"1"), pump)

    error = remote_error(answer)
    assert error.errorCode == b"BAD_MESSAGE"
    assert "'payload' is not valid JSON" in error.description
    assert server.received == []
    assert still_open(client, server)

    later = result_of(client.callRemote(Echo, payload=[1], count=2, extra={"ok": True}), pump)
    assert later["payload"] == [1]
    assert server.received == [{"payload": [1], "count": 2, "extra": {"ok": True}}]


@pytest.mark.parametrize(
    ("box", "description"),
    [
        (
            {"payload": b"[1]", "count": b"zero"},
            "argument 'count' must be an integer in decimal digits, not 'zero'",
        ),
        ({"payload": b"[1]"}, "argument 'count' is missing"),
        ({"count": b"1"}, "argument 'payload' is missing"),
        ({"payload": b"\xff\xfe", "count": b"1"}, "argument 'payload' is not valid JSON"),
        ({"payload": b"[" * 60_000, "count": b"1"}, "argument 'payload' is not valid JSON"),
        (
            {"payload": b"[1,", "payload.3": b"2]", "count": b"1"},
            "argument 'payload' has the piece 'payload.3' but not 'payload.2'",
        ),
        (
            {"payload.2": b"[1]", "count": b"1"},
            "argument 'payload' has the piece 'payload.2' but not 'payload'",
        ),
    ],
    ids=[
        "bad integer",
        "missing integer",
        "missing JSON",
        "not UTF-8",
        "nested too deeply",
        "a gap in the pieces",
        "pieces without the first",
    ],
)
def test_any_malformed_argument_is_a_bad_message_naming_it(
    box: dict[str, bytes], description: str
) -> None:
    client, server, pump = connect()

    answer = result_of(client.callRemoteString(b"Echo", **box), pump)

    error = remote_error(answer)
    assert error.errorCode == b"BAD_MESSAGE"
    assert error.description.startswith(description), error.description
    assert "Error" not in error.description and "b'" not in error.description
    assert server.received == []
    assert still_open(client, server)


def test_an_unknown_command_is_unhandled_in_the_protocol_terms_and_the_connection_stays() -> None:
    client, server, pump = connect()

    answer = result_of(client.callRemoteString(b"NoSuchCommand"), pump)

    assert isinstance(answer, Failure) and answer.check(amp.UnhandledCommand)
    assert isinstance(answer.value, amp.UnhandledCommand)
    assert answer.value.args == (b"UNHANDLED", "unknown command 'NoSuchCommand'")
    assert still_open(client, server)


def test_a_declared_bad_message_from_a_responder_reaches_the_caller_as_bad_message() -> None:
    client, server, pump = connect()

    answer = result_of(client.callRemote(Echo, payload="refuse", count=1, extra=None), pump)

    assert isinstance(answer, Failure)
    assert answer.check(BadMessage)
    assert "payload 'refuse' is refused" in str(answer.value)
    assert still_open(client, server)


@pytest.mark.parametrize("command", [Hello, RunJobs, JobsDone, CancelJobs])
def test_every_command_declares_bad_message(command: type[amp.Command]) -> None:
    assert command.errors[BadMessage] == b"BAD_MESSAGE"  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        (b"[[[[1]]]]", True),
        (b"[[[1]]]", False),
        (b'["[[[[[[", "]]]]]]"]', False),  # brackets in strings do not nest
        (b'[{"a": "{{{{"}, [[["x"]]]]', True),
        (b'["\\"[[[[[[", "\\\\"]', False),  # escaped quotes and backslashes
        (b'[[[["\\"x"]]]]', True),
        (b'[[[["x]]]]', True),  # an unterminated string: its brackets are not cut out
    ],
)
def test_the_depth_guard_counts_brackets_outside_strings_only(text: bytes, deeper: bool) -> None:
    from jobreactor.limits import deeper_than

    assert deeper_than(text, 3) is deeper
