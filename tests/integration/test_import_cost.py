"""The TLS stack is loaded only when TLS is used (jobreactor/_lazy_tls.py), and then works.

Each check runs in a fresh Python that imports jobreactor first, as an application or
``twistd`` does: this process has the TLS stack loaded already (pytest-twisted's reactor
was installed before jobreactor was imported), so it cannot show either.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import node_env
from .test_tls import CA

pytestmark = pytest.mark.integration

#: Modules that are the TLS stack; none may be imported while no TLS is used.
TLS_MODULES = [
    "OpenSSL",
    "cryptography",
    "service_identity",
    "twisted.internet.ssl",
    "twisted.protocols.tls",
]


def run_python(script: str, *args: str) -> Any:
    """Run ``script`` in a fresh Python; return the JSON its last output line holds."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


PLAIN = """
import json, sys

import jobreactor
import jobreactor.tap_distributor  # and what twistd jr-node / jr-distributor import
import jobreactor.tap_node
import twisted.plugins.jobreactor_endpoints
from jobreactor import Distributor, JobRegistry, Node, authority_from_string
from twisted.internet import defer, task

TLS = json.loads(sys.argv[1])


async def main(reactor):
    registry = JobRegistry()
    registry.add_job("noop", lambda args: {"done": True})
    # With passwords: SCRAM needs no TLS either.
    authority = authority_from_string("memory:plain:s3cret:app:s3cret")
    distributor = Distributor("tcp:0:interface=127.0.0.1", reactor=reactor, portal=authority)
    distributor.startService()
    await distributor.when_listening()
    address = f"tcp:host=127.0.0.1:port={distributor.address.port}"
    node = Node(
        "plain", [address], registry=registry, reactor=reactor, credentials=("plain", "s3cret")
    )
    node.startService()
    await distributor.when_nodes(names=["plain"])
    client = jobreactor.connect(
        address, name="app", reactor=reactor, credentials=("app", "s3cret")
    )
    await client.when_connected()
    results = [
        await distributor.enqueue("noop", {}).deferred,
        await client.enqueue("noop", {}).deferred,
    ]
    await client.stopService()
    await node.stopService()
    await distributor.stopService()
    print(json.dumps({"results": results, "tls": [m for m in TLS if m in sys.modules]}))


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def test_a_distributor_node_and_client_without_tls_never_import_the_tls_stack() -> None:
    """The embedded distributor, a node and a remote client, over TCP with passwords."""
    found = run_python(PLAIN, json.dumps(TLS_MODULES))
    assert [result["done"] for result in found["results"]] == [True, True]
    assert found["tls"] == []


WITH_TLS = """
import json, sys

import jobreactor
from jobreactor import Distributor, JobRegistry, Node
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.protocols import amp

paths = json.loads(sys.argv[1])
TLS = json.loads(sys.argv[2])
loaded_before = [m for m in TLS if m in sys.modules]


class Echo(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class Upgrading(amp.AMP):
    # AMP's StartTLS: a plain TCP connection (tcp's startTLS) turned into TLS, with amp's
    # own TLS names (Certificate, CertificateOptions).
    @Echo.responder
    def echo(self, text):
        return {"text": text}

    @amp.StartTLS.responder
    def start_tls(self):
        from twisted.internet import ssl

        pem = open(paths["server_cert"], "rb").read() + open(paths["server_key"], "rb").read()
        return {"tls_localCertificate": ssl.PrivateCertificate.loadPEM(pem)}


async def main(reactor):
    from twisted.internet import ssl

    registry = JobRegistry()
    registry.add_job("noop", lambda args: {"done": True})
    server, key, ca = paths["server_cert"], paths["server_key"], paths["ca"]
    # jobreactor's own TLS server string, with client certificates, and Twisted's ssl:.
    checked = Distributor(
        f"jr-tls:0:certificate={server}:privateKey={key}:clientCA={ca}:interface=127.0.0.1",
        reactor=reactor,
    )
    plain_tls = Distributor(
        f"ssl:0:privateKey={key}:certKey={server}:interface=127.0.0.1", reactor=reactor
    )
    for distributor in (checked, plain_tls):
        distributor.startService()
        await distributor.when_listening()
    dial = f"tls:localhost:{{}}:trustRoots={paths['trust']}"
    mine = f":certificate={paths['node_cert']}:privateKey={paths['node_key']}"
    node = Node(
        "node_1",
        [dial.format(checked.address.port) + mine, dial.format(plain_tls.address.port)],
        registry=registry,
        reactor=reactor,
    )
    node.startService()
    await checked.when_nodes(names=["node_1"])
    await plain_tls.when_nodes(names=["node_1"])
    results = [
        await checked.enqueue("noop", {}).deferred,
        await plain_tls.enqueue("noop", {}).deferred,
    ]

    listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        protocol.Factory.forProtocol(Upgrading)
    )
    caller = await clientFromString(
        reactor, f"tcp:host=127.0.0.1:port={listening.getHost().port}"
    ).connect(protocol.Factory.forProtocol(amp.AMP))
    authority = ssl.Certificate.loadPEM(open(ca, "rb").read())
    await caller.callRemote(amp.StartTLS, tls_verifyAuthorities=[authority])
    echoed = await caller.callRemote(Echo, text="over TLS")  # after the handshake
    upgraded = [echoed["text"], caller.peerCertificate.getSubject().commonName.decode()]
    caller.transport.loseConnection()
    await listening.stopListening()

    await node.stopService()
    for distributor in (checked, plain_tls):
        await distributor.stopService()
    print(json.dumps({
        "loaded_before": loaded_before,
        "results": results,
        "upgraded": upgraded,
        "loaded": jobreactor._lazy_tls._loaded,
    }))


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def test_tls_works_when_it_is_used(tmp_path: Path) -> None:
    authority = CA(tmp_path, "jobreactor test CA")
    server_cert, server_key = authority.issue("localhost", server=True)
    node_cert, node_key = authority.issue("node_1")
    paths = {
        "ca": str(authority.write_ca(tmp_path / "trust")),
        "trust": str(tmp_path / "trust"),
        "server_cert": str(server_cert),
        "server_key": str(server_key),
        "node_cert": str(node_cert),
        "node_key": str(node_key),
    }
    found = run_python(WITH_TLS, json.dumps(paths), json.dumps(TLS_MODULES))
    assert found["loaded_before"] == []
    assert [result["done"] for result in found["results"]] == [True, True]
    assert found["upgraded"] == ["over TLS", "localhost"]
    assert found["loaded"] is True


