"""The one job of the example: it says which node ran it (after a short pause, so that the
jobs of one burst spread over the nodes)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from jobreactor import current_node, job


@job("where")
def where(args: dict[str, Any]) -> Deferred[dict[str, Any]]:
    from twisted.internet import reactor

    node = current_node().name
    return deferLater(reactor, 0.2, lambda: {"node": node, "pid": os.getpid()})
