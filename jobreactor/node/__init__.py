"""The node: takes jobs from distributors, stores them, runs each on time, reports back.

Split by concern: :mod:`.links` (connections, Hello, outboxes), :mod:`.takeup` (stored jobs
taken up once a Hello is answered), :mod:`.lease` (one process per node's storage),
:mod:`.scheduling` (accepting, timers, slots, cancels), :mod:`.running` (attempts, retries,
ends), :mod:`.service` (the service itself), :mod:`.context` (``current_node``).
"""

from jobreactor.node.context import current_node
from jobreactor.node.links import (
    MAX_REPORT_BYTES,
    NodeProtocol,
    _DistributorLink,
    endpoint_description,
)
from jobreactor.node.service import STOP_MESSAGE_WAIT, UNFINISHED, Node

__all__ = [
    "MAX_REPORT_BYTES",
    "STOP_MESSAGE_WAIT",
    "UNFINISHED",
    "Node",
    "NodeProtocol",
    "_DistributorLink",
    "current_node",
    "endpoint_description",
]
