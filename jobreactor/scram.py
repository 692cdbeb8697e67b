"""The password proof of the authentication exchange: SCRAM-SHA-256 arithmetic (RFC 5802/7677).

The password never crosses the wire. The distributor sends a fresh nonce and the user's
salt and iteration count (``Challenge``); the peer answers in ``Hello`` with its own nonce
and a proof that only someone who knows the password (or the ``client_key`` derived from
it) can compute for these two nonces. The distributor checks the proof against the
*stored key* (a hash of the client key), so a credentials file may hold stored keys
instead of passwords: see :func:`stored_line`. The distributor answers with its own
signature, made from the *server key*, so the peer knows the distributor holds the key too.

What an eavesdropper sees (nonces, salt, proof) allows an offline guessing attack on a weak
password, as with any password exchange: use TLS across untrusted networks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import attrs

#: The only mechanism spoken; named in ``Challenge`` so a later one can be added.
MECHANISM = "SCRAM-SHA-256"
#: PBKDF2 iterations for new stored keys and for users whose file line holds a password.
DEFAULT_ITERATIONS = 4096
#: Prefix of a stored-key password field in a credentials file.
STORED_PREFIX = "scram-sha-256$"
#: Bytes of randomness in a nonce.
NONCE_BYTES = 18


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode base64, raising ``ValueError`` on anything malformed."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def new_nonce() -> str:
    return b64(os.urandom(NONCE_BYTES))


def default_salt(user: str) -> bytes:
    """The salt of a user whose file line holds a plain password (it has none of its own).

    Derived from the user name so the distributor gives the same salt every time (a changing
    salt would tell an observer which user names exist). A stored-key line has a random salt.
    """
    return hashlib.sha256(b"jobreactor salt\0" + user.encode("utf-8")).digest()[:16]


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


@attrs.frozen
class StoredKeys:
    """What a distributor needs to check a user's proof, without the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(
        cls, password: str, salt: bytes, iterations: int = DEFAULT_ITERATIONS
    ) -> StoredKeys:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(
            salt=salt,
            iterations=iterations,
            stored_key=hashlib.sha256(client_key).digest(),
            server_key=_hmac(salted, b"Server Key"),
        )

    @classmethod
    def parse(cls, text: str) -> StoredKeys:
        """Read ``scram-sha-256$ITERATIONS$SALT$STORED_KEY$SERVER_KEY`` (base64 fields)."""
        try:
            prefix, iterations, salt, stored, server = text.split("$")
            if prefix + "$" != STORED_PREFIX:
                raise ValueError(f"not {STORED_PREFIX}")
            return cls(unb64(salt), int(iterations), unb64(stored), unb64(server))
        except ValueError as error:
            raise ValueError(f"malformed stored key ({error})") from None

    def format(self) -> str:
        return (
            f"{STORED_PREFIX}{self.iterations}${b64(self.salt)}"
            f"${b64(self.stored_key)}${b64(self.server_key)}"
        )

    def check(self, auth_message: bytes, proof: bytes) -> bool:
        """Whether ``proof`` was made with this user's client key for ``auth_message``."""
        signature = _hmac(self.stored_key, auth_message)
        if len(proof) != len(signature):
            return False
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key)

    def server_signature(self, auth_message: bytes) -> bytes:
        return _hmac(self.server_key, auth_message)


def auth_message(user: str, server_nonce: str, client_nonce: str, salt: bytes) -> bytes:
    """The text both proofs sign: binds them to this user, these nonces and this salt."""
    return "\n".join([MECHANISM, user, server_nonce, client_nonce, b64(salt)]).encode("utf-8")


@attrs.frozen
class ClientProof:
    """The peer's side: a proof for ``Hello`` and the signature to expect back."""

    proof: bytes
    expected_server_signature: bytes

    @classmethod
    def make(
        cls,
        user: str,
        password: str,
        server_nonce: str,
        client_nonce: str,
        salt: bytes,
        iterations: int,
    ) -> ClientProof:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        message = auth_message(user, server_nonce, client_nonce, salt)
        signature = _hmac(stored_key, message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return cls(proof, _hmac(_hmac(salted, b"Server Key"), message))


def stored_line(user: str, password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """A credentials-file line ``user:scram-sha-256$...`` holding keys, not the password."""
    return f"{user}:{StoredKeys.from_password(password, os.urandom(16), iterations).format()}"
