"""What each connection to a distributor may do, given who it proved to be.

The distributor keeps one :class:`Session` per connection and asks its :class:`Gate`:
whether a ``Hello`` is admitted (the credentials, the role its slots need, the name), which
commands may come before it, whether an ``Enqueue`` or a cancel is allowed, and whether
kept outcomes may go to this connection. Without an authority (no ``--auth`` and no client
certificates) every check passes, as before authentication existed.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.cred import error as cred_error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor import scram
from jobreactor.credentials import Authority, Challenge, Peer
from jobreactor.protocol import AuthNotEnabled, Unauthorized
from jobreactor.tls import peer_common_name

log = Logger()

#: The commands a connection may send before its ``Hello`` was accepted.
BEFORE_HELLO = frozenset({b"Challenge", b"Hello"})


@attrs.define
class Session:
    """One connection's standing with the distributor."""

    #: The nonce sent in answer to ``Challenge``; used by the next ``Hello`` only.
    challenge: Challenge | None = None
    #: Who the peer proved to be (None without authentication).
    peer: Peer | None = None

    @property
    def user(self) -> str | None:
        return self.peer.user if self.peer is not None else None


class Gate:
    """The distributor's checks, in one place; ``authority`` None lets everything in."""

    def __init__(self, authority: Authority | None, client_certificates: bool = False) -> None:
        self.authority = authority
        self.client_certificates = client_certificates

    @property
    def required(self) -> bool:
        return self.authority is not None

    # -- before Hello -------------------------------------------------------------------

    def challenge(self, session: Session, user: str) -> dict[str, Any]:
        if self.authority is None:
            raise AuthNotEnabled("this distributor asks for no credentials")
        if not user or ":" in user:
            raise Unauthorized("a user name is non-empty and holds no ':'")
        session.challenge = self.authority.challenge(user)
        return {
            "mechanism": scram.MECHANISM,
            "nonce": session.challenge.nonce,
            "salt": scram.b64(session.challenge.salt),
            "iterations": session.challenge.iterations,
        }

    def admit(
        self, session: Session, transport: Any, name: str, slots: int, credentials: Any
    ) -> Deferred[str | None]:
        """Check a ``Hello``; fire with the server signature to send back (None if none),
        or fail with ``Unauthorized`` (which the protocol answers and logs in one line)."""
        if self.authority is None:
            return succeed(None)
        challenge, session.challenge = session.challenge, None  # one Hello per nonce
        address = transport.getPeer() if transport is not None else None
        common_name = peer_common_name(transport) if self.client_certificates else None
        if credentials is not None:
            if challenge is None:
                return self._refuse(address, name, "send Challenge before Hello with credentials")
            logged_in: Deferred[Any] = self.authority.login(challenge, credentials)
        elif common_name is not None:
            logged_in = self.authority.login_certificate(common_name).addCallback(
                lambda peer: (peer, b"")
            )
        else:
            return self._refuse(
                address, name, "this distributor asks for credentials (docs/security.md)"
            )

        def logged(result: tuple[Peer, bytes]) -> str | None:
            peer, signature = result
            role = "node" if slots > 0 else "client"
            if not peer.may_be(role):
                raise Unauthorized(f"user {peer.user} may not connect as a {role}")
            if not peer.may_use_name(name):
                raise Unauthorized(f"user {peer.user} may not use the name {name!r}")
            session.peer = peer
            return scram.b64(signature) if signature else None

        def refused(failure: Failure) -> Deferred[str | None]:
            failure.trap(cred_error.UnauthorizedLogin, Unauthorized)
            return self._refuse(address, name, failure.getErrorMessage())

        return logged_in.addCallback(logged).addErrback(refused)

    def _refuse(self, address: Any, name: str, reason: str) -> Deferred[str | None]:
        # The protocol logs the refusal it answers as one warning line (with the peer's
        # address); logging here too would make two.
        return fail(Unauthorized(reason))

    # -- after Hello ----------------------------------------------------------------------

    def check_enqueue(self, session: Session) -> None:
        if session.peer is not None and not session.peer.may_be("client"):
            raise Unauthorized(f"user {session.peer.user} may not enqueue jobs (no client role)")

    def may_cancel(self, session: Session, owner: str | None) -> bool:
        """A job is cancelled only by the user that enqueued it, or an admin."""
        peer = session.peer
        return peer is None or peer.may_be("admin") or peer.user == owner

    def may_see(self, session: Session, origin: str | None, name: str) -> bool:
        """A stored outcome (``GetOutcome``, ``RetryJobs``) is for the peer name that
        enqueued the job, or an admin; without authentication, for anyone."""
        peer = session.peer
        return peer is None or peer.may_be("admin") or origin == name

    def may_collect(self, session: Session, owner: str | None) -> bool:
        """Outcomes kept for a name go only to the user that enqueued their jobs."""
        peer = session.peer
        return owner is None or (peer is not None and peer.user == owner)


def is_open_to_others(address: Any) -> bool:
    """Whether a listening address can be reached from other machines (not loopback/unix)."""
    host = getattr(address, "host", None)
    if host is None:
        return False  # a unix socket: as open as its file permissions
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
