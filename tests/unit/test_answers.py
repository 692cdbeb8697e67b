"""Reading a RunJobs answer (protocol.md §4.2): every job of the box lands in one place."""

from __future__ import annotations

from typing import Any

from jobreactor.answers import RunJobsVerdict, read_run_jobs_answer


def answer(accepted: Any = (), parked: Any = (), rejected: Any = ()) -> dict[str, Any]:
    return {"accepted": list(accepted), "parked": list(parked), "rejected": list(rejected)}


def test_accepted_jobs_run_or_park() -> None:
    verdict = read_run_jobs_answer(["a", "b"], answer(["a", "b"], ["b"]))

    assert verdict == RunJobsVerdict(running=("a",), parked=("b",))


def test_rejections_retry_or_fail_by_their_flag() -> None:
    rejected = [
        {"id": "a", "error": "storage down", "retry": True},
        {"id": "b", "error": "bad job", "retry": False},
    ]

    verdict = read_run_jobs_answer(["a", "b"], answer(rejected=rejected))

    assert verdict.retry == (("a", "storage down"),)
    assert verdict.failed == (("b", "bad job"),)


def test_a_job_in_neither_list_is_unaccounted_for() -> None:
    verdict = read_run_jobs_answer(["a", "b"], answer(["a"]))

    assert verdict.running == ("a",)
    assert verdict.unaccounted == ("b",)


def test_a_rejection_without_an_id_accounts_for_no_job() -> None:
    rejected = [{"id": None, "error": "unreadable", "retry": False}]

    verdict = read_run_jobs_answer(["a"], answer(rejected=rejected))

    assert verdict == RunJobsVerdict(unaccounted=("a",))


def test_accepted_wins_over_rejected_and_unknown_ids_are_ignored() -> None:
    rejected = [{"id": "a", "error": "x", "retry": False}, {"id": "zzz", "error": "y"}]

    verdict = read_run_jobs_answer(["a"], answer(["a", "other"], rejected=rejected))

    assert verdict == RunJobsVerdict(running=("a",))


def test_lists_of_the_wrong_shape_account_for_nothing() -> None:
    verdict = read_run_jobs_answer(
        ["a"], {"accepted": "a", "parked": None, "rejected": {"id": "a"}}
    )

    assert verdict == RunJobsVerdict(unaccounted=("a",))


def test_a_rejection_without_a_message_gets_one() -> None:
    verdict = read_run_jobs_answer(["a"], answer(rejected=[{"id": "a", "retry": False}]))

    assert verdict.failed == (("a", "refused by the node"),)
