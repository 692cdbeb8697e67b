"""The peer's side of saying who it is: ``Challenge`` then ``Hello`` with a proof.

Nodes and clients both call :func:`say_hello`; without credentials it is the plain
``Hello`` of a distributor that asks for none.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from jobreactor import scram
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    AuthNotEnabled,
    Challenge,
    Hello,
    Unauthorized,
    UnsupportedVersion,
)

log = Logger()

#: More PBKDF2 iterations than this in a challenge is refused: a distributor (or someone
#: posing as one) could otherwise make the peer spin for minutes.
MAX_ITERATIONS = 1_000_000

#: ``(user, password)``: what a node or client presents.
Credentials = tuple[str, str]


def check_credentials(credentials: Any) -> Credentials | None:
    """Accept ``None`` or ``(user, password)``; raise ``ValueError`` naming the problem."""
    if credentials is None:
        return None
    if (
        not isinstance(credentials, tuple | list)
        or len(credentials) != 2
        or not all(isinstance(part, str) and part for part in credentials)
    ):
        raise ValueError("credentials must be a (user, password) pair of non-empty strings")
    if ":" in credentials[0]:
        raise ValueError("a user name holds no ':'")
    return (credentials[0], credentials[1])


def say_hello(
    protocol: amp.AMP,
    *,
    name: str,
    slots: int,
    held: list[str],
    credentials: Credentials | None,
    endpoint: str,
    jobs: dict[str, Any] | None = None,
) -> Deferred[dict[str, Any]]:
    """Introduce this peer; fire with the ``Hello`` answer or fail with the refusal.
    ``jobs``: a node's job names and their rate limits (see ``Hello``)."""

    def hello(proof: dict[str, str] | None) -> Deferred[dict[str, Any]]:
        said: Deferred[dict[str, Any]] = protocol.callRemote(
            Hello,
            name=name,
            slots=slots,
            version=PROTOCOL_VERSION,
            held=held,
            credentials=proof,
            jobs=jobs,
        )
        return said

    if credentials is None:
        return hello(None)
    user, password = credentials
    asked: Deferred[dict[str, Any]] = protocol.callRemote(Challenge, user=user)

    def challenged(answer: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if answer["mechanism"] != scram.MECHANISM:
            raise Unauthorized(
                f"distributor asks for {answer['mechanism']}; this peer speaks {scram.MECHANISM}"
            )
        if not 1 <= answer["iterations"] <= MAX_ITERATIONS:
            raise Unauthorized(f"distributor asks for {answer['iterations']} iterations")
        client_nonce = scram.new_nonce()
        proof = scram.ClientProof.make(
            user,
            password,
            answer["nonce"],
            client_nonce,
            scram.unb64(answer["salt"]),
            answer["iterations"],
        )
        wire = {"user": user, "client_nonce": client_nonce, "proof": scram.b64(proof.proof)}

        def check_distributor(welcome: dict[str, Any]) -> dict[str, Any]:
            signature = welcome.get("server_signature") or ""
            try:
                matches = hmac.compare_digest(
                    scram.unb64(signature), proof.expected_server_signature
                )
            except ValueError:
                matches = False
            if not matches:
                raise Unauthorized(
                    "the distributor accepted us without proving it holds our key: "
                    "it is not the distributor the credentials are for"
                )
            return welcome

        return hello(wire).addCallback(check_distributor)

    def not_asked(failure: Failure) -> Deferred[dict[str, Any]]:
        if failure.check(amp.UnhandledCommand):
            raise UnsupportedVersion(
                f"distributor {endpoint} speaks a protocol older than version "
                f"{PROTOCOL_VERSION} (it knows no Challenge): upgrade it"
            )
        failure.trap(AuthNotEnabled)
        log.warn(
            "distributor {endpoint} asks for no credentials: saying Hello as {name} without them",
            endpoint=endpoint,
            name=name,
        )
        return hello(None)

    return asked.addCallbacks(challenged, not_asked)
