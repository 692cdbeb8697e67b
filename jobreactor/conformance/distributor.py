"""Checks of a distributor (``--role distributor``): the suite plays nodes and clients.

The distributor under test must be otherwise idle (no other nodes or clients) and run with the
default settings (``hello_timeout`` aside): jobs enqueued by a check must reach the check's own
fake nodes. Every check ends the jobs it enqueued, so none is left for the next one.
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
from jobreactor.conformance.wire import Box, NoAnswer, Peer, Reply, get_json

suite = Suite("distributor")
check = suite.check

PYTHON_INTERNALS = ("Traceback", "b'", 'b"', "Error(", "Exception")


class Context:
    """Connections of one check; all closed at its end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = f"conformance-{uuid.uuid4().hex[:8]}"
        self.peers: list[Peer] = []

    @property
    def version(self) -> int:
        return self.settings.version

    def raw(self) -> Peer:
        peer = Peer.connect(self.settings.host, self.settings.port, self.settings.timeout)
        self.peers.append(peer)
        return peer

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def hello(
        self, peer: Peer, name: str, slots: int, held: list[str] | None = None, **override: Any
    ) -> Reply:
        values: dict[str, Any] = {
            "name": name,
            "slots": slots,
            "version": self.version,
            "held": held or [],
        }
        values.update(override)
        return peer.call("Hello", **values)

    def client(self, role: str = "client") -> Peer:
        peer = self.raw()
        expect_answer(self.hello(peer, self.name(role), 0), f"Hello of client {role}")
        return peer

    def node(self, role: str = "node", slots: int = 1, held: list[str] | None = None) -> Peer:
        peer = self.raw()
        expect_answer(self.hello(peer, self.name(role), slots, held), f"Hello of node {role}")
        return peer

    def cleanup(self) -> None:
        for peer in self.peers:
            peer.close()
        _this_check.clear()


def job(name: str = "conformance.noop", **fields: Any) -> dict[str, Any]:
    made = {"id": new_id(), "name": name, "args": {}, **fields}
    _this_check.add(made["id"])
    return made


def enqueue(client: Peer, *jobs: dict[str, Any]) -> Reply:
    reply = client.call("Enqueue", jobs=list(jobs))
    expect_answer(reply, "Enqueue")
    return reply


def take(node: Peer, timeout: float | None = None) -> list[dict[str, Any]]:
    """Wait for RunJobs; accept every job of it (park those due later); return this check's.

    A job of an earlier check (one a failing distributor kept) is accepted and reported
    cancelled at once, so that one failure does not spill into the checks after it.
    """
    deadline = time.monotonic() + (node.timeout if timeout is None else timeout)
    while True:
        box = node.next_command("RunJobs", max(0.0, deadline - time.monotonic()))
        jobs = get_json(box, "jobs")
        expect(isinstance(jobs, list), f"RunJobs jobs must be a list, got {jobs!r:.80}")
        now = time.time()
        parked = [j["id"] for j in jobs if j.get("run_at") is not None and j["run_at"] > now]
        node.answer(box, accepted=[j["id"] for j in jobs], parked=parked, rejected=[])
        mine = [j for j in jobs if j["id"] in _this_check]
        for stray in jobs:
            if stray["id"] not in _this_check:
                report(node, stray["id"], status="cancelled", feedback=None, args={})
        if mine:
            return mine


def gets_none(node: Peer, seconds: float) -> bool:
    """True if no job of this check reaches ``node`` within ``seconds``."""
    try:
        take(node, timeout=seconds)
    except NoAnswer:
        return True
    return False


#: The ids of the jobs the running check made.
_this_check: set[str] = set()


def report(node: Peer, job_id: str, **fields: Any) -> None:
    values: dict[str, Any] = {
        "job_id": job_id,
        "run": 1,
        "status": "complete",
        "feedback": "success",
        "final": True,
        "args": {"done": True},
    }
    values.update(fields)
    expect_answer(node.call("JobsDone", reports=[values]), "JobsDone")


