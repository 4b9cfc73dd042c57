"""
Endpoint-string plugins ``socks5:``, ``socks4:`` and ``socks4a:`` for
``clientFromString``.  Imports only: the code and the grammar live in
txsocksgss.client.endpointstring.
"""

from txsocksgss.client.endpointstring import (
    SOCKS4aEndpointStringParser,
    SOCKS4EndpointStringParser,
    SOCKS5EndpointStringParser,
)

socks5 = SOCKS5EndpointStringParser()
socks4 = SOCKS4EndpointStringParser()
socks4a = SOCKS4aEndpointStringParser()