DESCRIBE = """
import importlib, json, sys, types

from zope.interface import implementedBy

mode, modules, tls = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if mode == "lazy":
    import jobreactor

    jobreactor._lazy_tls.load_tls()
for name in modules + tls:
    importlib.import_module(name)
MIXINS = ("_TLSConnectionMixin", "_TLSClientMixin", "_TLSServerMixin")


def describe(value):
    if isinstance(value, types.ModuleType):
        return "module " + value.__name__
    name = getattr(value, "__qualname__", None)
    module = getattr(value, "__module__", None)
    return f"{type(value).__name__} {module}.{name}" if name else type(value).__name__


tcp = sys.modules["twisted.internet.tcp"]
found = {
    "names": {
        name: sorted(vars(module))
        for name, module in list(sys.modules.items())
        if module is not None and not name.startswith(("jobreactor", "__main__"))
    },
    "values": {
        name: {
            key: describe(value)
            for key, value in vars(sys.modules[name]).items()
            if key not in MIXINS
        }
        for name in modules
    },
    "mixins": {
        mixin: {
            key: describe(value)
            for key, value in vars(getattr(tcp, mixin)).items()
            if not key.startswith("__")
        }
        for mixin in MIXINS
    },
    "provides": sorted(interface.__name__ for interface in implementedBy(tcp.Server)),
}
print(json.dumps(found))
"""


def test_after_tls_is_loaded_twisted_modules_are_as_a_normal_import_leaves_them() -> None:
    """Every name the guarded imports bind is bound, to the same object; tcp's connections
    have the real TLS mixins' members and interfaces; and no other module imported while
    pyOpenSSL was hidden lacks a name it has after a normal import."""
    modules = json.dumps(
        [
            "twisted.internet.tcp",
            "twisted.internet.posixbase",
            "twisted.internet.endpoints",
            "twisted.protocols.amp",
        ]
    )
    tls = json.dumps(["twisted.internet.ssl", "twisted.protocols.tls", "twisted.internet._newtls"])
    normal = run_python(DESCRIBE, "normal", modules, tls)
    lazy = run_python(DESCRIBE, "lazy", modules, tls)
    assert lazy["values"] == normal["values"]
    assert lazy["mixins"] == normal["mixins"]
    # tcp's fallback declares zope's Interface, which every object provides anyway.
    assert [name for name in lazy["provides"] if name != "Interface"] == normal["provides"]
    missing = {
        name: sorted(set(names) - set(lazy["names"][name]) - {"__warningregistry__"})
        for name, names in normal["names"].items()
        if name in lazy["names"]
    }
    assert {name: gone for name, gone in missing.items() if gone} == {}


UNCHECKED = """
import json, sys

import twisted

twisted.__version__ = "99.1.0"  # a release the stand-ins were not checked against
import jobreactor
from jobreactor import _lazy_tls
from twisted.internet import endpoints

print(json.dumps([_lazy_tls._hidden, "OpenSSL" in sys.modules,
                  type(endpoints.optionsForClientTLS).__name__]))
"""


def test_under_a_twisted_release_not_checked_nothing_is_hidden() -> None:
    hidden, loaded, options = run_python(UNCHECKED)
    assert not hidden
    assert loaded  # the usual import: the TLS stack with Twisted
    assert options == "function"  # Twisted's own, no stand-in
