"""Who may connect to a distributor, checked with :mod:`twisted.cred`.

A distributor with authentication holds an :class:`Authority`: a ``Portal`` whose checkers
verify the peer's proof (see :mod:`jobreactor.scram`) and whose realm turns a user into a
:class:`Peer` saying what that user may be (its roles) and which names it may use.

``--auth`` takes any :mod:`twisted.cred.strcred` checker string whose checker accepts
``IUsernameHashedPassword`` (``file:PATH``, ``memory:user:pass:...``). With ``file:PATH`` the
file also gives each user's roles and names; one user a line::

    # user:password[:roles[:names]]
    alice:s3cret
    worker:scram-sha-256$4096$...:node:worker_*
    web:hunter2:client
    ops:passphrase:client,admin:ops

The password field is the password itself or keys made by ``python -m jobreactor.credentials
USER`` (``scram-sha-256$...``, better: the file then holds no password), or ``!`` for a user
that logs in only with a client certificate. Roles are ``node``,
``client`` and ``admin`` (comma-separated, default ``node,client``); names are
comma-separated glob patterns (default: the user name itself). The file is read at every
login, so a change applies to the next connection without a restart.
"""

from __future__ import annotations

import fnmatch
import getpass
import hmac
import os
import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred import error as cred_error
from twisted.cred.checkers import FilePasswordDB, ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernameHashedPassword, IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.cred.strcred import makeChecker
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Interface, implementer

from jobreactor import scram
from jobreactor.errors import ConfigError

#: What a credential may allow its holder to be.
ROLES = frozenset({"node", "client", "admin"})
#: Roles of a user whose line names none (and of every user of a non-file checker).
DEFAULT_ROLES = frozenset({"node", "client"})
#: A password field starting with this allows no password login (a client-certificate user).
NO_PASSWORD = "!"


class IPeer(Interface):
    """The avatar a distributor's portal gives: an authenticated peer (a :class:`Peer`)."""


@implementer(IPeer)
@attrs.frozen
class Peer:
    """An authenticated user and what its credential allows."""

    user: str
    roles: frozenset[str] = DEFAULT_ROLES
    #: Glob patterns (``fnmatch``, case-sensitive) of the names it may say ``Hello`` with.
    names: tuple[str, ...] = ()

    def may_be(self, role: str) -> bool:
        return role in self.roles

    def may_use_name(self, name: str) -> bool:
        patterns = self.names or (self.user,)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@attrs.frozen
class UserLine:
    """One line of a credentials file, as the realm and the salt lookup read it."""

    password: str
    roles: frozenset[str]
    names: tuple[str, ...]


def read_users_file(path: str) -> dict[str, UserLine]:
    """Parse a ``user:password[:roles[:names]]`` file; ``ConfigError`` names a bad line."""
    try:
        with open(path, encoding="utf-8") as lines:
            text = lines.read()
    except OSError as error:
        raise ConfigError(f"cannot read credentials file {path}: {error.strerror}") from None
    users: dict[str, UserLine] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        where = f"{path} line {number}"
        if len(fields) < 2 or len(fields) > 4 or not fields[0] or not fields[1]:
            raise ConfigError(f"{where}: expected user:password[:roles[:names]]")
        fields += [""] * (4 - len(fields))
        roles = frozenset(r.strip() for r in fields[2].split(",") if r.strip())
        if roles - ROLES:
            unknown = ", ".join(sorted(roles - ROLES))
            raise ConfigError(f"{where}: unknown role {unknown} (roles: admin, client, node)")
        if fields[1].startswith(scram.STORED_PREFIX):
            try:
                scram.StoredKeys.parse(fields[1])
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
        names = tuple(n.strip() for n in fields[3].split(",") if n.strip())
        users[fields[0]] = UserLine(fields[1], roles or DEFAULT_ROLES, names)
    return users


class IPasswordProof(IUsernameHashedPassword):
    """A peer's answer to a challenge: checked against the password or the stored keys."""


@implementer(IPasswordProof)
@attrs.define
class PasswordProof:
    """``IUsernameHashedPassword`` made from a proof, so the stock checkers can verify it.

    ``checkPassword`` gets what the checker stores for the user: the password (from which it
    derives the keys with the salt that was sent) or a ``scram-sha-256$`` stored-key field.
    """

    #: As the checker spells user names (``FilePasswordDB`` reads bytes).
    username: Any
    user: str
    message: bytes
    proof: bytes
    salt: bytes
    iterations: int
    #: Set by a successful check: the distributor's answer proving it holds the keys too.
    server_signature: bytes | None = None

    def checkPassword(self, password: Any) -> bool:
        text = password.decode("utf-8") if isinstance(password, bytes) else str(password)
        if text.startswith(NO_PASSWORD):
            return False  # a certificate-only user
        if text.startswith(scram.STORED_PREFIX):
            try:
                keys = scram.StoredKeys.parse(text)
            except ValueError:
                return False
        else:
            keys = scram.StoredKeys.from_password(text, self.salt, self.iterations)
        if keys.salt != self.salt or not keys.check(self.message, self.proof):
            return False
        self.server_signature = keys.server_signature(self.message)
        return True


