"""Twisted's networking modules without the TLS stack, until TLS is used.

Why: ``twisted.internet.tcp``, ``posixbase`` (under every reactor), ``endpoints`` and
``protocols.amp`` import pyOpenSSL (with ``cryptography``) and ``twisted.internet.ssl``
(with ``service_identity``) as they are imported, if pyOpenSSL is installed: about 15 MB
of every process's RSS, spent even when no connection uses TLS.

How: each of those imports is guarded by ``try: ... except ImportError:`` so that Twisted
works without pyOpenSSL. Importing this module (``jobreactor/__init__.py`` does it first)
runs :func:`import_without_tls`: it imports the four modules while ``OpenSSL`` is made
unimportable, so each takes its ``except ImportError`` branch, then puts a *stand-in*
wherever that branch left a TLS name out (or bound it to ``None`` or a do-nothing class).
The first use of a stand-in (a call or an attribute: ``optionsForClientTLS(...)``,
``tls.TLSMemoryBIOFactory``, ``transport.startTLS(...)``) runs :func:`load_tls`, which
imports the TLS stack and binds the very objects a normal import would have bound, then
carries on. TLS thus works as before (``ssl:``, ``tls:`` and ``jr-tls:`` endpoints,
``rediss://``, ``startTLS``, AMP's ``StartTLS``) and costs its memory only where it is
used; ``tests/integration/test_import_cost.py`` checks both, and that the modules end up as a
normal import leaves them.

Nothing is hidden if pyOpenSSL is imported already (its memory is spent) or not installed
(Twisted's own fallbacks are then right), nor if one of the four modules was imported
before jobreactor. The hiding lasts for the four imports only; an import of pyOpenSSL by
another thread at that very moment would fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from typing import Any

#: The Twisted modules imported without TLS, in this order (tcp before posixbase, which
#: imports it).
MODULES = (
    "twisted.internet.tcp",
    "twisted.internet.posixbase",
    "twisted.internet.endpoints",
    "twisted.protocols.amp",
)

#: What each module's guarded TLS import binds in a normal import, and from where:
#: ``name: (source module, attribute)``, attribute None for the source module itself.
#: Copied from the ``try:`` blocks of Twisted 26.10 (amp's ``ssl.supported`` is always
#: true); an entry whose source module does not exist (an older Twisted) is dropped.
SKIPPED: dict[str, dict[str, tuple[str, str | None]]] = {
    "twisted.internet.posixbase": {
        "tls": ("twisted.protocols.tls", None),
        "_tls": ("twisted.protocols.tls", None),
        "ssl": ("twisted.internet.ssl", None),
        "_ssl": ("twisted.internet.ssl", None),
    },
    "twisted.internet.endpoints": {
        "SSLError": ("OpenSSL.SSL", "Error"),
        "Certificate": ("twisted.internet.ssl", "Certificate"),
        "CertificateOptions": ("twisted.internet.ssl", "CertificateOptions"),
        "KeyPair": ("twisted.internet.ssl", "KeyPair"),
        "PrivateCertificate": ("twisted.internet.ssl", "PrivateCertificate"),
        "optionsForClientTLS": ("twisted.internet.ssl", "optionsForClientTLS"),
        "trustRootFromCertificates": ("twisted.internet.ssl", "trustRootFromCertificates"),
        "SNIConnectionCreator": ("twisted.protocols._sni", "SNIConnectionCreator"),
        "_TLSServerEndpoint": ("twisted.protocols._sni", "TLSServerEndpoint"),
        "autoReloadingDirectoryOfPEMs": ("twisted.protocols._sni", "autoReloadingDirectoryOfPEMs"),
        "_TLSMemoryBIOFactory": ("twisted.protocols.tls", "TLSMemoryBIOFactory"),
        "TLSMemoryBIOFactory": ("twisted.protocols.tls", "TLSMemoryBIOFactory"),
    },
    "twisted.protocols.amp": {
        "ssl": ("twisted.internet.ssl", None),
        "_ssl": ("twisted.internet.ssl", None),
        "DN": ("twisted.internet.ssl", "DN"),
        "Certificate": ("twisted.internet.ssl", "Certificate"),
        "CertificateOptions": ("twisted.internet.ssl", "CertificateOptions"),
        "KeyPair": ("twisted.internet.ssl", "KeyPair"),
    },
}

#: tcp's guarded import is of three mixins (``twisted.internet._newtls``), which its
#: connection classes inherit from; without TLS it defines do-nothing ones in their place.
#: :func:`load_tls` copies the real mixins' members into those.
MIXINS = {
    "_TLSConnectionMixin": "ConnectionMixin",
    "_TLSClientMixin": "ClientMixin",
    "_TLSServerMixin": "ServerMixin",
}

#: Twisted releases whose guarded TLS imports :data:`SKIPPED` and :data:`MIXINS` were read
#: from (and ``tests/integration/test_import_cost.py`` passed on). Under any other release
#: nothing is hidden: the TLS stack is imported as usual, costing memory but never a
#: feature. Add a release here after running that test file under it.
CHECKED_TWISTED = ("26.10",)

_hidden = False  # import_without_tls hid pyOpenSSL: the stand-ins are in place
_loaded = False
_lock = threading.Lock()


class _StandIn:
    """Takes the place of one TLS name until :func:`load_tls` binds the real one."""

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name

    def _real(self) -> Any:
        load_tls()
        real = getattr(sys.modules[self._module], self._name)
        if isinstance(real, _StandIn):  # load_tls failed half-way
            raise ImportError(f"{self._module}.{self._name}: the TLS stack did not load")
        return real

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # introspection (copy, inspect) must not load TLS
            raise AttributeError(attribute)
        return getattr(self._real(), attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self._module}.{self._name}, loaded with TLS on first use>"


class _StandInSSLError(Exception):
    """endpoints' ``SSLError`` until TLS is loaded: only ever caught (``except SSLError``
    around a use of a stand-in, which binds the real one first), never raised."""


def _start_tls(transport: Any, *args: Any, **kwargs: Any) -> Any:
    """tcp connections' ``startTLS`` until TLS is loaded, which replaces it with the real one."""
    load_tls()
    return transport.startTLS(*args, **kwargs)


