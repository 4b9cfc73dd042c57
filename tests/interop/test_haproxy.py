"""
Behind a load balancer that speaks the PROXY protocol.

`HAProxyInteropTests` runs Debian's haproxy (mode tcp, balance roundrobin)
in front of TWO ``twistd -n socksgss`` processes that listen with
``--listen haproxy:tcp:PORT:interface=127.0.0.1``, once with PROXY v1
(``send-proxy``) and once with v2 (``send-proxy-v2``).  The proxies' TCP peer
is always haproxy (127.0.0.1); the rules must see the ORIGINAL client: a
client that reaches haproxy from 127.0.0.2 gets through, one from
127.0.0.1 is denied (REP 02).  Sessions spread over both proxies (counted
in each process's session lines).

`PROXYHeaderTests` is the same listener in-process with hand-written
PROXY headers, for what the session knows about its client (its log line,
the per-client limits).

Notes for operators, as the tests show them: a ``haproxy:`` listener counts
as public, so an unauthenticated proxy behind it needs ``--allow-open``, and
the destination guard is on by default there (``auto``), so these tests,
whose destination is on 127.0.0.1, turn it off.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from tests.helpers.clients import Fetcher, HostileClient
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.processes import TWISTD, WatchedProcess, require_program, spawnWatched
from tests.helpers.stress import waitUntil
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.errors import ConnectionNotAllowed
from txsocksgss.server.config import Config
from txsocksgss.server.service import makeServerFactory
from txsocksgss.wire.socks5 import Address, Command, Request

_BODY = os.urandom(64 * 1024)
_READY_WITHIN = 15.0
_RULES = """\
default = "deny"

