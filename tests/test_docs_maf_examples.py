"""
docs/maf.rst is true: its Python examples run against a real proxy on
127.0.0.1, its TOML blocks are accepted, its endpoint strings parse, its
byte transcript is what the code sends, its worked example ("gssapi, or
password+test") behaves as the page says, and so do the policy decisions
the page describes.

The page follows the conventions of tests/test_docs_examples.py: every
``.. code-block:: python`` opens with ``# example: NAME`` (a test below,
marked with `exercises`, runs it) or ``# helper: NAME`` (run first, in page
order, into each example's namespace).  The endpoint strings are the text
block after the comment ``.. checked-endpoint-strings``, the transcript the
text block after ``.. checked-maf-transcript``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tomllib
from typing import Any, Callable

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.clients import Fetcher
from tests.helpers.docs import EXAMPLE_MARKER, ROOT, Block, code_blocks, load_example_from, marked_blocks, read_text
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.maf import SESSION, converse, userpass_server
from txsocksgss.auth.maf import (
    SUBMETHOD_IDS,
    Chain,
    ChainPolicy,
    MAFClientFactory,
    MAFServerFactory,
    TestSubMethodClientFactory,
    TestSubMethodServerFactory,
)
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.errors import ClientAuthenticationFailed, ConfigError, ConnectionNotAllowed
from txsocksgss.server.config import Config
from txsocksgss.wire.socks5 import AuthMethod

PAGE = os.path.join(ROOT, "docs", "maf.rst")
PAGE_NAME = "docs/maf.rst"
BODY = b"the page behind the proxy"
PASSWORD = b"s3cret"  # the examples' password for alice

TEST = SUBMETHOD_IDS["test"]
USERPASS = SUBMETHOD_IDS["userpass"]
GSSAPI = SUBMETHOD_IDS["gssapi"]

#: The examples some test below runs (filled by `exercises`).
EXERCISED: set[str] = set()


def exercises(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a test as the one that runs the example ``name`` of docs/maf.rst."""

    def mark(test: Callable[..., Any]) -> Callable[..., Any]:
        EXERCISED.add(name)
        return test

    return mark


def _read() -> str:
    return read_text(PAGE)


def _blocks() -> list[Block]:
    return marked_blocks(PAGE_NAME, _read())


def load_example(name: str) -> Callable[..., Any]:
    """The function an ``# example: NAME`` block of docs/maf.rst defines, after the page's helpers."""
    return load_example_from(_blocks(), name)


def _text_block_after(comment: str) -> str:
    """The first ``.. code-block:: text`` after the line ``comment``."""
    lines = _read().splitlines()
    [number] = [n for n, line in enumerate(lines) if line.strip() == comment]
    [(_, block)] = code_blocks("\n".join(lines[number + 1:]), "text")[:1]
    return block