def outcome_of(client: Peer, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Answer Outcomes until one carries a report for ``job_id``; return that report."""
    return report_in(client, "Outcomes", job_id, timeout)


def run_to_completion(context: Context, node: Peer, client: Peer, the_job: dict[str, Any]) -> None:
    """Take the job on ``node``, report it complete and check the client's outcome."""
    taken = take(node)
    expect([j["id"] for j in taken] == [the_job["id"]], f"RunJobs carried {taken!r:.200}")
    report(node, the_job["id"])
    outcome = outcome_of(client, the_job["id"])
    expect(
        outcome.get("status") == "complete" and outcome.get("final") is True,
        f"the outcome should be the node's complete report, got {outcome!r:.200}",
    )


# -- §3: sessions ----------------------------------------------------------------------------


@check("3.1", "every command but Challenge and Hello is answered HELLO_FIRST before Hello")
def hello_first(context: Context) -> None:
    peer = context.raw()
    commands: list[tuple[str, dict[str, Any]]] = [
        ("Enqueue", {"jobs": [job()]}),
        ("CancelJobs", {"job_ids": [new_id()]}),
        ("JobsDone", {"reports": []}),
        ("Leaving", {}),
        ("GetOutcome", {"job_id": new_id()}),
        ("RetryJobs", {"job_ids": [new_id()]}),
        ("Heartbeat", {}),
    ]
    for command, values in commands:
        expect_error(peer.call(command, **values), "HELLO_FIRST", f"{command} before Hello")
    hello = context.hello(peer, context.name("client"), 0)
    expect(not hello.is_error, "the connection must stay usable after HELLO_FIRST answers")


@check("4.1", "a client's Hello is answered with distributor_id, version and an empty drop")
def client_hello(context: Context) -> None:
    peer = context.raw()
    reply = context.hello(peer, context.name("client"), 0)
    expect_answer(reply, "Hello")
    expect(bool(reply.text("distributor_id")), "distributor_id must be non-empty text")
    expect(reply.integer("version") == context.version, f"version {reply.integer('version')}")
    expect(reply.json("drop") == [], f"drop must be [] for held [], got {reply.json('drop')!r}")


@check("4.1", "unknown held ids come back in drop, also when held is split across keys (§2.5)")
def held_split(context: Context) -> None:
    # 800 ids of 100 characters: about 82 KB of JSON, so two pieces, within the default
    # limits of items per command and of an id's length (§10).
    held = [f"{new_id()}-{'x' * 63}" for _ in range(800)]
    peer = context.raw()
    reply = context.hello(peer, context.name("node"), 1, held)
    expect_answer(reply, "Hello with a split held list")
    expect(sorted(reply.json("drop")) == sorted(held), "drop must list every unknown held id")


@check("3.3", "a refused Hello (UNSUPPORTED_VERSION) closes the connection")
def wrong_version(context: Context) -> None:
    peer = context.raw()
    reply = context.hello(peer, context.name("client"), 0, version=context.version + 1)
    expect_error(reply, "UNSUPPORTED_VERSION", "Hello of another version")
    expect(
        str(context.version) in reply.description and str(context.version + 1) in reply.description,
        f"the description should name both versions: {reply.description!r}",
    )
    expect(peer.closed_within(context.settings.timeout), "the connection stayed open")


@check("3.3", "a refused Hello (slots < 0) is BAD_MESSAGE and closes the connection")
def negative_slots(context: Context) -> None:
    peer = context.raw()
    expect_error(context.hello(peer, context.name("node"), -1), "BAD_MESSAGE", "slots -1")
    expect(peer.closed_within(context.settings.timeout), "the connection stayed open")


@check("4.1", "DUPLICATE_NODE_NAME names the other session's kind and closes the connection")
def duplicate_name(context: Context) -> None:
    first = context.client("twin")
    second = context.raw()
    reply = context.hello(second, context.name("twin"), 1)
    expect_error(reply, "DUPLICATE_NODE_NAME", "a second session of one name")
    expect("client" in reply.description, f"it should say a client: {reply.description!r}")
    expect(second.closed_within(context.settings.timeout), "the refused connection stayed open")
    expect(first.still_answers(), "the first session must go on")


@check("3.3", "a second Hello on an open session is BAD_MESSAGE and the session goes on")
def second_hello(context: Context) -> None:
    peer = context.client()
    reply = context.hello(peer, context.name("client"), 0)
    expect_error(reply, "BAD_MESSAGE", "a second Hello")
    expect(peer.still_answers(), "the session must go on")


@check("2.3", "an unknown command is UNHANDLED and the connection stays open")
def unknown_command(context: Context) -> None:
    peer = context.client()
    reply = peer.call("NoSuchCommand")
    expect_error(reply, "UNHANDLED", "NoSuchCommand")
    expect(peer.still_answers(), "the connection must stay open")


@check("7.2", "a malformed Integer is BAD_MESSAGE naming the argument, without Python internals")
def malformed_integer(context: Context) -> None:
    peer = context.raw()
    reply = context.hello(peer, context.name("node"), b"zero")  # type: ignore[arg-type]
    expect_error(reply, "BAD_MESSAGE", "slots 'zero'")
    expect("slots" in reply.description, f"it should name slots: {reply.description!r}")
    internals = [word for word in PYTHON_INTERNALS if word in reply.description]
    expect(not internals, f"implementation details {internals} in {reply.description!r}")


@check("2.5", "a split JSON value with a missing piece is BAD_MESSAGE")
def missing_piece(context: Context) -> None:
    peer = context.client()
    tag = peer.ask("Enqueue", jobs=b"[", **{"jobs.3": b"]"})
    expect_error(peer.reply_to(tag), "BAD_MESSAGE", "jobs.3 without jobs.2")
    expect(peer.still_answers(), "the connection must stay open")


@check("3.6", "a silent session gets a Heartbeat")
def heartbeat(context: Context) -> None:
    peer = context.client()
    deadline = time.monotonic() + context.settings.timeout
    while peer.heartbeats_received == 0 and time.monotonic() < deadline:
        peer.quiet_for(0.2, "Outcomes")
    expect(peer.heartbeats_received > 0, "no Heartbeat came within the timeout")


@check("3.2", "a connection without Hello is closed after hello_timeout")
def hello_timeout(context: Context) -> None:
    seconds = context.settings.hello_timeout
    if seconds is None:
        raise Skipped("give --hello-timeout SECONDS (the distributor's hello_timeout)")
    peer = context.raw()
    expect(peer.closed_within(seconds + 1.0), f"still open after {seconds + 1.0:g} s")


# -- §4: jobs ------------------------------------------------------------------------------


@check("4.5", "a job of only id, name and args is accepted and reaches a node with its defaults")
def minimal_job(context: Context) -> None:
    client = context.client()
    node = context.node()
    the_job = job(args={"n": 1})
    reply = enqueue(client, the_job)
    expect(reply.json("accepted") == [the_job["id"]], f"Enqueue answered {reply!r}")
    expect(reply.json("rejected") == [], f"Enqueue answered {reply!r}")
    sent = take(node)
    expect(len(sent) == 1 and sent[0]["id"] == the_job["id"], f"RunJobs carried {sent!r:.200}")
    got = sent[0]
    expect(got["name"] == the_job["name"] and got["args"] == {"n": 1}, f"job {got!r:.200}")
    defaults = {"status": "new", "attempt": 0, "run": 0, "defer": False, "priority": 0}
    for key, value in defaults.items():
        expect(got.get(key, value) == value, f"field {key} should default to {value!r}: {got!r}")
    for key in ("run_at", "period", "node", "max_attempt", "retry_delay", "timeout"):
        expect(got.get(key) is None, f"field {key} should default to null: {got!r:.300}")
    expect(got.get("not_node", []) == [], f"not_node should default to []: {got!r:.300}")
    report(node, the_job["id"], args={"n": 1, "done": True})
    outcome = outcome_of(client, the_job["id"])
    expect(outcome.get("status") == "complete", f"outcome {outcome!r:.200}")
    expect(outcome.get("feedback") == "success", f"outcome {outcome!r:.200}")
    expect(outcome.get("args") == {"n": 1, "done": True}, f"outcome args {outcome!r:.200}")


@check("4.9", "GetOutcome gives a finished job's outcome, null for an unknown id; RetryJobs")
def outcome_look_up(context: Context) -> None:
    client = context.client()
    node = context.node()
    unknown = new_id()
    reply = client.call("GetOutcome", job_id=unknown)
    expect_answer(reply, "GetOutcome of an unknown id")
    expect(b"outcome" not in reply.box or reply.json("outcome") is None, f"got {reply!r}")
    the_job = job(args={"n": 2})
    enqueue(client, the_job)
    take(node)
    report(node, the_job["id"], args={"n": 2, "done": True})
    outcome_of(client, the_job["id"])
    reply = client.call("GetOutcome", job_id=the_job["id"])
    expect_answer(reply, "GetOutcome")
    found = reply.json("outcome")
    expect(isinstance(found, dict), f"outcome must be an object, got {found!r:.200}")
    expect(
        (found.get("job_id"), found.get("status"), found.get("args"))
        == (the_job["id"], "done", {"n": 2, "done": True}),
        f"outcome {found!r:.300}",
    )
    retried = client.call("RetryJobs", job_ids=[the_job["id"], unknown])
    expect_answer(retried, "RetryJobs (§4.10)")
    expect(retried.json("retried") == [the_job["id"]], f"retried {retried!r}")
    expect([e.get("id") for e in retried.json("rejected")] == [unknown], f"{retried!r}")
    again = take(node)
    expect([j["id"] for j in again] == [the_job["id"]], f"the retried job: {again!r:.200}")
    expect(again[0].get("args") == {"n": 2}, f"a retry runs the args as enqueued: {again!r:.200}")
    report(node, the_job["id"], run=again[0].get("run", 1) + 1)
    outcome_of(client, the_job["id"])


@check("4.5", "Enqueue resets status, run and attempt")
def enqueue_resets(context: Context) -> None:
    client = context.client()
    node = context.node()
    the_job = job(status="failed", run=5, attempt=3)
    enqueue(client, the_job)
    sent = take(node)
    got = sent[0] if sent else {}
    expect(
        (got.get("status"), got.get("run"), got.get("attempt")) == ("new", 0, 0),
        f"RunJobs should carry status new, run 0, attempt 0, got {got!r:.300}",
    )
    report(node, the_job["id"])
    outcome_of(client, the_job["id"])


@check("4.5", "malformed jobs are rejected with their id; a resent id is accepted once")
def enqueue_rejections(context: Context) -> None:
    client = context.client()
    other = context.client("other")
    waiting = job(node=None, run_at=time.time() + 3600)  # no node: it waits
    bad_field = job(colour="red")
    no_name = {"id": new_id(), "args": {}}
    reply = enqueue(client, waiting, bad_field, no_name, {"name": "x", "args": {}})
    expect(reply.json("accepted") == [waiting["id"]], f"accepted {reply.json('accepted')!r}")
    rejected = reply.json("rejected")
    ids = [entry.get("id") for entry in rejected]
    expect(ids == [bad_field["id"], no_name["id"], None], f"rejected {rejected!r:.300}")
    expect(all(isinstance(e.get("error"), str) and e["error"] for e in rejected), "errors")
    again = enqueue(client, waiting)
    expect(again.json("accepted") == [waiting["id"]], f"a resend: {again!r}")
    taken = enqueue(other, waiting)
    expect(
        [e.get("id") for e in taken.json("rejected")] == [waiting["id"]],
        f"the same id from another sender must be rejected: {taken!r}",
    )
    cancelled = client.call("CancelJobs", job_ids=[waiting["id"]])
    expect_answer(cancelled, "CancelJobs")
    expect(cancelled.json("cancelled") == [waiting["id"]], f"cancelled {cancelled!r}")
    outcome = outcome_of(client, waiting["id"])
    expect(
        (outcome.get("status"), outcome.get("feedback"), outcome.get("final"))
        == ("cancelled", None, True),
        f"a job cancelled while waiting ends cancelled, feedback null (§4.4): {outcome!r:.200}",
    )


@check("4.2", "a job left out of the RunJobs answer goes back to the queue")
def neither_list(context: Context) -> None:
    client = context.client()
    node = context.node()
    the_job = job()
    enqueue(client, the_job)
    box = node.next_command("RunJobs")
    node.answer(box, accepted=[], parked=[], rejected=[])
    resent = take(node, timeout=context.settings.timeout + 2)
    expect([j["id"] for j in resent] == [the_job["id"]], f"RunJobs again carried {resent!r:.200}")
    report(node, the_job["id"])
    outcome_of(client, the_job["id"])


@check("4.2", "a rejection with id null counts as a job left out: it goes back to the queue")
def null_rejection(context: Context) -> None:
    client = context.client()
    node = context.node()
    the_job = job()
    enqueue(client, the_job)
    box = node.next_command("RunJobs")
    refusal = {"id": None, "error": "unreadable", "retry": False}
    node.answer(box, accepted=[], parked=[], rejected=[refusal])
    resent = take(node, timeout=context.settings.timeout + 2)
    expect([j["id"] for j in resent] == [the_job["id"]], f"RunJobs again carried {resent!r:.200}")
    report(node, the_job["id"])
    outcome_of(client, the_job["id"])


@check("4.2", "a rejection with retry false fails the job (RejectedByNode)")
def rejected_for_good(context: Context) -> None:
    client = context.client()
    node = context.node()
    the_job = job()
    enqueue(client, the_job)
    box = node.next_command("RunJobs")
    refusal = {"id": the_job["id"], "error": "no such thing here", "retry": False}
    node.answer(box, accepted=[], parked=[], rejected=[refusal])
    outcome = outcome_of(client, the_job["id"])
    expect(
        (outcome.get("status"), outcome.get("feedback"), outcome.get("final"))
        == ("failed", "error", True)
        and outcome.get("error_type") == "RejectedByNode",
        f"expected a failed RejectedByNode outcome, got {outcome!r:.300}",
    )


@check("4.6", "an error answer to Outcomes keeps the reports: they are sent again")
def outcomes_retried(context: Context) -> None:
    client = context.client()
    node = context.node()
    the_job = job()
    enqueue(client, the_job)
    take(node)
    report(node, the_job["id"])
    first = client.next_command("Outcomes")
    client.refuse(first, "BAD_MESSAGE", "not now")
    outcome = outcome_of(client, the_job["id"], timeout=context.settings.timeout + 2)
    expect(outcome.get("status") == "complete", f"the resent report: {outcome!r:.200}")


@check("4.4", "CancelJobs for a job on a node reaches the node; its report reaches the client")
def cancel_on_node(context: Context) -> None:
    client = context.client()
    node = context.node()
    the_job = job()
    enqueue(client, the_job)
    take(node)
    reply = client.call("CancelJobs", job_ids=[the_job["id"], new_id()])
    expect_answer(reply, "CancelJobs")
    expect(reply.json("cancelled") == [the_job["id"]], f"cancelled {reply!r}")
    box = node.next_command("CancelJobs")
    expect(the_job["id"] in get_json(box, "job_ids"), "the node's CancelJobs names the job")
    node.answer(box, cancelled=[the_job["id"]])
    report(node, the_job["id"], status="cancelled", feedback=None, args={})
    outcome = outcome_of(client, the_job["id"])
    expect(
        (outcome.get("status"), outcome.get("feedback")) == ("cancelled", None),
        f"outcome {outcome!r:.200}",
    )


@check("4.7", "after Leaving a node gets no jobs")
def leaving(context: Context) -> None:
    client = context.client()
    leaver = context.node("leaver", slots=5)
    expect_answer(leaver.call("Leaving"), "Leaving")
    the_job = job()
    enqueue(client, the_job)
    expect(gets_none(leaver, 1.0), "a node that sent Leaving got RunJobs")
    stayer = context.node("stayer")
    run_to_completion(context, stayer, client, the_job)


@check("4.7", "Leaving from a client is BAD_MESSAGE")
def client_leaving(context: Context) -> None:
    client = context.client()
    expect_error(client.call("Leaving"), "BAD_MESSAGE", "Leaving from a client")
    expect(client.still_answers(), "the session must go on")


@check("5.1", "node is a preference: a job goes to the named node when it has room")
def node_preference(context: Context) -> None:
    client = context.client()
    first = context.node("first", slots=5)
    second = context.node("second", slots=5)
    the_job = job(node=context.name("second"))
    enqueue(client, the_job)
    run_to_completion(context, second, client, the_job)
    expect(gets_none(first, 0.2), "the other node got the job too")
    elsewhere = job(node=context.name("absent"), not_node=[context.name("second")])
    enqueue(client, elsewhere)
    run_to_completion(context, first, client, elsewhere)


@check("5.3", "waiting jobs are sent by priority, highest first")
def priority(context: Context) -> None:
    client = context.client()
    low, high = job(priority=-5), job(priority=7)
    enqueue(client, low, high)
    node = context.node(slots=1)
    first = take(node)
    expect([j["id"] for j in first] == [high["id"]], f"first RunJobs carried {first!r:.200}")
    report(node, high["id"])
    second = take(node)
    expect([j["id"] for j in second] == [low["id"]], f"second RunJobs carried {second!r:.200}")
    report(node, low["id"])
    outcome_of(client, high["id"])
    outcome_of(client, low["id"])


@check("4.1", "a reconnecting node keeps the jobs it lists in held, loses the others")
def held_on_reconnect(context: Context) -> None:
    client = context.client()
    node = context.node("worker", slots=2)
    kept, lost = job(), job()
    enqueue(client, kept, lost)
    taken = take(node)
    if len(taken) < 2:
        taken += take(node)
    expect(len(taken) == 2, f"a node with 2 slots should get both jobs, got {taken!r:.200}")
    node.close()
    again = reconnect(context, "worker", held=[kept["id"]], slots=2)  # kept takes one
    reply_drop = again[1]
    expect(reply_drop == [], f"drop must be empty for a held job still placed here: {reply_drop}")
    node = again[0]
    resent = take(node)
    expect([j["id"] for j in resent] == [lost["id"]], f"only the unlisted job comes back {resent}")
    report(node, kept["id"])
    report(node, lost["id"])
    outcome_of(client, kept["id"])
    outcome_of(client, lost["id"])


@check("4.1", "a job a reconnecting node holds takes its slot again")
def held_takes_a_slot(context: Context) -> None:
    client = context.client()
    node = context.node("busy", slots=1)
    running = job()
    enqueue(client, running)
    take(node)
    node.close()
    node, drop = reconnect(context, "busy", held=[running["id"]], slots=1)
    expect(drop == [], f"drop {drop}")
    waiting = job()
    enqueue(client, waiting)
    expect(gets_none(node, 1.0), "a node with its one slot held got another job")
    report(node, running["id"])
    taken = take(node)
    expect([j["id"] for j in taken] == [waiting["id"]], f"RunJobs carried {taken!r:.200}")
    report(node, waiting["id"])
    outcome_of(client, running["id"])
    outcome_of(client, waiting["id"])


@check("5.2", "outcomes wait for an absent client; resending the job meanwhile runs it once")
def mailbox_and_resend(context: Context) -> None:
    client = context.client("app")
    node = context.node()
    the_job = job()
    enqueue(client, the_job)
    take(node)
    client.close()
    report(node, the_job["id"])
    client, _ = reconnect(context, "app", held=[], slots=0)
    again = enqueue(client, the_job)  # as a client resends what it has no outcome for
    expect(again.json("accepted") == [the_job["id"]], f"the resend: {again!r}")
    outcome = outcome_of(client, the_job["id"])
    expect(outcome.get("status") == "complete", f"the kept outcome: {outcome!r:.200}")
    expect(gets_none(node, 1.0), "the job was run a second time")


def reconnect(context: Context, role: str, held: list[str], slots: int = 1) -> tuple[Peer, Any]:
    """Say Hello again under ``role`` once the distributor has seen the old connection go."""
    deadline = time.monotonic() + context.settings.timeout
    while True:
        peer = context.raw()
        reply = context.hello(peer, context.name(role), slots, held)
        if not reply.is_error:
            return peer, reply.json("drop")
        if reply.code != "DUPLICATE_NODE_NAME" or time.monotonic() > deadline:
            raise Failed(f"Hello after a reconnect: {reply!r}")
        peer.close()
        time.sleep(0.1)


def context_for(settings: Settings) -> Context:
    return Context(settings)


__all__ = ["Box", "context_for", "suite"]
