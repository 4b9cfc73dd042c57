"""
The Python examples of the manual run, against a real proxy and real
servers on 127.0.0.1.

Every ``.. code-block:: python`` in the pages of `PAGES` opens with a marker
comment:

``# example: NAME``
    The block defines ``NAME(reactor, proxy_port, web_port)``, which returns
    a Deferred.  A test below (marked with `exercises`) starts the servers
    the example needs, calls it inside the running reactor and checks what
    it fires with.
``# helper: NAME``
    The block defines ``NAME`` for the examples of the same page; helpers
    run first, in page order, and each example runs in a fresh copy of
    their namespace.

The test also parses the endpoint strings a page lists in a text block
after the comment ``.. checked-endpoint-strings``, and checks the TOML
blocks of docs/gssapi.rst as tests/test_docs.py checks the other pages'.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from typing import Any, Callable

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import clientFromString
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.docs import EXAMPLE_MARKER, ROOT, Block, code_blocks, load_example_from, marked_blocks, read_text
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.servers import EchoUDP
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.client.endpoints import SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import Config

PAGES = {
    "docs/client.rst": os.path.join(ROOT, "docs", "client.rst"),
    "docs/gssapi.rst": os.path.join(ROOT, "docs", "gssapi.rst"),
    "README.rst": os.path.join(ROOT, "README.rst"),
}
_ENDPOINT_STRINGS = ".. checked-endpoint-strings"

#: The examples some test below runs (filled by `exercises`).
EXERCISED: set[str] = set()


def exercises(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a test as the one that runs the example ``name``."""

    def mark(test: Callable[..., Any]) -> Callable[..., Any]:
        EXERCISED.add(name)
        return test

    return mark


def _unmarked(page: str) -> list[int]:
    """Lines of the page's Python blocks that carry no marker."""
    return [
        line for line, source in code_blocks(read_text(PAGES[page]), "python")
        if not EXAMPLE_MARKER.fullmatch(source.splitlines()[0].strip())
    ]


def _blocks(page: str) -> list[Block]:
    """The marked Python blocks of ``page``, in order."""
    return marked_blocks(page, read_text(PAGES[page]))


def _all_blocks() -> list[Block]:
    return [block for page in PAGES for block in _blocks(page)]


def load_example(name: str) -> Callable[..., Any]:
    """The function an ``# example: NAME`` block defines, after its page's helpers."""
    return load_example_from(_all_blocks(), name)


class MarkerTests(SynchronousTestCase):
    """Every Python example is marked, defines what it says, and is run by a test."""

    def test_every_python_block_is_marked(self) -> None:
        for page in PAGES:
            self.assertEqual(_unmarked(page), [], f"{page}: Python blocks without '# example: NAME'")

    def test_the_pages_have_examples(self) -> None:
        names = [block.page for block in _all_blocks() if block.kind == "example"]
        for page in PAGES:
            self.assertIn(page, names, f"{page} has no marked example")

    def test_names_are_unique(self) -> None:
        names = [block.name for block in _all_blocks()]
        self.assertEqual(sorted(names), sorted(set(names)))

    def test_every_example_is_exercised(self) -> None:
        examples = {block.name for block in _all_blocks() if block.kind == "example"}
        self.assertEqual(sorted(examples - EXERCISED), [], "examples that no test runs")
        self.assertEqual(sorted(EXERCISED - examples), [], "tests of examples the pages no longer have")

    def test_each_block_defines_its_name(self) -> None:
        for block in _all_blocks():
            if block.kind == "example":
                self.assertTrue(callable(load_example(block.name)), block)
            else:
                namespace: dict[str, Any] = {"__name__": "docs_helper"}
                block.run(namespace)
                self.assertIn(block.name, namespace, block)

    def test_listed_endpoint_strings_parse(self) -> None:
        checked = 0
        for page, path in PAGES.items():
            lines = read_text(path).splitlines()
            for number, line in enumerate(lines):
                if line.strip() != _ENDPOINT_STRINGS:
                    continue
                [(_, block)] = code_blocks("\n".join(lines[number + 1:]), "text")[:1]
                for description in block.splitlines():
                    description = description.strip()
                    if not description:
                        continue
                    endpoint = clientFromString(MemoryReactorClock(), description)
                    self.assertIsInstance(endpoint, (SOCKS4ClientEndpoint, SOCKS5ClientEndpoint), description)
                    checked += 1
        self.assertGreater(checked, 8)

    def test_gssapi_toml_examples_are_valid(self) -> None:
        scratch = tempfile.mkdtemp(prefix="txsocksgss-docs-toml-")
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        blocks = code_blocks(read_text(PAGES["docs/gssapi.rst"]), "toml")
        self.assertTrue(blocks)
        for line, block in blocks:
            try:
                Config.from_table(tomllib.loads(block), base=scratch, source=f"docs/gssapi.rst line {line}")
            except ConfigError as error:
                self.fail(f"docs/gssapi.rst line {line}: {error}\n{block}")


BODY = b"the page behind the proxy"


