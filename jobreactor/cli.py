"""The ``jr`` command: look at and clean the jobs a node keeps in its storage.

(``jr nodes`` and ``jr stats`` ask a running distributor instead: see :mod:`jobreactor.cli_live`.)

``jr --storage URL list [NODE] [--status S]`` (every node's jobs without NODE), ``show
[NODE] ID`` (the job on any node without NODE), ``destroy NODE ID``,
``destroy-all NODE [--yes]`` and ``counts``; ``--json`` prints JSON instead of a table.
``--storage`` and ``--json`` may come before or after the command. Memory storage lives in
each node's process, so ``--storage memory`` is refused with a line saying so.
The storage URL may also come from the ``JR_STORAGE`` environment variable. Exit status:
0 done, 1 the storage failed or the job is not there (or destroy-all was not confirmed),
2 the command line or the storage URL is wrong. Errors are one line on standard error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet import task
from twisted.internet.defer import Deferred

from jobreactor import cli_distributor
from jobreactor.cli_live import LIVE_COMMANDS, add_live_commands, run_live
from jobreactor.errors import ConfigError, JobReactorError
from jobreactor.limits import printable
from jobreactor.model import Job, Status
from jobreactor.monitor import Monitor, parse_status
from jobreactor.storage import STORAGE_FORMS, IJobStorage, open_storage

#: What ``--storage`` says for the storage that lives only inside each node's process.
MEMORY_FORMS = ("memory", "memory_storage")
MEMORY_IS_PRIVATE = (
    "memory storage lives inside each node's process and ends with it, so jr cannot see it; "
    "to inspect jobs, run the nodes with --storage sqlite:/path/jobs.db or redis://host:6379/0 "
    "and give jr the same URL"
)

#: Fields shown as times (POSIX seconds in storage).
TIME_FIELDS = ("run_at", "failed_at", "enqueued_at")


class CommandError(Exception):
    """A failure to report in one line, with the exit status to leave with."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jr",
        description="Look at and clean the jobs that jobreactor nodes keep in their storage.",
        epilog=f"Storage URLs: {STORAGE_FORMS}.",
    )
    _add_common_options(parser, os.environ.get("JR_STORAGE"), False)
    # The same options after the command (jr counts --json): SUPPRESS leaves what was given
    # before the command alone unless the option is given again after it.
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, argparse.SUPPRESS, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list", parents=[common], help="list the jobs of a node (of every node without NODE)"
    )
    listing.add_argument("node", nargs="?", metavar="NODE")
    listing.add_argument(
        "--status",
        action="append",
        type=_status,
        metavar="S",
        help="only jobs in this status (repeatable): " + ", ".join(s.value for s in Status),
    )

    show = commands.add_parser(
        "show", parents=[common], help="show every field of one job: [NODE] ID (any node)"
    )
    show.add_argument("node", metavar="[NODE]")
    show.add_argument("job_id", nargs="?", metavar="ID")

    destroy = commands.add_parser(
        "destroy", parents=[common], help="remove one job from the storage"
    )
    destroy.add_argument("node")
    destroy.add_argument("job_id", metavar="ID")

    destroy_all = commands.add_parser(
        "destroy-all", parents=[common], help="remove every job of a node"
    )
    destroy_all.add_argument("node")
    destroy_all.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    commands.add_parser(
        "counts", parents=[common], help="how many jobs each node has in each status"
    )
    cli_distributor.add_commands(commands, common)
    add_live_commands(commands, common)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, storage: Any, json_: Any) -> None:
    parser.add_argument(
        "--storage",
        metavar="URL",
        default=storage,
        help="the storage the nodes use (default: $JR_STORAGE)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=json_,
        help="print JSON instead of a readable table",
    )


