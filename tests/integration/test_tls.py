"""TLS with client certificates, with a CA made here: a ``jr-tls:`` distributor takes a
``twistd jr-node`` and a client whose certificates that CA signed (the common name is the
user), and refuses a certificate of another CA, a missing one, and a wrong host name."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.internet import defer, reactor

from jobreactor import Config, Distributor, connect

from .conftest import NodeProcesses, bounded


class CA:
    """A certificate authority for one test: writes PEM files into ``folder``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.certificate = (
            self._builder(subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name if hasattr(self, "name") else subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def write_ca(self, directory: Path) -> Path:
        directory.mkdir(exist_ok=True)
        path = directory / "ca.pem"
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, common_name: str, server: bool = False) -> tuple[Path, Path]:
        """A certificate (for host ``localhost`` if ``server``); returns (cert, key) paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = self._builder(subject, key.public_key())
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        cert_path = self.folder / f"{common_name}.pem"
        key_path = self.folder / f"{common_name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    good = CA(tmp_path, "jobreactor test CA")
    rogue_folder = tmp_path / "rogue"
    rogue_folder.mkdir()
    rogue = CA(rogue_folder, "someone else's CA")
    return {
        "ca": good.write_ca(tmp_path / "ca"),
        "trust": tmp_path / "ca",
        "server": good.issue("localhost", server=True),
        "worker_1": good.issue("worker_1"),
        "app": good.issue("app"),
        "rogue": rogue.issue("app"),
    }


@pytest.fixture
def tls_distributor(pki: dict[str, Any]) -> Iterator[Distributor]:
    cert, key = pki["server"]
    listen = (
        f"jr-tls:0:certificate={cert}:privateKey={key}:clientCA={pki['ca']}:interface=127.0.0.1"
    )
    distributor = Distributor(listen, config=Config(node_grace_period=1.0), reactor=reactor)
    distributor.startService()
    pytest_twisted.blockon(distributor.when_listening().addTimeout(5, reactor))
    yield distributor
    pytest_twisted.blockon(distributor.stopService())


def tls_endpoint(pki: dict[str, Any], port: int, who: str | None, host: str = "localhost") -> str:
    endpoint = f"tls:{host}:{port}:trustRoots={pki['trust']}"
    if who is not None:
        cert, key = pki[who]
        endpoint += f":certificate={cert}:privateKey={key}"
    return endpoint


@pytest_twisted.ensureDeferred
async def test_node_and_client_with_certificates_of_the_ca_work(
    tls_distributor: Distributor, pki: dict[str, Any], nodes: NodeProcesses
) -> None:
    port = tls_distributor.address.port
    nodes.start("worker_1", port, endpoint=tls_endpoint(pki, port, "worker_1"))
    await bounded(tls_distributor.when_nodes(names=["worker_1"]))
    client = connect(tls_endpoint(pki, port, "app"), name="app")
    try:
        await bounded(client.when_connected())
        result = await bounded(client.enqueue("my_job", {}).deferred)
        assert result["result"] == "Yay!"
    finally:
        await client.stopService()


@pytest.mark.parametrize(
    ("who", "host"),
    [("rogue", "localhost"), (None, "localhost"), ("app", "127.0.0.1")],
    ids=["certificate of another CA", "no certificate", "wrong host name"],
)
@pytest_twisted.ensureDeferred
async def test_refused_tls_peers(
    tls_distributor: Distributor, pki: dict[str, Any], who: str | None, host: str
) -> None:
    port = tls_distributor.address.port
    client = connect(tls_endpoint(pki, port, who, host), name="app")
    try:
        # TLS 1.3 reports a refused client certificate after the handshake: the client then
        # learns it from its first command (a TLS alert); a wrong host fails the check of the
        # distributor's certificate; otherwise the wait times out.
        with pytest.raises((defer.TimeoutError, SSL.Error, VerificationError)):
            await client.when_connected().addTimeout(3, reactor)
        assert client.submitter.protocol is None
    finally:
        await client.stopService()


@pytest_twisted.ensureDeferred
async def test_a_certificate_binds_the_name(
    tls_distributor: Distributor, pki: dict[str, Any]
) -> None:
    port = tls_distributor.address.port
    client = connect(tls_endpoint(pki, port, "app"), name="worker_1")
    try:
        with pytest.raises(Exception, match="may not use the name 'worker_1'"):
            await bounded(client.when_connected(), 10)
    finally:
        await client.stopService()
