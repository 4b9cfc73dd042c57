"""
txsocksgss: an authenticating SOCKS proxy and client suite for Twisted.

The server is `txsocksgss.server.service.makeService`; twistd runs it as
``twistd socksgss``.  The wire codecs live in `txsocksgss.wire`, the
authentication methods in `txsocksgss.auth`, the interfaces that join them
in `txsocksgss.interfaces`.
"""

__version__ = "0.1.0"