[[rule]]
action = "allow"
name = "original-clients"
from = ["127.0.0.2/32", "127.0.0.3/32", "127.0.0.4/32"]
"""


@pytest.mark.interop
class HAProxyInteropTests(IntegrationTestCase):
    timeout = 120

    def spawn(self, name: str, executable: str, args: list[str]) -> WatchedProcess:
        # Ended with SIGTERM, bounded: a process that ignores it is killed.
        return spawnWatched(self, name, executable, args, stop_grace=_READY_WITHIN)

    @inlineCallbacks
    def startProxies(self, rules: str, *extra: str) -> Any:
        """Two twistd socksgss processes on haproxy: listeners; fires with [(port, process), ...]."""
        proxies = []
        for name in ("a", "b"):
            port = free_port()
            process = self.spawn(f"twistd {name}", TWISTD, [
                "-n", "--pidfile=", "--logfile=-", "socksgss",
                "--listen", f"haproxy:tcp:{port}:interface=127.0.0.1",
                "--allow-open", "--destination-guard", "off", "--rules", rules, *extra])
            proxies.append((port, process))
        for _port, process in proxies:
            yield process.waitFor(b"txsocksgss listening on")
        return proxies

    @inlineCallbacks
    def startHAProxy(self, proxies: list[tuple[int, WatchedProcess]]) -> Any:
        """haproxy in the foreground, one frontend per PROXY version; fires with {1: port, 2: port}."""
        haproxy = require_program("haproxy")
        frontends = {1: free_port(), 2: free_port()}
        directory = self.mktemp()
        os.makedirs(directory)
        config = os.path.join(directory, "haproxy.cfg")
        sections = ["global\n    maxconn 512\n",
                    "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n"]
        for version, port in frontends.items():
            send = "send-proxy" if version == 1 else "send-proxy-v2"
            servers = "".join(f"    server proxy{i} 127.0.0.1:{p} {send}\n" for i, (p, _) in enumerate(proxies))
            sections.append(f"frontend socks_v{version}\n    bind 127.0.0.1:{port}\n    default_backend proxies_v{version}\n")
            sections.append(f"backend proxies_v{version}\n    balance roundrobin\n{servers}")
        with open(config, "w") as f:
            f.write("\n".join(sections))
        process = self.spawn("haproxy", haproxy, ["-db", "-f", config])
        for port in frontends.values():
            yield self.probe(port, process)
        return frontends

    @inlineCallbacks
    def probe(self, port: int, process: WatchedProcess) -> Any:
        """Connect until the frontend accepts (haproxy logs nothing when ready); bounded."""
        deadline = reactor.seconds() + _READY_WITHIN
        while True:
            if process.ended.called:
                raise AssertionError(f"haproxy exited:\n{process.output.decode(errors='replace')}")
            try:
                probe = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2), Protocol())
            except ConnectError:
                if reactor.seconds() > deadline:
                    raise AssertionError(f"haproxy did not listen on {port} within {_READY_WITHIN}s:\n"
                                         f"{process.output.decode(errors='replace')}")
                yield deferLater(reactor, 0.05, lambda: None)
                continue
            probe.transport.abortConnection()
            return

    def endpoint(self, frontend: int, source: str, web_port: int) -> SOCKS5ClientEndpoint:
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", frontend, bindAddress=(source, 0))
        return SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port)

    @inlineCallbacks
    def fetch(self, frontend: int, source: str, web_port: int, version: int) -> Any:
        connection = yield self.endpoint(frontend, source, web_port).establish(Factory.forProtocol(Fetcher))
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(_BODY), f"not byte-exact through PROXY v{version}")

    @inlineCallbacks
    def test_rules_see_the_original_client_and_sessions_spread_over_both_proxies(self):
        web_port, _web = self.byteServer(_BODY)
        rules = self.mktemp()
        with open(rules, "w") as f:
            f.write(_RULES)
        proxies = yield self.startProxies(rules)
        frontends = yield self.startHAProxy(proxies)
        for version, frontend in frontends.items():
            for _ in range(6):
                yield self.fetch(frontend, "127.0.0.2", web_port, version)
            for _ in range(2):
                # haproxy's own address, 127.0.0.1, is what the proxies' sockets see.
                error = yield self.assertFailure(
                    self.endpoint(frontend, "127.0.0.1", web_port).establish(Factory.forProtocol(Fetcher)),
                    ConnectionNotAllowed)
                self.assertEqual(error.code, 0x02, f"PROXY v{version}")

        destination = f"destination=127.0.0.1:{web_port} "

        def counts() -> list[int]:
            return [len(process.sessionLines(destination)) for _port, process in proxies]

        # Each proxy writes its session line as the session ends; the pipe may lag the client.
        yield waitUntil(lambda: sum(counts()) >= 16, 10, f"16 session lines (have {counts()})")
        self.assertEqual(sum(counts()), 2 * 6 + 2 * 2, counts())
        for count in counts():
            self.assertGreaterEqual(count, 4, f"the sessions did not spread over both proxies: {counts()}")
        denied = [line for _port, process in proxies for line in process.sessionLines(destination)
                  if "outcome=denied" in line]
        self.assertEqual(len(denied), 4, denied)
        for _port, process in proxies:
            text = process.output.decode(errors="replace")
            self.assertNotIn("Traceback", text)
            self.assertNotIn("Unhandled", text)


def _proxy_v1(source: str, source_port: int, destination_port: int) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {source_port} {destination_port}\r\n".encode()


def _proxy_v2(source: str, source_port: int, destination_port: int) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", source_port,
                                                                                        destination_port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


class PROXYHeaderTests(IntegrationTestCase):
    """
    The ``haproxy:`` listener in-process, with hand-written PROXY headers: what
    the session knows about its client must be the client the header names,
    not the load balancer that connected.

    Twisted's PROXY wrapper connects the wrapped protocol as soon as the TCP
    connection is accepted, before the header has arrived, and
    `SOCKS5ServerProtocol.connectionMade` reads ``getPeer()`` then: the
    session line, the denial lines and the admission limits (per-client
    sessions, the authentication-failure cool-down) all get the balancer's
    address.  Only the access rules, asked later, see the real client.
    """

    @inlineCallbacks
    def listenBehindPROXY(self, **config: Any) -> Any:
        config = {"listen": ["haproxy:tcp:0:interface=127.0.0.1"], "allow_open": True,
                  "destination_guard": "off", **config}
        factory = makeServerFactory(Config.build(**config), reactor)
        port = yield serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1").listen(factory)

        @inlineCallbacks
        def stop() -> Any:
            yield port.stopListening()
            factory.context.closeSessions()
            yield factory.context.whenDrained()

        self.addCleanup(stop)
        return port.getHost().port, factory

    @inlineCallbacks
    def tunnel(self, port: int, header: bytes, web_port: int) -> Any:
        """A CONNECT (method 00) behind ``header``; fires with the client once the reply is in (or the server closed)."""
        client = HostileClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

        def close() -> Deferred[None]:
            client.transport.loseConnection()
            return client.lost

        self.addCleanup(close)
        client.send(header + b"\x05\x01\x00" + Request(Command.CONNECT, Address.of("127.0.0.1", web_port)).serialize())
        yield client.until(lambda r: len(r) >= 12)
        return client

    @inlineCallbacks
    def test_session_line_names_the_client_from_the_header(self):
        logs = self.captureLogs()
        web_port, _web = self.byteServer(_BODY)
        port, factory = yield self.listenBehindPROXY()
        for header in (_proxy_v1("127.0.0.2", 40001, port), _proxy_v2("127.0.0.3", 40002, port)):
            client = yield self.tunnel(port, header, web_port)
            self.assertEqual(client.received[2:4], b"\x05\x00")
            client.send(b"GET / HTTP/1.0\r\n\r\n")
            yield client.lost
            self.assertTrue(client.received.endswith(_BODY))
        yield factory.context.whenDrained()
        clients = [line.split(" ", 2)[1] for line in logs if line.startswith("session client=")]
        self.assertEqual(clients, ["client=127.0.0.2:40001", "client=127.0.0.3:40002"])

    @inlineCallbacks
    def test_per_client_limit_counts_the_clients_from_the_header(self):
        web_port, _web = self.byteServer(_BODY)
        port, _factory = yield self.listenBehindPROXY(max_sessions_per_client=1)
        first = yield self.tunnel(port, _proxy_v1("127.0.0.2", 40001, port), web_port)
        self.assertEqual(first.received[2:4], b"\x05\x00")
        # Another client behind the same balancer: the limit is one session per *client*.
        second = yield self.tunnel(port, _proxy_v1("127.0.0.3", 40002, port), web_port)
        self.assertEqual(second.received[2:4], b"\x05\x00", "the second client was refused: "
                         f"{second.received.hex() or 'closed without a reply'}")
