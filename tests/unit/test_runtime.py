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


def test_enqueue_when_full_raises_or_waits_for_room() -> None:
    """Issue 12: ``JR.enqueue`` past the caps blocks the caller (a thread other than the
    reactor's) until there is room, or raises at once, as the caller chose."""
    import threading

    from twisted.internet.task import Clock

    from jobreactor import Distributor, QueueFullError

    runtime = JobReactor()
    runtime.config.update(max_waiting_jobs=1, enqueue_wait_timeout=10.0)
    clock = Clock()
    distributor = Distributor(None, config=runtime.config, clock=clock, reactor=clock)
    distributor.startService()
    runtime.distributor = distributor
    distributor.enqueue("my_job", {})
    with pytest.raises(QueueFullError, match="max_waiting_jobs"):
        runtime.enqueue("my_job", {}, when_full="raise")
    with pytest.raises(Exception, match="when_full"):
        runtime.enqueue("my_job", {}, when_full="maybe")
    with pytest.raises(QueueFullError, match="max_waiting_jobs"):
        distributor.enqueue("my_job", {})
    waited: list[object] = []

    def wait() -> None:
        runtime._wait_for_room(distributor, "wait")
        waited.append(None)

    thread = threading.Thread(target=wait)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and not waited  # still waiting: no room
    distributor._owned.clear()  # the job got its outcome: room again
    thread.join(5)
    assert waited == [None]
