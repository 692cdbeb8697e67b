"""The peer's side of the login, against distributors that are not what they should be:
one that cannot prove it holds the user's key, one too old to know ``Challenge``, and one
that asks for a crippling number of iterations."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from jobreactor import scram
from jobreactor.login import MAX_ITERATIONS, check_credentials, say_hello
from jobreactor.protocol import Challenge, Hello, JobReactorAMP


class Impostor(JobReactorAMP):
    """Answers like a distributor with authentication, without knowing any key."""

    iterations = scram.DEFAULT_ITERATIONS

    @Challenge.responder
    def challenge(self, user: str) -> dict[str, Any]:
        return {
            "mechanism": scram.MECHANISM,
            "nonce": scram.new_nonce(),
            "salt": scram.b64(scram.default_salt(user)),
            "iterations": self.iterations,
        }

    @Hello.responder
    def hello(self, **_: Any) -> dict[str, Any]:
        return {"distributor_id": "fake", "version": 2, "drop": [], "server_signature": "AAAA"}


class Old(JobReactorAMP):
    """A distributor of protocol version 1: it has no Challenge."""


class Greedy(Impostor):
    iterations = MAX_ITERATIONS + 1


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (Impostor, "without proving it holds our key"),
        (Old, "speaks a protocol older than version 2"),
        (Greedy, f"asks for {MAX_ITERATIONS + 1} iterations"),
    ],
)
def test_a_distributor_that_is_not_what_it_should_be_is_refused(
    server: type[JobReactorAMP], message: str
) -> None:
    client, _, pump = connectedServerAndClient(server, JobReactorAMP)
    results: list[Any] = []
    said = say_hello(
        client, name="app", slots=0, held=[], credentials=("app", "pw"), endpoint="test"
    )
    said.addBoth(results.append)
    pump.flush()
    assert isinstance(results[0], Failure), results
    assert message in results[0].getErrorMessage()


@pytest.mark.parametrize("credentials", [("app",), ("", "pw"), ("a:b", "pw"), "app:pw", ("app", 3)])
def test_malformed_credentials_are_refused_at_once(credentials: Any) -> None:
    with pytest.raises(ValueError, match=r"credentials|user name"):
        check_credentials(credentials)
