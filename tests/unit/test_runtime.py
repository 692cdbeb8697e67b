"""Mistakes with JR and handles are told at once, not left to hang."""

from __future__ import annotations

import pytest
from twisted.python import threadable

from jobreactor import JobHandle, JobReactor, NotRunningError


def test_run_forever_refuses_a_setup_that_is_not_callable() -> None:
    runtime = JobReactor()
    with pytest.raises(TypeError, match=r"lambda: JR\.start_node"):
        runtime.run_forever(object())  # type: ignore[arg-type]


def test_wait_ready_before_run_says_so() -> None:
    with pytest.raises(NotRunningError, match=r"JR\.run"):
        JobReactor().wait_ready(timeout=0.1)


def test_enqueue_with_nothing_started_says_what_to_start() -> None:
    with pytest.raises(NotRunningError, match=r"start_distributor or JR\.connect"):
        JobReactor().enqueue("my_job", {})


def test_result_in_the_reactor_thread_raises_instead_of_freezing_it() -> None:
    handle = JobHandle("id-1", "my_job", lambda handle: None)
    threadable.registerAsIOThread()
    with pytest.raises(RuntimeError, match="reactor thread"):
        handle.result(timeout=None)
    handle._settle({"done": True})
    assert handle.result(timeout=None) == {"done": True}, "a settled handle answers anywhere"