def _restore_environment(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _passwd(case: SynchronousTestCase) -> str:
    path = os.path.abspath(case.mktemp())
    set_password(path, "alice", PASSWORD, n=2**10)
    return path


class PageTests(SynchronousTestCase):
    """The page's blocks: marked, defined, exercised, valid."""

    def test_every_python_block_is_marked(self) -> None:
        unmarked = [line for line, source in code_blocks(_read(), "python")
                    if not EXAMPLE_MARKER.fullmatch(source.splitlines()[0].strip())]
        self.assertEqual(unmarked, [], "docs/maf.rst: Python blocks without '# example: NAME'")

    def test_names_are_unique_and_defined(self) -> None:
        blocks = _blocks()
        self.assertGreaterEqual(len([b for b in blocks if b.kind == "example"]), 2)
        names = [b.name for b in blocks]
        self.assertEqual(sorted(names), sorted(set(names)))
        for block in blocks:
            if block.kind == "example":
                self.assertTrue(callable(load_example(block.name)), block)
            else:
                namespace: dict[str, Any] = {"__name__": "docs_helper"}
                block.run(namespace)
                self.assertIn(block.name, namespace, block)

    def test_every_example_is_exercised(self) -> None:
        examples = {b.name for b in _blocks() if b.kind == "example"}
        self.assertEqual(sorted(examples - EXERCISED), [], "examples that no test runs")
        self.assertEqual(sorted(EXERCISED - examples), [], "tests of examples the page no longer has")

    def test_toml_blocks_are_accepted(self) -> None:
        scratch = tempfile.mkdtemp(prefix="txsocksgss-docs-maf-toml-")
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        blocks = code_blocks(_read(), "toml")
        self.assertGreaterEqual(len(blocks), 2)
        for line, block in blocks:
            where = f"docs/maf.rst line {line}"
            try:
                table = tomllib.loads(block)
            except tomllib.TOMLDecodeError as error:
                self.fail(f"{where}: not valid TOML: {error}\n{block}")
            table.setdefault("allow_open", True)  # a fragment may show a public listener
            try:
                config = Config.from_table(table, base=scratch, source=where)
            except ConfigError as error:
                self.fail(f"{where}: rejected: {error}\n{block}")
            self.assertIn("maf", config.effective_methods, where)

    def test_command_line_chains_are_accepted(self) -> None:
        """Every ``--maf-chain`` on the page parses."""
        from txsocksgss.server.config import parse_maf_chain

        specs = re.findall(r"--maf-chain ([a-z+]+=\d+)", _read())
        self.assertGreaterEqual(len(specs), 3)
        for spec in specs:
            parse_maf_chain(spec)

    def test_endpoint_strings_parse_to_a_maf_offer(self) -> None:
        descriptions = [d.strip() for d in _text_block_after(".. checked-endpoint-strings").splitlines()
                        if d.strip()]
        self.assertEqual(len(descriptions), 3)
        for description in descriptions:
            endpoint = clientFromString(MemoryReactorClock(), description)
            self.assertIsInstance(endpoint, SOCKS5ClientEndpoint, description)
            methods = [factory.method for factory in endpoint.methods]
            self.assertEqual(methods[0], AuthMethod.MAF, description)
            maf = endpoint.methods[0]
            names = description.split("maf_submethods=")[1].split(":")[0].split("+")
            self.assertEqual([i for i, _ in maf.submethods], [SUBMETHOD_IDS[n] for n in names], description)
        self.assertEqual([f.method for f in clientFromString(MemoryReactorClock(), descriptions[2]).methods],
                         [AuthMethod.MAF, AuthMethod.USERPASS])


def _transcript() -> list[tuple[str, bytes, str]]:
    """(direction, bytes, description) for each complete line of the checked transcript."""
    lines = []
    for line in _text_block_after(".. checked-maf-transcript").splitlines():
        direction, hex_part, description = re.split(r"\s{2,}", line.strip(), maxsplit=2)
        if "..." in hex_part:
            continue  # the SOCKS 5 request, shown only in part
        lines.append((direction, bytes.fromhex(hex_part), description))
    return lines


class TranscriptTests(SynchronousTestCase):
    def test_the_transcript_is_what_the_code_sends(self) -> None:
        lines = _transcript()
        self.assertEqual(lines[0][:2], ("C", bytes([5, 1, AuthMethod.MAF])))
        self.assertEqual(lines[1][:2], ("S", bytes([5, AuthMethod.MAF])))
        client = MAFClientFactory([(TEST, TestSubMethodClientFactory())]).buildAuthenticator(SESSION)
        server = MAFServerFactory(ChainPolicy([Chain((TEST,), 1)]), {TEST: TestSubMethodServerFactory()})
        client_result, server_result, transcript = converse(client, server.buildAuthenticator(SESSION))
        self.assertEqual([(d.upper(), data) for d, data in transcript], [line[:2] for line in lines[2:]])
        self.assertTrue(client_result.succeeded and server_result.succeeded)
        self.assertIn(b"grade=1", lines[-1][1])


class PolicyProseTests(SynchronousTestCase):
    """The ChainPolicy behaviour "How the default policy decides" describes."""

    def run_maf(self, chains, offer, continue_on_failure=False, client_continues=False):
        """Server sub-methods: test, userpass, and a stand-in "gssapi" that fails unless sent TEST."""
        server = MAFServerFactory(
            ChainPolicy(chains, continue_on_failure=continue_on_failure),
            {TEST: TestSubMethodServerFactory(), USERPASS: userpass_server(), GSSAPI: TestSubMethodServerFactory()},
        ).buildAuthenticator(SESSION)
        client = MAFClientFactory(offer, continue_on_failure=client_continues)
        return converse(client.buildAuthenticator(SESSION), server)

    def test_continue_on_failure_needs_the_same_start(self) -> None:
        failing_gssapi = (GSSAPI, TestSubMethodClientFactory(b"NOPE"))
        good_password = (USERPASS, UserPassClientFactory("alice", "secret"))
        offer = [good_password, failing_gssapi, (TEST, TestSubMethodClientFactory())]
        # The proxy's policy hears of the failure only from a client that goes on after it.
        # userpass+gssapi=3, userpass+test=1: a failed gssapi after userpass leads to test.
        _, result, _ = self.run_maf([Chain((USERPASS, GSSAPI), 3), Chain((USERPASS, TEST), 1)], offer, True,
                                    client_continues=True)
        self.assertTrue(result.succeeded, result.reason)
        self.assertEqual(result.identity.attributes["submethods"], ("userpass", "test"))
        self.assertEqual(result.identity.attributes["grade"], 1)
        # test+gssapi=3, userpass=1: userpass does not begin with test, so FAILURE.
        _, result, _ = self.run_maf([Chain((TEST, GSSAPI), 3), Chain((USERPASS,), 1)], offer, True,
                                    client_continues=True)
        self.assertFalse(result.succeeded)
        self.assertIn("the client offers no acceptable chain", result.reason)
        # Without continue-on-failure the first failure ends it.
        client_result, result, _ = self.run_maf(
            [Chain((USERPASS, GSSAPI), 3), Chain((USERPASS, TEST), 1)], offer, client_continues=True)
        self.assertFalse(result.succeeded)
        self.assertIn("sub-method gssapi failed", result.reason)
        self.assertIn("the proxy's MAF failed: sub-method gssapi failed", client_result.reason)

    def test_the_client_stops_at_its_own_failure_by_default(self) -> None:
        """The page: this project's client sends no WHAT NEXT? after its own failed sub-method."""
        offer = [(USERPASS, UserPassClientFactory("alice", "secret")), (GSSAPI, TestSubMethodClientFactory(b"NOPE")),
                 (TEST, TestSubMethodClientFactory())]
        client_result, server_result, transcript = self.run_maf(
            [Chain((USERPASS, GSSAPI), 3), Chain((USERPASS, TEST), 1)], offer, continue_on_failure=True)
        self.assertFalse(client_result.succeeded)
        self.assertIn("sub-method gssapi failed here", client_result.reason)
        self.assertIsNone(server_result)  # the proxy's policy never got to decide
        # After the server's FAIL answer to the failing sub-method, the client sent nothing more.
        self.assertEqual(transcript[-1][0], "s")

    def test_the_proxys_order_not_the_clients(self) -> None:
        offer = [(TEST, TestSubMethodClientFactory()), (USERPASS, UserPassClientFactory("alice", "secret"))]
        _, result, _ = self.run_maf([Chain((USERPASS, TEST), 2), Chain((TEST,), 1)], offer)
        self.assertEqual(result.identity.attributes["submethods"], ("userpass", "test"))


class MAFExampleTests(IntegrationTestCase):
    """The examples, each against a fresh proxy and web server on 127.0.0.1."""

    def assertPage(self, response: bytes) -> None:
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK\r\n"), response[:100])
        self.assertTrue(response.endswith(BODY), response[-100:])

    @exercises("fetch_with_maf")
    @inlineCallbacks
    def test_fetch_with_maf_against_the_default_policy(self):
        web_port, _ = self.byteServer(BODY)
        proxy_port, factory = self.startSOCKS(methods=["maf"], passwd=_passwd(self),
                                              maf_chains=["userpass+test=1"])
        logs = self.captureLogs()
        identity, response = yield load_example("fetch_with_maf")(reactor, proxy_port, web_port)
        self.assertPage(response)
        self.assertEqual((identity.method, identity.user), (AuthMethod.MAF, "alice"))
        self.assertEqual(identity.attributes["grade"], 1)
        self.assertEqual(identity.attributes["submethods"], ("userpass", "test"))
        yield factory.context.whenDrained()
        for expected in ("MAF: sub-method userpass succeeded", "MAF: sub-method test succeeded",
                         "socks5 user=alice method=maf protection=- command=connect"):
            self.assertTrue([line for line in logs if expected in line], (expected, logs))

    @exercises("serve_with_own_policy")
    @inlineCallbacks
    def test_serve_with_own_policy(self):
        from tests.helpers.ports import free_port

        web_port, _ = self.byteServer(BODY)
        proxy_port = free_port()
        service = load_example("serve_with_own_policy")(reactor, f"tcp:{proxy_port}:interface=127.0.0.1",
                                                          _passwd(self))
        service.startService()
        self.addCleanup(service.stopService)
        # Both sub-methods offered and supported ran: grade 2.
        identity, response = yield load_example("fetch_with_maf")(reactor, proxy_port, web_port)
        self.assertPage(response)
        self.assertEqual((identity.user, identity.attributes["grade"]), ("alice", 2))
        # One sub-method (the test method alone): grade 1, no user.
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port)
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port,
                                        [MAFClientFactory([(TEST, TestSubMethodClientFactory())])])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual((connection.identity.user, connection.identity.attributes["grade"]), (None, 1))
        yield connection.protocol.done
        # A failure fails the whole. The default client stops at its own failure, with its own reason.
        wrong_password = [(USERPASS, UserPassClientFactory("alice", "wrong")), (TEST, TestSubMethodClientFactory())]
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port, [MAFClientFactory(wrong_password)])
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("sub-method userpass failed here: proxy rejected the user name or password", str(error))
        # A client that goes on after its failure hears the policy's reason.
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port,
                                        [MAFClientFactory(wrong_password, continue_on_failure=True)])
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("the proxy's MAF failed: sub-method 0x00000003 failed: bad user name or password", str(error))
        yield service.factory.context.whenDrained()

    def test_non_loopback_needs_methods_maf(self):
        """The page's advice for a custom policy on a public listener."""
        self.assertRaises(ConfigError, Config.build, listen=["tcp:1080:interface=192.0.2.10"])
        Config.build(listen=["tcp:1080:interface=192.0.2.10"], methods=["maf"], maf_chains=["userpass=1"])

    def test_a_chain_of_test_alone_is_refused_by_the_open_proxy_check(self):
        """Security notes: a MAF chain made only of ``test`` counts as no authentication."""
        from twisted.python.usage import UsageError

        from txsocksgss.server.service import makeServerFactory
        from txsocksgss.tap import Options

        public = ["tcp:1080:interface=192.0.2.10"]
        error = self.assertRaises(ConfigError, Config.build, listen=public, methods=["maf"], maf_chains=["test=1"])
        self.assertIn("refusing to start an unauthenticated proxy", str(error))
        # ... also next to a chain that authenticates: any chain of test alone opens the proxy.
        error = self.assertRaises(ConfigError, Config.build, listen=public, methods=["maf"], passwd=_passwd(self),
                                  maf_chains=["userpass+test=2", "test=1"])
        self.assertIn("refusing to start an unauthenticated proxy", str(error))
        # twistd refuses it before anything listens.
        self.assertRaises(UsageError, Options().parseOptions,
                          ["--listen", public[0], "--method", "maf", "--maf-chain", "test=1"])
        # On loopback, or with --allow-open, it starts.
        makeServerFactory(Config.build(methods=["maf"], maf_chains=["test=1"]), reactor)
        makeServerFactory(Config.build(listen=public, methods=["maf"], maf_chains=["test=1"], allow_open=True),
                          reactor)


