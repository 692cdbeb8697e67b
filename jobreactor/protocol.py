"""The AMP commands between nodes, distributors and clients; ``docs/protocol.md`` describes them.

Every value that is not a plain name or number travels as JSON text (never pickle). AMP caps
one value at 65,535 bytes, so :class:`JSON` splits a long text across the keys ``name``,
``name.2``, ``name.3``, ... and joins them on the other side; a message carries lists of jobs
or reports, so a busy distributor sends many jobs in one box.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.protocols import amp

from jobreactor.errors import JobReactorError

#: Bumped when a change would confuse a peer of the previous version.
PROTOCOL_VERSION = 1

#: AMP's limit for one value, in bytes.
AMP_VALUE_LIMIT = 0xFFFF
#: Most keys one JSON value may span: 16 MiB, far above ``max_args_bytes`` batches.
MAX_JSON_CHUNKS = 256


class ProtocolError(JobReactorError):
    """The peer sent something this side cannot accept; the description says what."""


class HelloFirst(ProtocolError):
    """A command came before ``Hello``: a connection must say who it is first."""


class DuplicateNodeName(ProtocolError):
    """A node with this name is already connected to the distributor."""


class UnsupportedVersion(ProtocolError):
    """The peer speaks a protocol version this side does not."""


class BadMessage(ProtocolError):
    """A value in the command is malformed (not the JSON shape the command documents)."""


class JSON(amp.Argument):
    """A JSON value, split across several keys when its text is above AMP's value limit."""

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        value = self.retrieve(objects, name.decode("ascii"), proto)
        if self.optional and value is None:
            return
        try:
            data = json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as error:
            raise BadMessage(f"argument {name.decode()!r} is not JSON: {error}") from None
        chunks = [data[i : i + AMP_VALUE_LIMIT] for i in range(0, len(data), AMP_VALUE_LIMIT)]
        if len(chunks) > MAX_JSON_CHUNKS:
            raise BadMessage(
                f"{name.decode()} is {len(data)} bytes as JSON, above the 16 MiB limit"
            )
        strings[name] = chunks[0]
        for index, chunk in enumerate(chunks[1:], start=2):
            strings[name + b"." + str(index).encode("ascii")] = chunk

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        key = name.decode("ascii")
        first = strings.pop(name, None)
        if first is None:
            if not self.optional:
                raise BadMessage(f"argument {key!r} is missing")
            objects[key] = None
            return
        parts = [first]
        index = 2
        while (part := strings.pop(name + b"." + str(index).encode("ascii"), None)) is not None:
            parts.append(part)
            index += 1
            if index > MAX_JSON_CHUNKS + 1:
                raise BadMessage(f"argument {key!r} spans more than {MAX_JSON_CHUNKS} keys")
        try:
            objects[key] = json.loads(b"".join(parts))
        except (ValueError, RecursionError) as error:
            raise BadMessage(f"argument {key!r} is not valid JSON: {error}") from None


_COMMON_ERRORS: dict[type[Exception], bytes] = {
    HelloFirst: b"HELLO_FIRST",
    BadMessage: b"BAD_MESSAGE",
}


class JobReactorAMP(amp.AMP):
    """AMP that answers a malformed argument with ``BadMessage`` and keeps the connection.

    Plain AMP parses arguments before calling the responder and treats a parse error as
    unknown, which closes the connection; a peer with one bad message should only lose it.
    """

    def locateResponder(self, name: bytes) -> Any:
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def guarded(box: amp.AmpBox) -> Deferred[Any]:
            # Only parsing the arguments raises here: AMP calls the responder itself inside
            # a Deferred. Any parse error (bad JSON, a non-integer Integer, a missing
            # argument) is the peer's malformed message, answered as BAD_MESSAGE.
            try:
                result: Deferred[Any] = responder(box)
            except BadMessage as error:
                return fail(amp.RemoteAmpError(b"BAD_MESSAGE", str(error)))
            except Exception as error:
                return fail(
                    amp.RemoteAmpError(b"BAD_MESSAGE", f"malformed argument: {error!r:.200}")
                )
            return result

        return guarded


class Hello(amp.Command):
    """Node to distributor, first on every connection: who the node is and what it can take.

    ``held`` lists the ids of jobs from this distributor that the node already holds (after a
    reconnect or restart), so the distributor does not send them elsewhere.
    ``credentials`` is reserved for authentication. The answer's ``drop`` lists the held jobs
    the node must forget without running: they were given to another node meanwhile.
    """

    arguments = [
        (b"name", amp.Unicode()),
        (b"slots", amp.Integer()),
        (b"version", amp.Integer()),
        (b"held", JSON()),
        (b"credentials", JSON(optional=True)),
    ]
    response = [
        (b"distributor_id", amp.Unicode()),
        (b"version", amp.Integer()),
        (b"drop", JSON()),
    ]
    errors = {
        DuplicateNodeName: b"DUPLICATE_NODE_NAME",
        UnsupportedVersion: b"UNSUPPORTED_VERSION",
        **_COMMON_ERRORS,
    }


class RunJobs(amp.Command):
    """Distributor to node: take these jobs (a list of job objects).

    The node stores each job before it answers. ``accepted`` lists the ids it now holds,
    ``parked`` those among them waiting for a later time (they hold no slot), ``rejected``
    objects ``{"id", "error"}`` for the jobs it refused.
    """

    arguments = [(b"jobs", JSON())]
    response = [(b"accepted", JSON()), (b"parked", JSON()), (b"rejected", JSON())]
    errors = dict(_COMMON_ERRORS)


class JobsDone(amp.Command):
    """Node to distributor: what happened to these jobs (a list of report objects)."""

    arguments = [(b"reports", JSON())]
    response = []  # type: ignore[var-annotated]
    errors = dict(_COMMON_ERRORS)


class CancelJobs(amp.Command):
    """Distributor to node: stop these jobs; ``cancelled`` lists the ids the node held."""

    arguments = [(b"job_ids", JSON())]
    response = [(b"cancelled", JSON())]
    errors = dict(_COMMON_ERRORS)
