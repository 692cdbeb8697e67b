"""The dashboard in a real headless chromium, against a real cluster (node processes over TCP).

The page is loaded once; everything after that arrives over its Server-Sent Events stream
(a marker set on ``window`` after the first load must survive: no reload happened).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from jobreactor import Distributor, JobCancelled, JobFailed
from jobreactor.web import Dashboard

from .browser import Browser, chromium_path
from .conftest import NodeProcesses, bounded, port_of

pytestmark = [pytest.mark.integration]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    # run-tests.sh installs Debian's chromium: a missing one is a failed install, not a skip.
    assert chromium_path() is not None, "no chromium: run bash scripts/bootstrap.sh --chromium"
    browser = Browser(tmp_path / "chromium-profile", height=1250)
    yield browser
    browser.close()


@pytest.fixture
def dashboard(distributor: Distributor) -> Iterator[Dashboard]:
    dashboard = Dashboard(distributor, "tcp:0:interface=127.0.0.1", reactor=reactor)
    dashboard.startService()
    pytest_twisted.blockon(bounded(dashboard.when_listening(), 5))
    yield dashboard
    pytest_twisted.blockon(dashboard.stopService())


def text_of(selector: str) -> str:
    return f"(document.querySelector({selector!r}) || {{}}).innerText || ''"


@pytest_twisted.ensureDeferred
async def test_overview_job_pages_and_cancel_in_a_real_browser(
    distributor: Distributor,
    nodes: NodeProcesses,
    dashboard: Dashboard,
    browser: Browser,
    tmp_path: Path,
) -> None:
    nodes.start("worker_1", port_of(distributor), slots=4)
    nodes.start("worker_2", port_of(distributor), slots=4)
    await bounded(distributor.when_nodes(names=["worker_1", "worker_2"]))
    # No node may take it: it waits at the distributor until it is cancelled.
    stuck = distributor.enqueue("my_job", {"n": "stuck"}, not_node=["worker_1", "worker_2"])
    stuck_outcome: list[object] = []
    stuck.deferred.addErrback(lambda failure: stuck_outcome.append(failure.trap(JobCancelled)))
    for n in range(6):
        distributor.enqueue("my_job", {"n": n})

    def call(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        result: defer.Deferred[Any] = bounded(deferToThread(function, *args), 30)
        return result

    await call(browser.goto, dashboard.url)
    await call(
        browser.wait_for,
        f"{text_of('#nodes')}.includes('worker_1') && {text_of('#nodes')}.includes('worker_2')",
        "both nodes on the overview",
    )
    await call(browser.evaluate, "window.jrMarker = 'no reload'")

    # A job enqueued now shows up and moves to done, pushed to the open page.
    sleepy = distributor.enqueue("sleepy", {"seconds": 0.6})
    await call(browser.evaluate, f"location.hash = '#/job/{sleepy.id}'")
    await call(browser.wait_for, f"{text_of('main')}.includes('on node')", "the job on its node")
    await bounded(sleepy.deferred)
    await call(browser.wait_for, f"{text_of('main')}.includes('complete')", "the job complete")
    await call(browser.evaluate, "location.hash = '#/'")
    await call(
        browser.wait_for,
        f"(document.querySelector('#recent a[data-job=\"{sleepy.id}\"]') || {{}})"
        ".parentElement?.parentElement?.innerText.includes('complete')",
        "the job among the recently finished",
    )

    # A failing job shows its error and traceback on its page.
    failing = distributor.enqueue("failing", {"n": 7})
    with pytest.raises(JobFailed):
        await bounded(failing.deferred)
    await call(browser.evaluate, f"location.hash = '#/job/{failing.id}'")
    error = await call(browser.wait_for, text_of("#error"), "the failed job's error")
    assert error == "ValueError: broken 7"
    page = await call(browser.evaluate, text_of("main"))
    assert "Attempt\n2\n" in page and "Node\nworker_" in page and "[object" not in page
    traceback = await call(browser.evaluate, text_of("#traceback"))
    assert 'raise ValueError("broken " + str(args.get("n")))' in str(traceback)

    # The cancel button of a waiting job cancels it.
    await call(browser.evaluate, "location.hash = '#/'")
    await call(
        browser.wait_for,
        f"document.querySelector('#waiting-jobs a[data-job=\"{stuck.id}\"]') !== null",
        "the stuck job",
    )
    await call(browser.screenshot, tmp_path / "overview.png")
    cancel_button = "document.querySelector('#waiting-jobs button[data-action=cancel]')"
    await call(browser.evaluate, cancel_button + ".click()")
    await bounded(stuck.deferred, 10)
    assert stuck_outcome == [JobCancelled]
    await call(
        browser.wait_for, f"{text_of('#waiting-jobs')}.includes('No job waits')", "no waiting job"
    )

    assert await call(browser.evaluate, "window.jrMarker") == "no reload"
    assert browser.console == [], "the page raised JavaScript errors"
    assert (tmp_path / "overview.png").stat().st_size > 10_000
