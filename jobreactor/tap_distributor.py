"""``twistd jr-distributor``: a standalone distributor that nodes connect to."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from jobreactor.distributor import Distributor


class Options(usage.Options):
    synopsis = "[--listen ENDPOINT]"
    optParameters = [
        ["listen", "l", "tcp:5000:interface=127.0.0.1", "Server endpoint string nodes connect to."],
    ]


def makeService(options: dict[str, Any]) -> service.IService:
    return Distributor(options["listen"])
