"""
twistd plugin ``socksgss``.  Imports only: the code lives in txsocksgss.tap.
"""

from twisted.application.service import ServiceMaker

socksgss = ServiceMaker(
    "txsocksgss",
    "txsocksgss.tap",
    "An authenticating SOCKS proxy (SOCKS 5; none, username/password, GSS-API)",
    "socksgss",
)
