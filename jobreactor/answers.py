"""Reading a node's answer to ``RunJobs`` (docs/protocol.md §4.2), apart from the distributor.

The answer is the node's word on each job of the box, and a node in another language may get
it wrong: an id in neither list, a rejection whose id is ``null``, lists that are not lists.
Every job of the box must end up in exactly one place, so that none stays assigned to a node
that does not have it: a job the answer does not account for is treated as refused for the
node's own trouble (``retry: true``) and goes back to the queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs


@attrs.frozen
class RunJobsVerdict:
    """What became of each job of one ``RunJobs`` box, by id."""

    #: On the node and due now: each takes one of its slots.
    running: tuple[str, ...] = ()
    #: On the node, waiting for a later time: no slot.
    parked: tuple[str, ...] = ()
    #: Refused for the node's trouble: back to the queue. ``(id, error)``.
    retry: tuple[tuple[str, str], ...] = ()
    #: Refused as malformed: the job fails. ``(id, error)``.
    failed: tuple[tuple[str, str], ...] = ()
    #: In neither list (or only in a rejection without an id): back to the queue.
    unaccounted: tuple[str, ...] = ()


def _ids(value: Any) -> set[str]:
    if not isinstance(value, list):
        return set()
    return {item for item in value if isinstance(item, str)}


def read_run_jobs_answer(sent: Iterable[str], answer: dict[str, Any]) -> RunJobsVerdict:
    """Sort the ids of the jobs ``sent`` in one box by the node's ``answer``.

    An id listed as accepted counts as accepted even if it is also rejected (the node holds
    it, so sending it elsewhere could run it twice). Ids the box did not carry are ignored.
    """
    sent_ids = list(dict.fromkeys(sent))
    accepted = _ids(answer.get("accepted"))
    parked = _ids(answer.get("parked"))
    refusals: dict[str, tuple[bool, str]] = {}
    rejected = answer.get("rejected")
    for refusal in rejected if isinstance(rejected, list) else []:
        if not isinstance(refusal, dict) or not isinstance(refusal.get("id"), str):
            continue
        error = refusal.get("error")
        message = error if isinstance(error, str) and error else "refused by the node"
        refusals.setdefault(refusal["id"], (refusal.get("retry") is True, message))
    running: list[str] = []
    parked_out: list[str] = []
    retry: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    unaccounted: list[str] = []
    for job_id in sent_ids:
        if job_id in accepted:
            (parked_out if job_id in parked else running).append(job_id)
        elif job_id in refusals:
            again, message = refusals[job_id]
            (retry if again else failed).append((job_id, message))
        else:
            unaccounted.append(job_id)
    return RunJobsVerdict(
        running=tuple(running),
        parked=tuple(parked_out),
        retry=tuple(retry),
        failed=tuple(failed),
        unaccounted=tuple(unaccounted),
    )
