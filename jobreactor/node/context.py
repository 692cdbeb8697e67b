"""Which node runs the calling job: ``current_node()`` and the registry of started nodes."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

from jobreactor.errors import NotRunningError

if TYPE_CHECKING:
    from jobreactor.node.service import Node

_current_node: contextvars.ContextVar[Node] = contextvars.ContextVar("jobreactor_node")
_started_nodes: list[Node] = []


def current_node() -> Node:
    """The node running the calling job, e.g. to enqueue follow-up jobs for other nodes::

        current_node().enqueue("resize", {"path": path}, success=...)

    Works in a job's function, callbacks and errbacks (also ``async def`` ones); in a
    ``defer=True`` job it works when the process runs one node, the usual case.
    """
    node = _current_node.get(None)
    if node is not None:
        return node
    if len(_started_nodes) == 1:
        return _started_nodes[0]
    raise NotRunningError(
        "current_node() is for code run by a node's job; "
        f"this process runs {len(_started_nodes)} nodes and none is running this code"
    )
