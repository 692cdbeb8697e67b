"""A live web dashboard, a JSON API and Prometheus ``/metrics`` for a distributor.

``twistd jr-distributor --web tcp:8080:interface=127.0.0.1``, or
``JR.start_distributor(..., web="tcp:8080:interface=127.0.0.1")``, or in an application
``Dashboard(distributor, endpoint).setServiceParent(...)``. See ``docs/dashboard.md``.
"""

from jobreactor.web._metrics import METRICS, DistributorCollector, registry_for
from jobreactor.web._service import Dashboard

__all__ = ["METRICS", "Dashboard", "DistributorCollector", "registry_for"]