class ICertificateUser(ICredentials):
    """A user named by the common name of a client certificate the TLS layer verified."""


@implementer(ICertificateUser)
@attrs.frozen
class CertificateUser:
    user: str


@implementer(ICredentialsChecker)
class VerifiedCertificates:
    """Accepts the common name of a certificate that TLS already checked against the CA.

    Only consulted when the distributor was told its endpoint requires client certificates
    (``client_certificates=True``); ``allowed`` narrows it to known users when given.
    """

    credentialInterfaces = (ICertificateUser,)

    def __init__(self, allowed: Callable[[str], bool] | None = None) -> None:
        self._allowed = allowed

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        user = str(credentials.user)
        if not user or (self._allowed is not None and not self._allowed(user)):
            return fail(cred_error.UnauthorizedLogin(f"no user {user!r}"))
        return succeed(user.encode("utf-8"))


@implementer(IRealm)
class PeerRealm:
    """Gives each authenticated user its :class:`Peer` (roles and names from ``lookup``)."""

    def __init__(self, lookup: Callable[[str], UserLine | None] | None = None) -> None:
        self._lookup = lookup

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IPeer not in interfaces:
            raise NotImplementedError("this realm only gives IPeer avatars")
        user = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        line = self._lookup(user) if self._lookup is not None else None
        peer = Peer(user) if line is None else Peer(user, line.roles, line.names)
        return IPeer, peer, lambda: None


@attrs.frozen
class Challenge:
    """What the distributor sends for one login attempt; kept until the ``Hello``."""

    user: str
    nonce: str
    salt: bytes
    iterations: int


class Authority:
    """The distributor's gate: challenges, then logs peers in through ``portal``.

    ``salts(user)`` gives ``(salt, iterations)`` of a user with stored keys, or None (its
    checker holds the password: the salt is :func:`scram.default_salt`). ``bytes_names``:
    whether the password checker spells user names as bytes (``FilePasswordDB`` does; found
    out from the portal's checkers when not given).
    """

    def __init__(
        self,
        portal: Portal,
        salts: Callable[[str], tuple[bytes, int] | None] | None = None,
        bytes_names: bool | None = None,
    ) -> None:
        self.portal = portal
        self._salts = salts
        if bytes_names is None:
            checker = portal.checkers.get(IUsernameHashedPassword)
            bytes_names = isinstance(checker, FilePasswordDB)
        self._bytes_names = bytes_names

    def challenge(self, user: str) -> Challenge:
        found = self._salts(user) if self._salts is not None else None
        salt, iterations = found or (scram.default_salt(user), scram.DEFAULT_ITERATIONS)
        return Challenge(user, scram.new_nonce(), salt, iterations)

    def login(self, challenge: Challenge, answer: Any) -> Deferred[tuple[Peer, bytes]]:
        """Check the ``credentials`` of a Hello; fire ``(peer, server_signature)``.

        Fails with ``UnauthorizedLogin`` (a description fit for the peer) otherwise.
        """
        if not isinstance(answer, dict) or set(answer) != {"user", "client_nonce", "proof"}:
            return fail(
                cred_error.UnauthorizedLogin("credentials must be {user, client_nonce, proof}")
            )
        user, client_nonce, proof = answer["user"], answer["client_nonce"], answer["proof"]
        if user != challenge.user or not isinstance(client_nonce, str) or not client_nonce:
            return fail(cred_error.UnauthorizedLogin("credentials do not answer the Challenge"))
        try:
            proof_bytes = scram.unb64(proof)
        except (ValueError, AttributeError):
            return fail(cred_error.UnauthorizedLogin("proof is not base64"))
        message = scram.auth_message(user, challenge.nonce, client_nonce, challenge.salt)
        credentials = PasswordProof(
            user.encode("utf-8") if self._bytes_names else user,
            user,
            message,
            proof_bytes,
            challenge.salt,
            challenge.iterations,
        )
        return self._login(credentials).addCallback(
            lambda peer: (peer, credentials.server_signature or b"")
        )

    def login_certificate(self, user: str) -> Deferred[Peer]:
        return self._login(CertificateUser(user))

    def _login(self, credentials: Any) -> Deferred[Peer]:
        def wrong(failure: Any) -> Any:
            # One message whatever failed: do not tell a guesser which users exist.
            failure.trap(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials)
            raise cred_error.UnauthorizedLogin("wrong user name or password")

        logged_in: Deferred[Any] = self.portal.login(credentials, None, IPeer)
        return logged_in.addCallbacks(lambda result: result[1], wrong)


