"""Credentials without sockets: the SCRAM proof, the users file, the twisted.cred authority."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred

from jobreactor import scram
from jobreactor.credentials import (
    Peer,
    authority_from_string,
    main,
    read_credentials_file,
    read_users_file,
)
from jobreactor.errors import ConfigError


def result_of(deferred: Deferred[Any]) -> Any:
    """The result of an already fired Deferred (raising its failure)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def answer(authority: Any, user: str, password: str) -> tuple[Any, dict[str, str], bytes]:
    challenge = authority.challenge(user)
    client_nonce = scram.new_nonce()
    proof = scram.ClientProof.make(
        user, password, challenge.nonce, client_nonce, challenge.salt, challenge.iterations
    )
    wire = {"user": user, "client_nonce": client_nonce, "proof": scram.b64(proof.proof)}
    return challenge, wire, proof.expected_server_signature


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(
        "# user:password[:roles[:names]]\n"
        "alice:s3cret\n"
        f"{scram.stored_line('bob', 'hunter2')}:node:worker_*\n"
        "web:pw:client\n"
        "ops:pw:client,admin:ops,ops-*\n"
        "cert_only:!:node\n"
    )
    return path


def test_right_password_logs_in_with_roles_and_names(users_file: Path) -> None:
    authority = authority_from_string(f"file:{users_file}")
    challenge, wire, expected = answer(authority, "bob", "hunter2")
    peer, signature = result_of(authority.login(challenge, wire))
    assert peer == Peer("bob", frozenset({"node"}), ("worker_*",))
    assert signature == expected, "the distributor proves it holds bob's keys"
    assert peer.may_use_name("worker_7") and not peer.may_use_name("bob")
    challenge, wire, _ = answer(authority, "alice", "s3cret")
    alice, _ = result_of(authority.login(challenge, wire))
    assert alice.may_be("node") and alice.may_be("client") and not alice.may_be("admin")
    assert alice.may_use_name("alice") and not alice.may_use_name("alice2")


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("nobody", "s3cret")])
def test_wrong_password_or_user_gets_one_answer(users_file: Path, user: str, password: str) -> None:
    authority = authority_from_string(f"file:{users_file}")
    challenge, wire, _ = answer(authority, user, password)
    with pytest.raises(UnauthorizedLogin, match="wrong user name or password"):
        result_of(authority.login(challenge, wire))


def test_a_proof_is_good_for_its_own_nonce_only(users_file: Path) -> None:
    authority = authority_from_string(f"file:{users_file}")
    _, wire, _ = answer(authority, "alice", "s3cret")
    replayed = authority.challenge("alice")  # a new connection gets a new nonce
    with pytest.raises(UnauthorizedLogin):
        result_of(authority.login(replayed, wire))


def test_stored_keys_line_from_the_command_hides_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert main(["carol"]) == 0
    line = capsys.readouterr().out.strip()
    assert "correct horse" not in line and line.startswith("carol:scram-sha-256$4096$")
    path = tmp_path / "users"
    path.write_text(line + ":client\n")
    authority = authority_from_string(f"file:{path}")
    challenge, wire, expected = answer(authority, "carol", "correct horse")
    peer, signature = result_of(authority.login(challenge, wire))
    assert (peer.user, peer.roles, signature) == ("carol", frozenset({"client"}), expected)
    challenge, wire, _ = answer(authority, "carol", "correct horse!")
    with pytest.raises(UnauthorizedLogin):
        result_of(authority.login(challenge, wire))


def test_memory_checker_string_works_too() -> None:
    authority = authority_from_string("memory:alice:s3cret")
    challenge, wire, _ = answer(authority, "alice", "s3cret")
    peer, _ = result_of(authority.login(challenge, wire))
    assert peer.user == "alice"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "line 1: expected user:password"),
        ("alice:pw:root", "line 1: unknown role root"),
        ("alice:scram-sha-256$1$x", "line 1: malformed stored key"),
    ],
)
def test_bad_users_file_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "users"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        read_users_file(str(path))
    with pytest.raises(ConfigError, match=message):
        authority_from_string(f"file:{path}")


def test_bad_auth_strings_say_why(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no credentials file"):
        authority_from_string(f"file:{tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="needs the password itself"):
        authority_from_string("anonymous")
    with pytest.raises(ConfigError, match=r"not a twisted\.cred checker string"):
        authority_from_string("nosuchchecker:x")


def test_credentials_file_of_a_node(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("# mine\nworker_1:s3cret\n")
    assert read_credentials_file(str(path)) == ("worker_1", "s3cret")
    path.write_text("just-a-name\n")
    with pytest.raises(ConfigError, match="expected one line user:password"):
        read_credentials_file(str(path))


def test_a_certificate_only_user_has_no_password(users_file: Path) -> None:
    authority = authority_from_string(f"file:{users_file}")
    challenge, wire, _ = answer(authority, "cert_only", "!")
    with pytest.raises(UnauthorizedLogin):
        result_of(authority.login(challenge, wire))
    peer = result_of(authority.login_certificate("cert_only"))
    assert peer == Peer("cert_only", frozenset({"node"}), ())
    with pytest.raises(UnauthorizedLogin):
        result_of(authority.login_certificate("not_listed"))


@pytest.mark.parametrize("spelling", ["file", "memory"])
def test_a_portal_of_your_own(users_file: Path, spelling: str) -> None:
    from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import Portal

    from jobreactor.credentials import Authority, PeerRealm

    checker: Any
    if spelling == "file":
        checker = FilePasswordDB(str(users_file))
    else:
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser("alice", "s3cret")
    authority = Authority(Portal(PeerRealm(), [checker]))
    challenge, wire, _ = answer(authority, "alice", "s3cret")
    peer, _ = result_of(authority.login(challenge, wire))
    assert peer == Peer("alice")
