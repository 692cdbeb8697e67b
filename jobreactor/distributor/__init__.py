"""The distributor: owns every job from ``enqueue`` to its outcome and routes it to nodes.

Split by concern: :mod:`.sessions` (connections and Hello), :mod:`.dispatch` (waiting and
routing), :mod:`.outcomes` (reports, feedbacks, outboxes), :mod:`.service` (the service and
the application's side), :mod:`.records` (what is kept about jobs and nodes).
"""

from jobreactor.distributor.records import (
    FUTURE_MARGIN,
    REST_SECONDS,
    STOP_WAIT,
    Feedback,
    NodeInfo,
)
from jobreactor.distributor.service import Distributor
from jobreactor.distributor.sessions import DistributorProtocol

__all__ = [
    "FUTURE_MARGIN",
    "REST_SECONDS",
    "STOP_WAIT",
    "Distributor",
    "DistributorProtocol",
    "Feedback",
    "NodeInfo",
]
