"""The ``jr-tls:`` server endpoint string: TLS that requires client certificates.

Its parser lives in :mod:`jobreactor.tls`.
"""

from jobreactor.tls import TLSServerParser

jr_tls = TLSServerParser()
