"""``JR``: the original's entry point, for applications that are not written for Twisted.

A Flask or Django process calls ``JR.run(setup)`` once: the reactor then runs in a daemon
thread and ``JR.enqueue`` may be called from any thread. A process that is only a node or a
distributor calls ``JR.run_forever(setup)``, which runs the reactor in the calling thread.
Inside a Twisted application that already runs its reactor, call ``JR.start_distributor``
/ ``JR.start_node`` / ``JR.enqueue`` from the reactor thread with no ``run`` at all.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import threadable
from twisted.python.failure import Failure

from jobreactor.client import Client, connect
from jobreactor.config import Config
from jobreactor.credentials import Authority, WebLogins, authority_from_string
from jobreactor.dialing import unreachable_peers
from jobreactor.distributor import Distributor, Feedback, NodeInfo
from jobreactor.enqueueing import build_job, check_feedbacks
from jobreactor.errors import InvalidJobError, JobReactorError, NotRunningError, QueueFullError
from jobreactor.handle import JobHandle
from jobreactor.limits import Limits
from jobreactor.model import Job
from jobreactor.node import Node
from jobreactor.results import Outcome
from jobreactor.storage import IJobStorage
from jobreactor.unfinished import UnfinishedJobs, unfinished_message

if TYPE_CHECKING:
    from jobreactor.web import Dashboard


def _listen_description(host_or_endpoint: str, port: int | None) -> str:
    if port is None:
        return host_or_endpoint
    host = host_or_endpoint.replace(":", "\\:")  # IPv6 literals need escaping in endpoints
    return f"tcp:port={int(port)}:interface={host}"


def _check_setup(setup: Any) -> None:
    if setup is not None and not callable(setup):
        raise TypeError(
            f"setup must be a callable run in the reactor thread, e.g. "
            f"lambda: JR.start_node(...), not {type(setup).__name__} {setup!r:.60}"
        )


def _log_to_stderr(level: LogLevel) -> None:
    """Start Twisted's logging (to stderr, from ``level`` up) unless the application has.

    Without this, a worker script that cannot reach its distributor or storage says nothing.
    """
    if globalLogBeginner._temporaryObserver is None:  # type: ignore[attr-defined]
        return  # logging was begun already, by the application or twistd
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


#: How often a blocked ``JR.enqueue(when_full="wait")`` looks for room, in seconds.
ROOM_POLL_SECONDS = 0.05


class JobReactor:
    """The process-wide runtime behind :data:`JR`; it holds ``config`` and the started parts."""

    def __init__(self, reactor: Any = None) -> None:
        self.config = Config()
        self._reactor = reactor
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._setup_failure: Failure | None = None
        self._stop_on_failure = False
        self._ran = False
        self.distributor: Distributor | None = None
        #: The web dashboard of ``start_distributor(..., web=...)``, if one was asked for.
        self.dashboard: Dashboard | None = None
        self.client: Client | None = None
        self.nodes_started: list[Node] = []
        self._unfinished = UnfinishedJobs()

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- running the reactor ---------------------------------------------------------

    def run(self, setup: Callable[[], Any] | None = None) -> None:
        """Run the reactor in a daemon thread and call ``setup`` in it (the original's ``JR.run``).

        Returns at once; ``wait_ready`` blocks until ``setup`` (and any Deferred it returned)
        has finished. The reactor is stopped at interpreter exit.
        """
        _check_setup(setup)
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("JR.run was already called: the reactor runs in its thread")
        _log_to_stderr(LogLevel.warn)
        self._ran = True
        self._ready.clear()
        self.reactor.callWhenRunning(self._setup, setup)
        self._thread = threading.Thread(
            target=self.reactor.run,
            kwargs={"installSignalHandlers": False},
            name="jobreactor-reactor",
            daemon=True,
        )
        self._thread.start()
        atexit.register(self._exit)

    def run_forever(self, setup: Callable[[], Any] | None = None) -> None:
        """Run the reactor in this thread until it is stopped (the original's ``JR.run!``).

        If ``setup`` fails (a broken jobs file, a port in use), the reactor stops and its
        error is raised here, so a worker script exits instead of idling.
        """
        _check_setup(setup)
        _log_to_stderr(LogLevel.warn)
        self._ran = True
        self._ready.clear()
        self._setup_failure = None
        self._stop_on_failure = True
        self.reactor.callWhenRunning(self._setup, setup)
        self.reactor.run()
        if self._setup_failure is not None:
            self._setup_failure.raiseException()

    def _setup(self, setup: Callable[[], Any] | None) -> None:
        def done(result: Any) -> None:
            self._ready.set()

        def failed(failure: Failure) -> None:
            self._setup_failure = failure
            self._ready.set()
            from twisted.logger import Logger

            if failure.check(ValueError, JobReactorError):  # a mistake of the caller's
                Logger().error("JobReactor setup failed: {error}", error=failure.value)
            else:
                Logger().failure("JobReactor setup failed", failure)
            if self._stop_on_failure and self.reactor.running:
                self.reactor.stop()

        if setup is None:
            self._ready.set()
            return
        maybeDeferred(setup).addCallbacks(done, failed)

    def ready(self) -> bool:
        """Whether ``setup`` has finished (the original's ``JR.ready?``)."""
        return self._ready.is_set() and self._setup_failure is None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``setup`` has finished; raise its error, or ``TimeoutError``."""
        if not self._ran:
            raise NotRunningError("nothing to wait for: call JR.run(setup) first")
        if not self._ready.wait(timeout):
            reasons = "; ".join(unreachable_peers())
            raise TimeoutError(
                f"JobReactor was not ready within {timeout} s" + (f": {reasons}" if reasons else "")
            )
        if self._setup_failure is not None:
            self._setup_failure.raiseException()

    def _exit(self) -> None:
        """At interpreter exit: say which jobs end unfinished with the process, then stop."""
        self.report_unfinished()
        self.stop()

    def report_unfinished(self, out: TextIO | None = None) -> None:
        """Print one line on stderr if jobs enqueued here have no final outcome yet.

        Called at exit by ``JR.run``; a script that enqueues and ends at once would otherwise
        lose its jobs without a word.
        """
        message = unfinished_message(self._unfinished.pending(), self._waiting_for_node())
        if message is not None:
            print(message, file=out or sys.stderr, flush=True)

    def _waiting_for_node(self) -> int | None:
        """How many jobs this process's distributor holds for want of a node, if it has one.

        Read in the reactor thread after the calls already queued there (the last enqueues).
        """
        distributor = self.distributor
        if distributor is None:
            return None
        thread = self._thread
        if thread is None or not thread.is_alive() or threadable.isInIOThread():
            return distributor.waiting
        counted: list[int] = []
        done = threading.Event()

        def count() -> None:
            counted.append(distributor.waiting)
            done.set()

        self.reactor.callFromThread(count)
        done.wait(1.0)
        return counted[0] if counted else None

    def stop(self, timeout: float = 10) -> None:
        """Stop the started parts and the reactor; from any thread other than the reactor's."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return

        def shut_down() -> None:
            if self.reactor.running:
                self.reactor.stop()

        self.reactor.callFromThread(shut_down)
        thread.join(timeout)

    # -- starting parts ----------------------------------------------------------------

    def start_distributor(
        self,
        host_or_endpoint: str = "localhost",
        port: int | None = 5000,
        *,
        storage: str | Any = "memory",
        web: str | None = None,
        auth: str | Authority | None = None,
    ) -> Deferred[Distributor]:
        """Start a distributor listening on ``host:port`` (or a server endpoint string).

        ``storage`` (``"memory"``, ``"sqlite:PATH"``, ``"redis://..."``) is where it keeps
        its id, the jobs it owns and their outcomes, so that a restart loses nothing it
        acknowledged; see docs/durability.md. ``web`` (a server endpoint string such as
        ``tcp:8080:interface=127.0.0.1``) also serves the live dashboard and ``/metrics``
        there (see docs/dashboard.md); the dashboard is then ``JR.dashboard``. ``auth``
        (``"file:PATH"``, any twisted.cred checker string, or an :class:`Authority`) makes
        the distributor ask every peer for credentials (docs/security.md); a bad one raises
        ``ConfigError``. Call in the reactor thread (``setup`` runs there). Fires once it
        listens (after reloading what its storage held), and its dashboard too.
        """
        authority = authority_from_string(auth) if isinstance(auth, str) else auth
        distributor = Distributor(
            _listen_description(host_or_endpoint, port),
            config=self.config,
            storage=storage,
            reactor=self.reactor,
            portal=authority,
        )
        distributor.startService()
        self.distributor = distributor
        listening = distributor.when_listening()
        if web is not None:
            from jobreactor.web import Dashboard

            checkers: list[Any] | None = [WebLogins(authority)] if authority else None
            dashboard = Dashboard(distributor, web, reactor=self.reactor, checkers=checkers)
            dashboard.startService()
            self.dashboard = dashboard
            self.reactor.addSystemEventTrigger("before", "shutdown", dashboard.stopService)
            both: Deferred[list[Any]] = defer.gatherResults(
                [listening, dashboard.when_listening()],  # type: ignore[list-item]
                consumeErrors=True,
            )
            listening = both.addCallbacks(
                lambda _: distributor, lambda failure: failure.value.subFailure
            )

        def cannot_listen(failure: Failure) -> Failure:
            if self.distributor is distributor:
                self.distributor = None  # enqueue says so, instead of queueing for nobody
            return failure

        self.reactor.addSystemEventTrigger("before", "shutdown", distributor.stopService)
        return listening.addErrback(cannot_listen)

    def start_node(
        self,
        name: str,
        *,
        distributors: list[str | tuple[str, int]],
        storage: str | IJobStorage = "memory",
        jobs_directory: str | None = None,
        slots: int | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> Deferred[Node]:
        """Start a node that dials ``distributors``; fires once it is started.

        The jobs directory is loaded first: a broken jobs file raises here, naming the file,
        the line and the error. ``credentials=(user, password)`` for distributors that ask.
        """
        node = Node(
            name,
            distributors,
            storage=storage,
            jobs_directory=jobs_directory,
            slots=slots,
            config=self.config,
            reactor=self.reactor,
            credentials=credentials,
        )
        node.startService()
        self.nodes_started.append(node)
        self.reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
        return node.when_started()

    # -- the application's calls -------------------------------------------------------

    def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        success: Feedback | None = None,
        error: Feedback | None = None,
        when_full: str = "wait",
        **options: Any,
    ) -> JobHandle:
        """Queue a job from any thread; return its handle at once.

        Everything is checked here, in the caller's thread: a bad name, args or option
        raises :class:`InvalidJobError` before anything is sent. The feedbacks run later in
        the reactor thread, with the args as the node left them.

        When this process already holds as many jobs without an outcome as its caps allow
        (``max_waiting_jobs_per_sender`` for a client of a standalone distributor,
        ``max_waiting_jobs`` for an embedded one), ``when_full="wait"`` blocks the calling
        thread until there is room (at most ``enqueue_wait_timeout`` seconds) and
        ``when_full="raise"`` raises :class:`QueueFullError` at once; so does a call from
        the reactor thread, which must never block.
        """
        target: Distributor | Client | None = self.distributor or self.client
        if target is None:
            raise NotRunningError(
                "nowhere to enqueue: call JR.start_distributor or JR.connect first"
            )
        if when_full not in ("wait", "raise"):
            raise InvalidJobError(f'when_full must be "wait" or "raise", not {when_full!r}')
        check_feedbacks(success, error)
        self._wait_for_room(target, when_full)
        job = build_job(
            name,
            args,
            options,
            now=self.reactor.seconds(),
            max_args_bytes=self.config.max_args_bytes,
            limits=Limits.from_config(self.config),
        )
        handle = JobHandle(job.id, job.name, self._cancel)
        if isinstance(target, Client) or target.storage.durable:
            handle._awaiting_acceptance()  # wait_accepted() must not return before submit ran
        self._unfinished.add(handle)
        self._call_in_reactor(self._submit, target, job, success, error, handle)
        return handle

    def outcome(self, job_id: str, timeout: float = 10) -> Outcome | None:
        """The stored final outcome of ``job_id`` (None if there is none); blocks a
        non-reactor thread, for at most ``timeout`` seconds. See docs/durability.md."""
        target: Distributor | Client | None = self.distributor or self.client
        if target is None:
            raise NotRunningError("no distributor: call JR.start_distributor or JR.connect first")
        if threadable.isInIOThread():
            raise RuntimeError("JR.outcome blocks: in the reactor thread use distributor.outcome()")

        def ask() -> Deferred[Any]:
            assert target is not None
            asked: Deferred[Any] = target.outcome(job_id)
            return asked.addTimeout(timeout, self.reactor)

        try:
            found: Any = blockingCallFromThread(self.reactor, ask)
        except defer.TimeoutError:
            raise TimeoutError(f"no answer about job {job_id} within {timeout} s") from None
        return found if isinstance(found, Outcome) else None

    def _is_full(self, target: Distributor | Client) -> bool:
        if isinstance(target, Client):
            return target.submitter.full
        return target.pending >= self.config.max_waiting_jobs

    def _wait_for_room(self, target: Distributor | Client, when_full: str) -> None:
        """Block (off the reactor thread, if asked) until ``target`` has room, or raise."""
        if not self._is_full(target):
            return
        cap = "max_waiting_jobs_per_sender" if isinstance(target, Client) else "max_waiting_jobs"
        if when_full == "raise" or threadable.isInIOThread():
            raise QueueFullError(f"{target.pending} jobs wait for an outcome ({cap}); try later")
        deadline = time.monotonic() + self.config.enqueue_wait_timeout
        while self._is_full(target):
            if time.monotonic() >= deadline:
                raise QueueFullError(
                    f"{target.pending} jobs still wait for an outcome after "
                    f"{self.config.enqueue_wait_timeout} s ({cap}, enqueue_wait_timeout)"
                )
            time.sleep(ROOM_POLL_SECONDS)

    @staticmethod
    def _submit(
        target: Distributor | Client,
        job: Job,
        success: Feedback | None,
        error: Feedback | None,
        handle: JobHandle,
    ) -> None:
        try:
            target.submit(job, success=success, error=error, handle=handle)
        except QueueFullError:  # filled up between the check and now: the handle says so
            handle._settle(Failure())

    def _cancel(self, handle: JobHandle) -> None:
        target: Distributor | Client | None = self.distributor or self.client
        if target is not None:
            self._call_in_reactor(target.cancel, handle)

    def connect(
        self,
        endpoint: str,
        *,
        name: str | None = None,
        on_unknown_outcome: Callable[[dict[str, Any]], Any] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> Deferred[Client]:
        """Use a standalone distributor (``twistd jr-distributor``) for ``JR.enqueue``.

        Call in the reactor thread (``setup`` runs there); fires once the distributor has
        accepted this client. With a stable ``name`` a connection blip loses no outcome, and
        a restarted process receives the outcomes of its predecessor's jobs through
        ``on_unknown_outcome(report)`` (default: a fresh name per process).
        ``credentials=(user, password)`` for a distributor that asks for them.
        """
        client = connect(
            endpoint,
            name=name,
            config=self.config,
            reactor=self.reactor,
            on_unknown_outcome=on_unknown_outcome,
            credentials=credentials,
        )
        self.client = client
        self.reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
        return client.when_connected()

    def nodes(self) -> list[NodeInfo]:
        """The nodes connected to this process's distributor, with their load; any thread."""
        distributor = self.distributor
        if distributor is None:
            raise NotRunningError("no distributor: call JR.start_distributor first")
        if threadable.isInIOThread() or not self.reactor.running:
            return distributor.nodes()
        result: list[NodeInfo] = blockingCallFromThread(self.reactor, distributor.nodes)
        return result

    def wait_for_nodes(
        self, count: int = 1, names: list[str] | tuple[str, ...] = (), timeout: float = 30
    ) -> list[NodeInfo]:
        """Block a non-reactor thread until ``count`` nodes (``names`` among them) are connected.

        Raises ``TimeoutError`` after ``timeout`` seconds. Jobs enqueued before a node is there
        simply wait for it; this is for start-up scripts and tests that want to know.
        """
        distributor = self.distributor
        if distributor is None:
            raise NotRunningError("no distributor: call JR.start_distributor first")
        if threadable.isInIOThread():
            raise RuntimeError("wait_for_nodes blocks: in the reactor thread use when_nodes()")

        def wait() -> Deferred[list[NodeInfo]]:
            assert distributor is not None
            return distributor.when_nodes(count, names).addTimeout(timeout, self.reactor)

        try:
            nodes: list[NodeInfo] = blockingCallFromThread(self.reactor, wait)
        except defer.TimeoutError:
            raise TimeoutError(f"fewer than {count} nodes connected within {timeout} s") from None
        return nodes

    def _call_in_reactor(self, function: Callable[..., Any], *args: Any) -> None:
        if threadable.isInIOThread():
            function(*args)
        else:
            self.reactor.callFromThread(function, *args)


#: The process-wide runtime, named as in the original.
JR = JobReactor()