class ClientExampleTests(IntegrationTestCase):
    """The examples of docs/client.rst and README.rst, each against a fresh proxy."""

    def assertPage(self, response: bytes) -> None:
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK\r\n"), response[:100])
        self.assertTrue(response.endswith(BODY), response[-100:])

    @exercises("fetch_page")
    @inlineCallbacks
    def test_fetch_page(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS()
        response = yield load_example("fetch_page")(reactor, proxy_port, web_port)
        self.assertPage(response)

    @exercises("show_bound_address")
    @inlineCallbacks
    def test_show_bound_address(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS()
        connection, response = yield load_example("show_bound_address")(reactor, proxy_port, web_port)
        self.assertEqual(connection.bound.host, "127.0.0.1")
        self.assertNotEqual(connection.bound.port, 0)
        self.assertEqual((connection.identity.method, connection.identity.user), (0, None))
        self.assertPage(response)

    @exercises("fetch_with_deadline")
    @inlineCallbacks
    def test_fetch_with_deadline(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS()
        response = yield load_example("fetch_with_deadline")(reactor, proxy_port, web_port)
        self.assertPage(response)

    @exercises("login_with_password")
    @inlineCallbacks
    def test_login_with_password(self):
        passwd = os.path.abspath(self.mktemp())
        set_password(passwd, "alice", b"s3cret", n=2**10)
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS(methods=["userpass"], passwd=passwd)
        user, response = yield load_example("login_with_password")(reactor, proxy_port, web_port)
        self.assertEqual(user, "alice")
        self.assertPage(response)

    @exercises("fetch_with_socks4a")
    @inlineCallbacks
    def test_fetch_with_socks4a(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, factory = self.startSOCKS(methods=["none", "socks4"])
        logs = self.captureLogs()
        connection, response = yield load_example("fetch_with_socks4a")(reactor, proxy_port, web_port)
        self.assertEqual(connection.identity.user, "alice")
        self.assertPage(response)
        yield factory.context.whenDrained()
        self.assertTrue([line for line in logs if "socks4 user=alice method=socks4" in line], logs)

    @exercises("through_two_proxies")
    @inlineCallbacks
    def test_through_two_proxies(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, factory = self.startSOCKS()
        logs = self.captureLogs()
        response = yield load_example("through_two_proxies")(reactor, proxy_port, web_port)
        self.assertPage(response)
        yield factory.context.whenDrained()
        sessions = [line for line in logs if "session client=" in line]
        self.assertEqual(len(sessions), 2, sessions)  # the proxy was one hop twice

    @exercises("accept_through_proxy")
    @inlineCallbacks
    def test_accept_through_proxy(self):
        proxy_port, _ = self.startSOCKS()
        bound, greeting = yield load_example("accept_through_proxy")(reactor, proxy_port, 0)
        self.assertEqual(bound.host, "127.0.0.1")
        self.assertEqual(greeting, b"hello from behind the proxy\n")

    @exercises("udp_echo")
    @inlineCallbacks
    def test_udp_echo(self):
        echo_port = self.listenUDP(EchoUDP())
        proxy_port, _ = self.startSOCKS()
        data, sender = yield load_example("udp_echo")(reactor, proxy_port, echo_port)
        self.assertEqual((data, sender), (b"echo:ping", ("127.0.0.1", echo_port)))

    @exercises("fetch_by_description")
    @inlineCallbacks
    def test_fetch_by_description(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS()
        response = yield load_example("fetch_by_description")(reactor, proxy_port, web_port)
        self.assertPage(response)

    @exercises("fetch_with_agent")
    @inlineCallbacks
    def test_fetch_with_agent(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS()
        code, body = yield load_example("fetch_with_agent")(reactor, proxy_port, web_port)
        self.assertEqual((code, body), (200, BODY))

    @exercises("report_refusal")
    @inlineCallbacks
    def test_report_refusal(self):
        proxy_port, _ = self.startSOCKS()
        message = yield load_example("report_refusal")(reactor, proxy_port, free_port())
        self.assertTrue(message.startswith("nothing listens there:"), message)
        self.assertIn("(code 5)", message)

    @exercises("readme_fetch")
    @inlineCallbacks
    def test_readme_fetch(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS()
        body = yield load_example("readme_fetch")(reactor, proxy_port, web_port)
        self.assertEqual(body, BODY)


class KerberosExampleTests(IntegrationTestCase):
    """The GSS-API examples, against a proxy with a keytab of the test realm (tests/helpers/kerberos.py)."""

    pytestmark = pytest.mark.kerberos

    def setUp(self) -> None:
        from tests.helpers.kerberos import test_realm

        self.realm = test_realm()

    def startGSSAPI(self, **config: Any) -> tuple[int, Any]:
        return self.startSOCKS(methods=["gssapi"], gssapi_keytab=self.realm.service_keytab, **config)

    @exercises("fetch_with_kerberos")
    @inlineCallbacks
    def test_fetch_with_kerberos(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startGSSAPI()
        identity, response = yield load_example("fetch_with_kerberos")(reactor, proxy_port, web_port)
        self.assertEqual(identity.user, self.realm.user_principal)
        self.assertEqual(identity.attributes["protection"], "confidentiality")
        self.assertTrue(response.endswith(BODY))

    @exercises("fetch_with_spnego")
    @inlineCallbacks
    def test_fetch_with_spnego_settles_for_integrity(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, factory = self.startGSSAPI(gssapi_protection=["integrity"])
        logs = self.captureLogs()
        response = yield load_example("fetch_with_spnego")(reactor, proxy_port, web_port)
        self.assertTrue(response.endswith(BODY))
        yield factory.context.whenDrained()
        expected = (f"GSS-API: {self.realm.user_principal} authenticated with spnego after 1 client tokens, "
                    "asked for confidentiality, agreed integrity")
        self.assertTrue([line for line in logs if expected in line], "\n".join(logs))
        self.assertTrue([line for line in logs if "method=gssapi protection=integrity" in line], "\n".join(logs))
