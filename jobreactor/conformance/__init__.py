"""A wire-level conformance suite for the jobreactor protocol (docs/protocol.md §12).

``python -m jobreactor.conformance HOST:PORT --role distributor`` checks a distributor by
playing nodes and clients; ``--role node`` listens on HOST:PORT and checks a node that dials
in, by playing the distributor. The suite speaks raw AMP boxes (:mod:`.wire`), not
jobreactor's command classes, so that it tests the specification rather than agreeing with
our own code; every check cites the section it tests.
"""