def authority_from_string(description: str) -> Authority:
    """Build the gate for ``--auth`` / ``auth=``: any strcred checker string.

    ``file:PATH`` also reads roles, names and stored-key salts from the file (and
    accepts client-certificate users listed in it); other checkers give every user
    :data:`DEFAULT_ROLES` and its own name. Raises ``ConfigError`` for a bad string or file.
    """
    kind, _, argument = description.partition(":")
    lookup: Callable[[str], UserLine | None] | None = None
    salts: Callable[[str], tuple[bytes, int] | None] | None = None
    if kind == "file":
        if not os.path.isfile(argument):
            raise ConfigError(f"no credentials file {argument!r}")
        read_users_file(argument)  # a malformed file stops the start, not the first login
        checker: Any = FilePasswordDB(argument, cache=False)

        def lookup(user: str) -> UserLine | None:
            try:
                return read_users_file(argument).get(user)
            except ConfigError:
                return None

        def salts(user: str) -> tuple[bytes, int] | None:
            line = lookup(user)
            if line is None or not line.password.startswith(scram.STORED_PREFIX):
                return None
            keys = scram.StoredKeys.parse(line.password)
            return keys.salt, keys.iterations

        certificates = VerifiedCertificates(lambda user: lookup(user) is not None)
    else:
        try:
            checker = makeChecker(description)
        except Exception as error:
            raise ConfigError(
                f"{description!r} is not a twisted.cred checker string ({error})"
            ) from None
        certificates = VerifiedCertificates()
    if IUsernameHashedPassword not in getattr(checker, "credentialInterfaces", ()):
        raise ConfigError(
            f"the {kind} checker needs the password itself, which jobreactor never sends; "
            "use file:PATH or memory:USER:PASSWORD:..."
        )
    portal = Portal(PeerRealm(lookup), [checker, certificates])
    return Authority(portal, salts, bytes_names=isinstance(checker, FilePasswordDB))


def certificate_authority(lookup: Callable[[str], UserLine | None] | None = None) -> Authority:
    """A gate for client certificates alone (no passwords): every verified CN may log in."""
    return Authority(Portal(PeerRealm(lookup), [VerifiedCertificates()]))


def read_credentials_file(path: str) -> tuple[str, str]:
    """A node's or client's ``user:password`` (the first non-comment line of ``path``)."""
    try:
        with open(path, encoding="utf-8") as lines:
            text = lines.read()
    except OSError as error:
        raise ConfigError(f"cannot read credentials file {path}: {error.strerror}") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            user, colon, password = line.partition(":")
            if not colon or not user or not password:
                break
            return user, password
    raise ConfigError(f"credentials file {path}: expected one line user:password")


def main(argv: list[str] | None = None) -> int:
    """``python -m jobreactor.credentials USER``: print a file line holding keys, not the
    password (read from the terminal, or from stdin when it is not one)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-") or ":" in args[0]:
        print("usage: python -m jobreactor.credentials USER", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args[0]}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password or ":" in password:
        print("a password must be non-empty and hold no ':'", file=sys.stderr)
        return 2
    print(scram.stored_line(args[0], password))
    return 0


if __name__ == "__main__":
    sys.exit(main())


@implementer(IUsernameHashedPassword)
@attrs.define
class _TypedPassword:
    """An HTTP basic password, checked against what the checker stores for the user: the
    password itself, or SCRAM stored keys (derived again from the password and compared)."""

    username: Any
    password: str = attrs.field(repr=False)

    def checkPassword(self, stored: Any) -> bool:
        text = stored.decode("utf-8") if isinstance(stored, bytes) else str(stored)
        if text.startswith(NO_PASSWORD):
            return False
        if text.startswith(scram.STORED_PREFIX):
            try:
                keys = scram.StoredKeys.parse(text)
            except ValueError:
                return False
            typed = scram.StoredKeys.from_password(self.password, keys.salt, keys.iterations)
            return hmac.compare_digest(typed.stored_key, keys.stored_key)
        return hmac.compare_digest(text.encode("utf-8"), self.password.encode("utf-8"))


@implementer(ICredentialsChecker)
class WebLogins:
    """HTTP basic logins (the dashboard's) against the distributor's own credential store.

    Over plain HTTP the password crosses the wire: serve the dashboard with ``ssl:`` or on
    loopback (docs/security.md).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        checker = self.authority.portal.checkers.get(IUsernameHashedPassword)
        if checker is None:
            return fail(cred_error.UnauthorizedLogin("no password logins here"))
        name = credentials.username
        text = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        password = credentials.password
        password = password.decode("utf-8") if isinstance(password, bytes) else str(password)
        spelled = text.encode("utf-8") if self.authority._bytes_names else text
        checked: Deferred[Any] = checker.requestAvatarId(_TypedPassword(spelled, password))
        return checked