class WorkedExampleTests(IntegrationTestCase):
    """ "gssapi, or password+test", with the page's own TOML, a real KDC and real rules."""

    pytestmark = pytest.mark.kerberos

    def worked_example(self, **overrides: Any) -> dict[str, Any]:
        [table] = [tomllib.loads(block) for _, block in code_blocks(_read(), "toml")
                   if "/etc/socksgss/proxy.toml" in block]
        self.assertEqual(table["maf_chains"], ["gssapi=2", "userpass+test=1"])
        table.update(listen=["tcp:0:interface=127.0.0.1"], **overrides)
        return table

    @inlineCallbacks
    def test_grades_and_rules_as_the_page_says(self):
        from tests.helpers.kerberos import SERVICE_HOST, test_realm
        from txsocksgss.auth.gssapi import GSSAPIClientFactory
        from txsocksgss.server.rules import rules_from_table

        realm = test_realm()
        table = self.worked_example()
        rules = rules_from_table({"default": table.pop("default"), "rule": table.pop("rule")})
        web_port, _ = self.byteServer(BODY)
        proxy_port, _ = self.startSOCKS(
            listen=table["listen"], methods=table["methods"], passwd=_passwd(self),
            gssapi_keytab=realm.service_keytab, gssapi_protection=table["gssapi_protection"],
            maf_chains=table["maf_chains"], rules=rules)
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port)
        kerberos = (GSSAPI, GSSAPIClientFactory(host=SERVICE_HOST))
        password = (USERPASS, UserPassClientFactory("alice", PASSWORD.decode()))
        test = (TEST, TestSubMethodClientFactory())

        # All three offered, with a ticket: gssapi, grade 2, protected, any port allowed.
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port, [MAFClientFactory([kerberos, password, test])])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.attributes["grade"], 2)
        self.assertEqual(connection.identity.attributes["submethods"], ("gssapi",))
        self.assertIsNotNone(connection.handshake.protection)
        self.assertTrue((yield connection.protocol.done).endswith(BODY))

        # userpass and test: grade 1, only ports 80 and 443 (the web server is elsewhere): REP 02.
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port, [MAFClientFactory([password, test])])
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ConnectionNotAllowed)

        # gssapi and userpass: the first chain again; userpass never runs.
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port, [MAFClientFactory([kerberos, password])])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.attributes["submethods"], ("gssapi",))
        self.assertEqual(connection.identity.attributes["grade"], 2)
        yield connection.protocol.done

        # userpass alone: no chain is complete.
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port, [MAFClientFactory([password])])
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("the client offers no acceptable chain", str(error))

    @exercises("fetch_with_fallback")
    @inlineCallbacks
    def test_without_a_ticket_continue_on_failure_falls_back_to_grade_1(self):
        """The last case of the worked example, with the page's fetch_with_fallback client."""
        from tests.helpers.kerberos import SERVICE_HOST, test_realm
        from txsocksgss.auth.gssapi import GSSAPIClientFactory

        realm = test_realm()
        fetch_with_fallback = load_example("fetch_with_fallback")
        web_port, _ = self.byteServer(BODY)
        proxies, factories = {}, {}
        for flag in (False, True):
            proxies[flag], factories[flag] = self.startSOCKS(methods=["maf"], passwd=_passwd(self),
                                               gssapi_keytab=realm.service_keytab,
                                               maf_chains=["gssapi=2", "userpass+test=1"],
                                               maf_continue_on_failure=flag)

        # With a ticket: the first chain, grade 2.
        identity, response = yield fetch_with_fallback(reactor, SERVICE_HOST, proxies[True], web_port)
        self.assertTrue(response.endswith(BODY))
        self.assertEqual((identity.attributes["grade"], identity.attributes["submethods"]), (2, ("gssapi",)))

        # Without a ticket.
        no_ticket = os.path.abspath(self.mktemp())
        ccache = os.environ.get("KRB5CCNAME")
        os.environ["KRB5CCNAME"] = f"FILE:{no_ticket}"  # the GSS-API library reads the real environment
        self.addCleanup(_restore_environment, "KRB5CCNAME", ccache)
        # The client goes on after its GSS-API failure, and so does the proxy: grade 1.
        identity, response = yield fetch_with_fallback(reactor, SERVICE_HOST, proxies[True], web_port)
        self.assertTrue(response.endswith(BODY))
        self.assertEqual((identity.user, identity.attributes["grade"]), ("alice", 1))
        self.assertEqual(identity.attributes["submethods"], ("userpass", "test"))
        # The client goes on, the proxy does not: FAILURE, the client gave up.
        error = yield self.assertFailure(fetch_with_fallback(reactor, SERVICE_HOST, proxies[False], web_port),
                                         ClientAuthenticationFailed)
        self.assertIn("the proxy's MAF failed: sub-method gssapi failed: the client gave up", str(error))
        # The default client stops at its own failure, whatever the proxy would do.
        kerberos = (GSSAPI, GSSAPIClientFactory(host=SERVICE_HOST))
        offer = [kerberos, (USERPASS, UserPassClientFactory("alice", PASSWORD.decode())),
                 (TEST, TestSubMethodClientFactory())]
        endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", proxies[True]), "127.0.0.1",
                                        web_port, [MAFClientFactory(offer)])
        logs = self.captureLogs()
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("sub-method gssapi failed here", str(error))
        yield factories[True].context.whenDrained()
        self.assertTrue([line for line in logs if "method=maf" in line
                         and "outcome=client closed during negotiation" in line], logs)
