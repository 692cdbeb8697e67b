"""TLS that checks the client too: the ``jr-tls:`` server endpoint string.

Twisted's ``ssl:`` server string proves the distributor to its peers but cannot ask the
peers for certificates. ``jr-tls:`` does::

    jr-tls:PORT:certificate=server.pem:privateKey=server.key:clientCA=ca.pem[:interface=IP]

Every peer must present a certificate signed by ``clientCA``; a distributor listening on
``jr-tls:`` with ``clientCA`` takes the certificate's common name as the peer's user name
(roles and names as for a password user, see :mod:`jobreactor.credentials`). Peers connect
with Twisted's own client string, which checks the distributor's host name::

    tls:HOST:PORT:trustRoots=CA_DIR:certificate=client.pem:privateKey=client.key

Without ``clientCA`` it is a plain TLS server, like ``ssl:``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet import ssl

#: The endpoint string prefix this module parses.
PREFIX = "jr-tls"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ValueError(f"{PREFIX}: cannot read {what} {path}: {error.strerror}") from None


def server_options(
    certificate: str, private_key: str | None = None, client_ca: str | None = None
) -> ssl.CertificateOptions:
    """TLS settings for a distributor; with ``client_ca`` every peer needs a certificate
    that CA signed (``certificate`` and ``private_key`` are PEM files; the key may be in
    the certificate file)."""
    from twisted.internet import ssl  # the TLS stack, only once TLS is configured

    cert_pem = _read(certificate, "certificate")
    key_pem = _read(private_key, "private key") if private_key else cert_pem
    try:
        server = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as error:
        raise ValueError(
            f"{PREFIX}: {certificate}: not a PEM certificate and key ({error})"
        ) from None
    trust = None
    if client_ca:
        ca_pem = _read(client_ca, "CA")
        try:
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(ca_pem)])
        except Exception as error:
            raise ValueError(f"{PREFIX}: {client_ca}: not a PEM certificate ({error})") from None
    options: ssl.CertificateOptions = server.options()  # type: ignore[no-untyped-call]
    if trust is None:
        return options
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        trustRoot=trust,
    )


def requires_client_certificates(listen: str | None) -> bool:
    """Whether a distributor listening on ``listen`` gets only CA-verified peers."""
    return bool(listen) and str(listen).startswith(PREFIX + ":") and "clientCA=" in str(listen)


def peer_common_name(transport: Any) -> str | None:
    """The common name of the certificate the peer presented, if any."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        certificate = get()
    except Exception:
        return None
    if certificate is None:
        return None
    from cryptography.x509.oid import NameOID  # a certificate exists: TLS is loaded already

    if hasattr(certificate, "to_cryptography"):  # pyOpenSSL's X509
        certificate = certificate.to_cryptography()
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names and names[0].value else None


@implementer(IPlugin, IStreamServerEndpointStringParser)
class TLSServerParser:
    """The ``jr-tls:`` server endpoint string (see the module's docstring)."""

    prefix = PREFIX

    def parseStreamServer(
        self, reactor: Any, *args: object, **kwargs: object
    ) -> SSL4ServerEndpoint:
        return self._parse(reactor, *map(str, args), **{k: str(v) for k, v in kwargs.items()})

    def _parse(
        self,
        reactor: Any,
        port: str,
        certificate: str = "",
        privateKey: str | None = None,
        clientCA: str | None = None,
        interface: str = "",
        backlog: str = "50",
    ) -> SSL4ServerEndpoint:
        if not certificate:
            raise ValueError(f"{PREFIX}: certificate=PATH is required")
        options = server_options(certificate, privateKey, clientCA)
        return SSL4ServerEndpoint(reactor, int(port), options, int(backlog), interface)
