"""``jr distributor ...``: what a distributor keeps in its storage, and retrying or cancelling.

Reading (``waiting``, ``running``, ``outcomes``, ``show``) opens the distributor's storage
(``--storage``, the URL it was started with) and is safe while it runs. Changing
(``retry``, ``cancel``) asks the running distributor itself over its port
(``--distributor ENDPOINT``), so its memory and its storage stay one.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from twisted.internet.defer import Deferred

from jobreactor.results import Outcome
from jobreactor.storage.ledger import OUTCOME_SELECTIONS, open_ledger


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "distributor",
        parents=[common],
        help="jobs and outcomes a distributor keeps; retry or cancel through it",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, what in (
        ("waiting", "jobs waiting in the distributor for a node, in the order they go"),
        ("running", "jobs the distributor has placed on nodes"),
    ):
        listing = actions.add_parser(name, parents=[common], help=what)
        listing.add_argument("--limit", type=int, default=100, help="at most this many rows")
    outcomes = actions.add_parser("outcomes", parents=[common], help="final outcomes, newest first")
    outcomes.add_argument(
        "--status",
        default="all",
        choices=OUTCOME_SELECTIONS,
        help="done, failed or cancelled; pending / unhandled (result handlers); undelivered",
    )
    outcomes.add_argument("--limit", type=int, default=50)
    show = actions.add_parser(
        "show", parents=[common], help="one job's outcome, or its record if unfinished"
    )
    show.add_argument("job_id", metavar="ID")
    for name, what in (
        ("retry", "run a finished job again (same id and args)"),
        ("cancel", "cancel a job"),
    ):
        action = actions.add_parser(
            name, parents=[common], help=what + ", through the running distributor"
        )
        action.add_argument("job_id", metavar="ID")
        action.add_argument(
            "--distributor",
            metavar="ENDPOINT",
            required=True,
            help="the distributor's endpoint, e.g. tcp:host=localhost:port=5000",
        )


async def run(args: argparse.Namespace, out: TextIO) -> None:
    """Run ``jr distributor ACTION``; raises ``CommandError`` on a one-line failure."""
    from jobreactor.cli import CommandError

    if args.action in ("retry", "cancel"):
        await _through_distributor(args, out)
        return
    if not args.storage:
        raise CommandError("say which storage with --storage URL (or set JR_STORAGE)", 2)
    ledger = open_ledger(args.storage, create=False)
    if not ledger.durable:
        raise CommandError(
            "memory storage lives inside the distributor's process and cannot be read from "
            "outside; start the distributor with --storage sqlite:PATH or redis://...",
            2,
        )
    await ledger.open()
    try:
        if args.action in ("waiting", "running"):
            records = await ledger.jobs()
            wanted = [r for r in records if (r.get("node") is None) == (args.action == "waiting")]
            if args.action == "waiting":  # the order they are dispatched in
                wanted.sort(key=lambda r: -int(r["job"].get("priority", 0)))
            rows = [_job_row(record) for record in wanted[: max(args.limit, 0)]]
            if args.json:
                _print_json(rows, out)
            else:
                _print_table(["ID", "NAME", "NODE", "PRIORITY", "ORIGIN"], rows, out)
                if len(wanted) > len(rows):
                    print(f"... and {len(wanted) - len(rows)} more (--limit)", file=out)
        elif args.action == "outcomes":
            found = await ledger.outcomes(args.status, args.limit)
            if args.json:
                _print_json([_public(o) for o in found], out)
            else:
                _print_table(
                    ["ID", "NAME", "STATUS", "RUN", "HANDLED", "ERROR"],
                    [_outcome_row(o) for o in found],
                    out,
                )
        elif args.action == "show":
            outcome = await ledger.outcome(args.job_id)
            if outcome is not None:
                _print_json(_public(outcome), out)
                return
            records = {r["job"]["id"]: r for r in await ledger.jobs()}
            record = records.get(args.job_id)
            if record is None:
                raise CommandError(f"no job or outcome {args.job_id} in {ledger}")
            _print_json(record, out)
    finally:
        await ledger.close()


async def _through_distributor(args: argparse.Namespace, out: TextIO) -> None:
    from jobreactor.cli import CommandError
    from jobreactor.client import connect
    from jobreactor.protocol import CancelJobs, RetryJobs

    if ":" not in args.distributor:
        raise CommandError(
            f"{args.distributor!r} is not an endpoint string; write tcp:host=HOST:port=PORT", 2
        )
    client = connect(args.distributor, name=f"jr-{args.action}")
    try:
        connected: Deferred[Any] = client.when_connected()
        from twisted.internet import reactor

        connected.addTimeout(10, reactor)
        try:
            await connected
        except Exception as error:
            raise CommandError(
                f"cannot reach the distributor at {args.distributor}: {error}"
            ) from None
        protocol = client.submitter.protocol
        assert protocol is not None
        if args.action == "cancel":
            answer = await protocol.callRemote(CancelJobs, job_ids=[args.job_id])
            if args.job_id not in answer["cancelled"]:
                raise CommandError(f"the distributor has no unfinished job {args.job_id}")
            print(f"cancelling job {args.job_id}", file=out)
        else:
            answer = await protocol.callRemote(RetryJobs, job_ids=[args.job_id])
            for refusal in answer["rejected"]:
                raise CommandError(f"job {refusal['id']} cannot be retried: {refusal['error']}")
            print(f"job {args.job_id} queued again", file=out)
    finally:
        await client.stopService()


def _job_row(record: dict[str, Any]) -> list[str]:
    job = record["job"]
    return [
        _clean(job["id"]),
        _clean(job["name"]),
        _clean(record.get("node") or "-"),
        str(job.get("priority", 0)),
        _clean(record.get("origin") or "-"),
    ]


def _outcome_row(outcome: Outcome) -> list[str]:
    error = outcome.error or "-"
    error = error if len(error) <= 40 else error[:39] + "…"
    return [
        _clean(outcome.job_id),
        _clean(outcome.name),
        outcome.status,
        str(outcome.run),
        outcome.handled,
        _clean(error),
    ]


def _public(outcome: Outcome) -> dict[str, Any]:
    data = outcome.to_json()
    data.pop("job", None)
    return data


def _clean(text: str) -> str:
    """Control characters shown escaped: a job id must not drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _print_table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=repr), file=out)