def import_without_tls() -> None:
    """Import :data:`MODULES` with pyOpenSSL hidden, and put stand-ins where they skipped TLS."""
    global _hidden
    if "OpenSSL" in sys.modules or any(name in sys.modules for name in MODULES):
        return  # imported the normal way already: nothing left to save
    if importlib.util.find_spec("OpenSSL") is None:
        return  # no pyOpenSSL: Twisted's own fallbacks are the right ones
    from twisted import __version__ as twisted_version

    if not twisted_version.startswith(tuple(f"{release}." for release in CHECKED_TWISTED)):
        return  # a Twisted these stand-ins were not checked against: import as usual
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # makes "import OpenSSL" raise
    try:
        for name in MODULES:
            importlib.import_module(name)
    finally:
        del sys.modules["OpenSSL"]
    for module_name, names in SKIPPED.items():
        module = sys.modules[module_name]
        for name in names:
            stand_in = _StandInSSLError if name == "SSLError" else _StandIn(module_name, name)
            setattr(module, name, stand_in)
    from twisted.internet import interfaces
    from zope.interface import classImplements

    tcp: Any = sys.modules["twisted.internet.tcp"]
    # ITLSTransport needs no TLS stack: bind it and declare it, as tcp's @implementer would.
    tcp.ITLSTransport = interfaces.ITLSTransport
    classImplements(tcp.Connection, interfaces.ITLSTransport)  # type: ignore[misc]
    tcp._TLSConnectionMixin.startTLS = _start_tls
    _hidden = True


def load_tls() -> None:
    """Import the TLS stack and bind what :func:`import_without_tls` left out.

    Run by the stand-ins on first use; a no-op when nothing was hidden or it ran already.
    """
    global _loaded
    if _loaded or not _hidden:
        return
    with _lock:
        if _loaded:
            return
        for module_name, names in SKIPPED.items():
            module = sys.modules[module_name]
            for name, (source, attribute) in names.items():
                try:
                    real = importlib.import_module(source)
                except ModuleNotFoundError as error:
                    if error.name != source:
                        raise
                    delattr(module, name)  # an older Twisted, which does not bind it
                    continue
                setattr(module, name, real if attribute is None else getattr(real, attribute))
        from twisted.internet import _newtls, tcp

        for fallback, real_name in MIXINS.items():
            for member, value in vars(getattr(_newtls, real_name)).items():
                if not member.startswith("__"):
                    setattr(getattr(tcp, fallback), member, value)
        _loaded = True


import_without_tls()
