"""twistd plugins ``jr-node`` and ``jr-distributor``.

Their options live in :mod:`jobreactor.tap_node` and :mod:`jobreactor.tap_distributor`.
"""

from twisted.application.service import ServiceMaker

jr_node = ServiceMaker(
    "jr-node",
    "jobreactor.tap_node",
    "A JobReactor node: runs jobs sent by distributors.",
    "jr-node",
)
jr_distributor = ServiceMaker(
    "jr-distributor",
    "jobreactor.tap_distributor",
    "A standalone JobReactor distributor that nodes connect to.",
    "jr-distributor",
)
