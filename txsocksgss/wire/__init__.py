"""
Sans-IO codecs for every message txsocksgss speaks.

Nothing in this package imports Twisted or touches a socket: each module has
frozen dataclasses for its messages, a ``serialize()`` method on each, and
``parse_*`` functions that take a `Reader` over the bytes received so far.
See `txsocksgss.wire.reader` for the parsing contract.
"""
