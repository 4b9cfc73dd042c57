"""
The page the demo's own web server answers with, on 127.0.0.1, so that the
printed commands fetch something without any network beyond loopback.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

__all__ = ["PAGE_GREETING", "demo_page", "demo_site"]

PAGE_GREETING = "Hello from the socksgss demo page!"


def demo_page(http_port: int, proxy_port: int) -> bytes:
    """The text the demo's web server answers every request with."""
    return (
        f"{PAGE_GREETING}\n\n"
        f"You fetched this page from 127.0.0.1:{http_port} through the txsocksgss proxy on "
        f"127.0.0.1:{proxy_port}.\n"
        "The demo's window shows how you authenticated.\n"
    ).encode()


def demo_site(page: Callable[[], bytes]) -> Any:
    """
    The twisted.web site that answers every request with ``page()`` as
    plain text, writes no access log, and still answers a client that has
    half-closed after its request.
    """
    # twisted.web is imported here, not at the top: every subcommand imports
    # this module too (the program builds all the parsers, the demo's among them).
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    @implementer(IHalfCloseableProtocol)
    class DemoPageChannel(HTTPChannel):
        """
        An HTTPChannel that still answers a client that has closed its
        sending side after the request (``printf ... | socksgss connect``
        does: the end of its input is a half-close).  A plain HTTPChannel
        takes that for the end of the connection and may drop the answer.
        """

        def readConnectionLost(self) -> None:
            if not self.requests:  # the page is answered at once, so this is the usual case
                self.transport.loseConnection()  # type: ignore[union-attr]

        def writeConnectionLost(self) -> None:
            self.transport.loseConnection()  # type: ignore[union-attr]

    class Page(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return page()

    class DemoSite(Site):
        protocol = DemoPageChannel  # type: ignore[assignment]

        def log(self, request: Any) -> None:
            """No access log: the session lines say enough."""

    return DemoSite(Page())
