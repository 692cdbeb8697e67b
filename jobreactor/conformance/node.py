"""Checks of a node (``--role node``): the suite listens and plays the distributor.

The node under test dials the suite's address. The checks share one session (and the node's
reconnects): the first check waits for the node to dial in, the others go on from there.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from jobreactor.conformance.runner import (
    Failed,
    Settings,
    Skipped,
    Suite,
    expect,
    expect_answer,
    expect_error,
    new_id,
    report_in,
)
from jobreactor.conformance.wire import (
    Box,
    Listener,
    Peer,
    arguments,
    encode_box,
    get_json,
)

suite = Suite("node")
check = suite.check

#: How long to wait for the node to dial in (first start, or a reconnect with backoff).
DIAL_WAIT = 30.0


class Session:
    """The suite's side: the listening socket and the node's current connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listener = Listener(settings.host, settings.port, settings.timeout)
        self.peer: Peer | None = None
        self.hello: Box | None = None
        self.distributor_id = str(uuid.uuid4())
        self.cancel_tag = b""

    def accept_hello(self, drop: list[str] | None = None, cancel: list[str] | None = None) -> Box:
        """Wait for the node to dial in and say Hello; answer it (with ``drop``).

        With ``cancel``, a ``CancelJobs`` for those ids goes out in the same write as the
        answer, so the node reads both at once (§3.5 item 2); its tag is :attr:`cancel_tag`.
        """
        peer = self.listener.accept(DIAL_WAIT)
        box = peer.next_command(timeout=self.settings.timeout)
        expect(
            box.get(b"_command") == b"Hello",
            f"the first command must be Hello (§3.1), got {box.get(b'_command')!r}",
        )
        answer = {b"_answer": box[b"_ask"]}
        answer.update(
            arguments(
                distributor_id=self.distributor_id,
                version=self.settings.version,
                drop=drop or [],
            )
        )
        boxes = [answer]
        if cancel is not None:
            self.cancel_tag = b"cancel-after-hello"
            command = {b"_command": b"CancelJobs", b"_ask": self.cancel_tag}
            command.update(arguments(job_ids=cancel))
            boxes.append(command)
        peer.send_raw(b"".join(encode_box(one) for one in boxes))
        self.peer, self.hello = peer, box
        return box

    def current(self) -> Peer:
        if self.peer is None or self.peer.closed:
            raise Failed("no session with the node (an earlier check lost it)")
        return self.peer

    def drop_connection(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.peer = None

    def close(self) -> None:
        self.drop_connection()
        self.listener.close()


def job(name: str = "conformance.no_such_job", **fields: Any) -> dict[str, Any]:
    """A complete job object, as a distributor sends it (§5.1)."""
    values: dict[str, Any] = {
        "id": new_id(),
        "name": name,
        "args": {},
        "status": "new",
        "attempt": 0,
        "run": 0,
        "run_at": None,
        "period": None,
        "defer": False,
        "node": None,
        "not_node": [],
        "max_attempt": None,
        "retry_delay": None,
        "timeout": None,
        "failed_at": None,
        "last_error": None,
        "last_error_type": None,
        "make_after": None,
        "distributor": None,
        "enqueued_at": time.time(),
        "priority": 0,
    }
    values.update(fields)
    return values


def run_jobs(peer: Peer, *jobs: dict[str, Any]) -> tuple[list[str], list[str], list[Any]]:
    reply = peer.call("RunJobs", jobs=list(jobs))
    expect_answer(reply, "RunJobs")
    accepted, parked, rejected = (reply.json(k) for k in ("accepted", "parked", "rejected"))
    for name, value in (("accepted", accepted), ("parked", parked), ("rejected", rejected)):
        expect(isinstance(value, list), f"{name} must be a list, got {value!r:.80}")
    return accepted, parked, rejected


def report_for(peer: Peer, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Answer JobsDone until one carries a report for ``job_id``; return that report."""
    return report_in(peer, "JobsDone", job_id, timeout)


@check("4.1", "the node dials in and says Hello first, with name, slots >= 1, version and held")
def hello(session: Session) -> None:
    box = session.accept_hello()
    name = box.get(b"name", b"").decode("utf-8", "replace")
    expect(bool(name), "name must be non-empty")
    slots = int(box.get(b"slots", b"0"))
    expect(slots >= 1, f"a node's slots must be at least 1, got {slots}")
    version = int(box.get(b"version", b"0"))
    expect(version == session.settings.version, f"version {version}")
    held = get_json(box, "held")
    expect(
        isinstance(held, list) and all(isinstance(i, str) for i in held),
        f"held must be a list of ids, got {held!r:.80}",
    )
    credentials = get_json(box, "credentials") if b"credentials" in box else None
    expect(credentials is None, "credentials must be absent or null in version 1 (§9)")


@check("4.8", "Heartbeat is answered")
def heartbeat(session: Session) -> None:
    expect(session.current().still_answers(), "no answer to Heartbeat")


@check("2.3", "an unknown command is UNHANDLED and the connection stays open")
def unknown_command(session: Session) -> None:
    peer = session.current()
    expect_error(peer.call("NoSuchCommand"), "UNHANDLED", "NoSuchCommand")
    expect(peer.still_answers(), "the connection must stay open")


@check("4.2", "RunJobs with jobs not a list is BAD_MESSAGE")
def jobs_not_a_list(session: Session) -> None:
    peer = session.current()
    expect_error(peer.call("RunJobs", jobs={"not": "a list"}), "BAD_MESSAGE", "jobs {}")
    expect(peer.still_answers(), "the connection must stay open")


@check("5.1", "malformed jobs and unknown fields are rejected, retry false; a parked job is held")
def run_jobs_answer(session: Session) -> None:
    peer = session.current()
    no_name = job()
    del no_name["name"]
    unknown = job(colour="red")
    bad_type = job(defer="yes")
    later = job(run_at=time.time() + 3600)
    accepted, parked, rejected = run_jobs(peer, no_name, unknown, bad_type, later)
    expect(accepted == [later["id"]], f"accepted {accepted!r}")
    expect(parked == [later["id"]], f"parked {parked!r}")
    refused = {entry.get("id"): entry for entry in rejected if isinstance(entry, dict)}
    for the_job in (no_name, unknown, bad_type):
        entry = refused.get(the_job["id"])
        expect(entry is not None, f"job {the_job['id']} missing from rejected {rejected!r:.300}")
        assert entry is not None
        expect(entry.get("retry") is False, f"retry must be false for a malformed job: {entry}")
        expect(isinstance(entry.get("error"), str), f"error must be text: {entry}")
    again, _, _ = run_jobs(peer, later)
    expect(again == [later["id"]], f"a job sent again must be accepted again, got {again!r}")
    reply = peer.call("CancelJobs", job_ids=[later["id"], new_id()])
    expect_answer(reply, "CancelJobs")
    expect(reply.json("cancelled") == [later["id"]], f"cancelled {reply!r}")
    ended = report_for(peer, later["id"])
    expect(
        (ended.get("status"), ended.get("feedback"), ended.get("final"))
        == ("cancelled", None, True),
        f"a job cancelled by CancelJobs is reported cancelled, feedback null (§4.4): {ended}",
    )


@check("6.2", "a job of an unknown name is reported failed at once, with an error feedback")
def unknown_name(session: Session) -> None:
    peer = session.current()
    the_job = job("conformance.no_such_job", args={"n": 1})
    accepted, _, _ = run_jobs(peer, the_job)
    expect(accepted == [the_job["id"]], f"accepted {accepted!r}")
    ended = report_for(peer, the_job["id"])
    expect(
        (ended.get("status"), ended.get("feedback"), ended.get("final"), ended.get("run"))
        == ("failed", "error", True, 1),
        f"expected failed / error / final / run 1, got {ended!r:.300}",
    )


@check("6.2", "a job runs and is reported complete, run 1, with a success feedback")
def runs_a_job(session: Session) -> None:
    if session.settings.job is None:
        raise Skipped("give --job NAME, a job the node defines that succeeds")
    peer = session.current()
    the_job = job(session.settings.job, args={"conformance": True})
    accepted, parked, _ = run_jobs(peer, the_job)
    expect(accepted == [the_job["id"]] and parked == [], f"accepted {accepted}, parked {parked}")
    ended = report_for(peer, the_job["id"])
    expect(
        (ended.get("status"), ended.get("feedback"), ended.get("final"), ended.get("run"))
        == ("complete", "success", True, 1),
        f"expected complete / success / final / run 1, got {ended!r:.300}",
    )
    expect(isinstance(ended.get("args"), dict), f"args must be an object: {ended!r:.200}")


@check("4.1", "after a reconnect the node lists its jobs in held, and forgets those in drop")
def held_and_drop(session: Session) -> None:
    peer = session.current()
    kept, dropped = job(run_at=time.time() + 3600), job(run_at=time.time() + 3600)
    accepted, _, _ = run_jobs(peer, kept, dropped)
    expect(sorted(accepted) == sorted([kept["id"], dropped["id"]]), f"accepted {accepted}")
    session.drop_connection()
    box = session.accept_hello(drop=[dropped["id"]])
    held = get_json(box, "held")
    expect(
        kept["id"] in held and dropped["id"] in held,
        f"held must list both jobs after a reconnect, got {held!r:.300}",
    )
    session.drop_connection()
    box = session.accept_hello()
    held = get_json(box, "held")
    expect(kept["id"] in held, f"the kept job must still be held, got {held!r:.300}")
    expect(dropped["id"] not in held, "a job answered in drop must be forgotten")
    reply = session.current().call("CancelJobs", job_ids=[kept["id"]])
    expect_answer(reply, "CancelJobs")
    report_for(session.current(), kept["id"])


@check("3.5", "the Hello answer is applied before a command that arrives in the same read")
def hello_answer_first(session: Session) -> None:
    peer = session.current()
    kept, dropped = job(run_at=time.time() + 3600), job(run_at=time.time() + 3600)
    accepted, _, _ = run_jobs(peer, kept, dropped)
    expect(sorted(accepted) == sorted([kept["id"], dropped["id"]]), f"accepted {accepted}")
    session.drop_connection()
    session.accept_hello(drop=[dropped["id"]], cancel=[dropped["id"], kept["id"]])
    reply = session.current().reply_to(session.cancel_tag)
    expect_answer(reply, "CancelJobs sent with the Hello answer")
    expect(
        reply.json("cancelled") == [kept["id"]],
        f"the dropped job must be forgotten before the CancelJobs: cancelled {reply!r}",
    )
    report_for(session.current(), kept["id"])


@check("4.7", "a stopping node sends Leaving, hands back unstarted jobs and refuses new ones")
def leaving(session: Session) -> None:
    if not session.settings.expect_leaving:
        raise Skipped("give --expect-leaving, and stop the node when asked")
    peer = session.current()
    parked = job(run_at=time.time() + 3600)
    accepted, _, _ = run_jobs(peer, parked)
    expect(accepted == [parked["id"]], f"accepted {accepted}")
    print("      waiting for Leaving: stop the node now", flush=True)
    box = peer.next_command("Leaving", timeout=DIAL_WAIT)
    peer.answer(box)
    back = report_for(peer, parked["id"])
    expect(
        back.get("handed_back") is True and back.get("final") is False,
        f"an unstarted job is handed back (handed_back true, final false): {back!r:.200}",
    )
    late = job(run_at=time.time() + 3600)
    try:
        reply = peer.call("RunJobs", jobs=[late])
    except Exception:  # the node may already have closed: nothing more to check
        return
    if not reply.is_error:
        rejected = reply.json("rejected")
        expect(
            reply.json("accepted") == []
            and [(e.get("id"), e.get("retry")) for e in rejected] == [(late["id"], True)],
            f"a stopping node rejects every job with retry true: {reply!r}",
        )


def context_for(session: Session) -> Session:
    return session


__all__ = ["Session", "context_for", "suite"]