def _status(text: str) -> Status:
    try:
        return parse_status(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jr`` with ``argv`` (default: the command line) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "distributor":
        return _react(_run_distributor(args))
    if args.command in LIVE_COMMANDS:
        return run_live(args)
    if not args.storage:
        parser.error("say which storage with --storage URL (or set JR_STORAGE)")
    if args.storage.strip() in MEMORY_FORMS:
        return _fail(MEMORY_IS_PRIVATE, 2)
    if args.command == "show" and args.job_id is None:
        args.node, args.job_id = None, args.node  # jr show ID: look on every node
    try:
        storage = open_storage(args.storage, create=False)
    except ConfigError as error:
        return _fail(str(error), 2)
    try:
        task.react(lambda reactor: Deferred.fromCoroutine(_run(storage, args)))
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0  # pragma: no cover - react() always exits


def _react(work: Any) -> int:
    try:
        task.react(lambda reactor: Deferred.fromCoroutine(work))
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0  # pragma: no cover - react() always exits


async def _run_distributor(args: argparse.Namespace) -> None:
    status = 0
    try:
        await cli_distributor.run(args, sys.stdout)
    except CommandError as error:
        status = _fail(str(error), error.status)
    except (JobReactorError, ConfigError) as error:
        status = _fail(str(error), 1)
    except Exception as error:  # one line, never a traceback
        status = _fail(f"unexpected {type(error).__name__}: {error}", 1)
    raise SystemExit(status)


async def _run(storage: IJobStorage, args: argparse.Namespace) -> None:
    """Open the storage, run the command, close; raises SystemExit with the exit status."""
    status = 0
    try:
        await storage.open()
        try:
            await _command(Monitor(storage), args, sys.stdout)
        finally:
            await storage.close()
    except CommandError as error:
        status = _fail(str(error), error.status)
    except JobReactorError as error:
        status = _fail(str(error), 1)
    except Exception as error:  # one line, never a traceback
        status = _fail(f"unexpected {type(error).__name__}: {error}", 1)
    raise SystemExit(status)


def _fail(message: str, status: int) -> int:
    print(f"jr: error: {message}", file=sys.stderr)
    return status


async def _command(monitor: Monitor, args: argparse.Namespace, out: TextIO) -> None:
    if args.command == "list" and args.node is None:
        await _list_every_node(monitor, args, out)
    elif args.command == "show" and args.node is None:
        await _show_on_any_node(monitor, args.job_id, args.json, out)
    elif args.command == "list":
        jobs = await monitor.jobs_for(args.node, args.status)
        await _list_unreadable(monitor, [args.node], sys.stderr)
        if args.json:
            _print_json([job.to_wire() for job in jobs], out)
        elif not jobs:
            which = f" in status {', '.join(s.value for s in args.status)}" if args.status else ""
            print(f"node {args.node} has no jobs{which}", file=out)
        else:
            _print_table(
                ["ID", "NAME", "STATUS", "ATTEMPT", "RUN AT", "PERIOD", "LAST ERROR"],
                [_row(job) for job in jobs],
                out,
            )
    elif args.command == "show":
        job = await monitor.load(args.node, args.job_id)
        if job is None:
            raise CommandError(f"node {args.node} has no job {args.job_id}")
        if args.json:
            _print_json(job.to_wire(), out)
        else:
            _print_job(job, out)
    elif args.command == "destroy":
        destroyed = await monitor.destroy(args.node, args.job_id)
        if args.json:
            _print_json({"node": args.node, "id": args.job_id, "destroyed": destroyed}, out)
        if not destroyed:
            raise CommandError(f"node {args.node} has no job {args.job_id}")
        if not args.json:
            print(f"destroyed job {args.job_id} of node {args.node}", file=out)
    elif args.command == "destroy-all":
        count = len(await monitor.jobs_for(args.node))
        if count and not args.yes and not _confirm(args.node, count):
            raise CommandError("nothing destroyed (not confirmed; --yes skips the question)")
        removed = await monitor.destroy_all_jobs_for(args.node) if count else 0
        if args.json:
            _print_json({"node": args.node, "destroyed": removed}, out)
        else:
            print(f"destroyed {removed} job(s) of node {args.node}", file=out)
    elif args.command == "counts":
        counts = await monitor.counts()
        if args.json:
            _print_json(
                {node: {s.value: n for s, n in per.items()} for node, per in counts.items()}, out
            )
        elif not counts:
            print("no jobs stored", file=out)
        else:
            statuses = [s for s in Status if any(s in per for per in counts.values())]
            rows = [
                [node, *(str(per.get(s, 0)) for s in statuses), str(sum(per.values()))]
                for node, per in counts.items()
            ]
            headers = [s.value.upper().replace(" ", "-") for s in statuses]
            _print_table(["NODE", *headers, "TOTAL"], rows, out)


async def _list_every_node(monitor: Monitor, args: argparse.Namespace, out: TextIO) -> None:
    """``jr list`` with no node: every node's jobs, with a NODE column."""
    found = await monitor.all_jobs(args.status)
    await _list_unreadable(monitor, await monitor.nodes(), sys.stderr)
    if args.json:
        _print_json([{"stored_on": node, **job.to_wire()} for node, job in found], out)
    elif not found:
        which = f" in status {', '.join(s.value for s in args.status)}" if args.status else ""
        print(f"no jobs stored{which}", file=out)
    else:
        _print_table(
            ["NODE", "ID", "NAME", "STATUS", "ATTEMPT", "RUN AT", "PERIOD", "LAST ERROR"],
            [[node, *_row(job)] for node, job in found],
            out,
        )


async def _list_unreadable(monitor: Monitor, nodes: list[str], err: TextIO) -> None:
    """Rows a node set aside because they cannot be read: one line each, on stderr (the
    table or JSON on stdout stays what it was); ``jr destroy NODE ID`` removes one."""
    look = getattr(monitor.storage, "unreadable", None)
    if look is None:
        return
    for node in nodes:
        for job_id, why in await look(node):
            print(
                f"unreadable job {_safe(job_id)} of node {_safe(node)} (set aside): "
                f"{_safe(why)[:300]}",
                file=err,
            )


async def _show_on_any_node(monitor: Monitor, job_id: str, as_json: bool, out: TextIO) -> None:
    """``jr show ID``: the job on whichever node stores it (each one, if several do)."""
    found = await monitor.find(job_id)
    if not found:
        nodes = await monitor.nodes()
        looked = f" (looked at {len(nodes)} node(s): {', '.join(nodes)})" if nodes else ""
        raise CommandError(f"no node has a job {job_id}{looked}")
    if as_json:
        shown = [{"stored_on": node, **job.to_wire()} for node, job in found]
        _print_json(shown[0] if len(shown) == 1 else shown, out)
        return
    for index, (node, job) in enumerate(found):
        if index:
            print(file=out)
        _print_job(job, out, node=node)


def _confirm(node: str, count: int) -> bool:
    print(f"Destroy all {count} job(s) of node {node}? [y/N] ", end="", file=sys.stderr)
    sys.stderr.flush()
    answer = sys.stdin.readline()  # "" at end of input: no
    return answer.strip().lower() in ("y", "yes")


def _iso(seconds: float) -> str | None:
    """``seconds`` as a UTC time, or None if it is not in years 1 to 9999."""
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _when(seconds: float | None) -> str:
    """A time for the table: UTC, or the POSIX seconds themselves if no date can show it."""
    if seconds is None:
        return "-"
    return _iso(seconds) or repr(seconds)


def _schedule(job: Job) -> str:
    """The period column: seconds, or a cron expression with its zone."""
    if job.cron is not None:
        return f"{job.cron} ({job.timezone or 'UTC'})"
    return "-" if job.period is None else f"{job.period:g}s"


def _row(job: Job) -> list[str]:
    error = job.last_error or "-"
    return [
        job.id,
        job.name,
        job.status.value,
        str(job.attempt),
        _when(job.run_at),
        _schedule(job),
        error if len(error) <= 40 else error[:39] + "…",
    ]


def _safe(text: str) -> str:
    """``text`` with control characters (terminal escape codes) and lone surrogates shown
    as escapes: ids, names and errors come from whoever enqueued the job."""
    return printable(text, limit=1 << 30)


def _print_table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    rows = [[_safe(cell) for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in [headers, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(),
            file=out,
        )


def _print_job(job: Job, out: TextIO, node: str | None = None) -> None:
    wire: dict[str, Any] = {} if node is None else {"stored_on": node}
    wire.update(job.to_wire())
    width = max(len(field) for field in wire)
    for field, value in wire.items():
        if value is None:
            text = "-"
        elif field in TIME_FIELDS:
            moment = _iso(value)
            text = repr(value) if moment is None else f"{moment} ({value!r})"
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        print(f"{field.ljust(width)}  {_safe(text)}", file=out)


def _print_json(value: Any, out: TextIO) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if any(0x7F <= ord(char) < 0xA0 or 0xD800 <= ord(char) < 0xE000 for char in text):
        text = json.dumps(value, indent=2)  # \u escapes for what a terminal would obey
    print(text, file=out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
