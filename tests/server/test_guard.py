"""
The destination guard: the pure verdict on addresses, the proxy's own
addresses (the bind trick and its fallback), the setting's modes, the server
protocol with fakes (CONNECT, names that resolve into guarded addresses,
SOCKS 4, BIND, UDP datagrams), and real sockets on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.fakes import FakeResolver, HangingResolver
from tests.helpers.harness import ServerHarness, connect_request, socks4_harness, socks4_request, udp_session
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.logs import capture_logs, lines_with
from txsocksgss.server.guard import (
    CLOUD_METADATA_ADDRESSES,
    DestinationGuard,
    GuardReason,
    OwnAddresses,
    destination_guard_for,
    guard_verdict,
    interface_addresses,
    listener_interfaces,
    local_addresses,
)
from txsocksgss.server.rules import rules_from_table
from txsocksgss.wire.socks4 import SOCKS4Command
from txsocksgss.wire.socks5 import Address, Command, ReplyCode, Request
from txsocksgss.wire.udp import UDPDatagram


class VerdictTests(SynchronousTestCase):
    def assertVerdict(self, address: str, reason: GuardReason | None, own=frozenset()) -> None:
        self.assertIs(guard_verdict(address, own), reason, address)

    def test_loopback(self):
        for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
            self.assertVerdict(address, GuardReason.LOOPBACK)

    def test_link_local(self):
        for address in ("169.254.0.1", "169.254.255.254", "fe80::1", "febf::1", "fe80::1%eth0",
                        "::ffff:169.254.1.1"):
            self.assertVerdict(address, GuardReason.LINK_LOCAL)

    def test_cloud_metadata_is_named_as_such(self):
        for address in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
            self.assertVerdict(address, GuardReason.CLOUD_METADATA)
        self.assertEqual({str(a) for a in CLOUD_METADATA_ADDRESSES}, {"169.254.169.254", "fd00:ec2::254"})

    def test_unspecified(self):
        for address in ("0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0"):
            self.assertVerdict(address, GuardReason.UNSPECIFIED)

    def test_unspecified_means_any_host_for_bind(self):
        self.assertIsNone(guard_verdict("0.0.0.0", unspecified_means_any=True))
        self.assertIsNone(guard_verdict("::", unspecified_means_any=True))
        self.assertIs(guard_verdict("127.0.0.1", unspecified_means_any=True), GuardReason.LOOPBACK)

    def test_own_addresses(self):
        own = frozenset({"198.51.100.7", "2001:db8::7"})
        self.assertVerdict("198.51.100.7", GuardReason.OWN_ADDRESS, own)
        self.assertVerdict("::ffff:198.51.100.7", GuardReason.OWN_ADDRESS, own)
        self.assertVerdict("2001:DB8:0::7", GuardReason.OWN_ADDRESS, own)
        self.assertVerdict("198.51.100.8", None, own)

    def test_ordinary_destinations_pass(self):
        for address in ("93.184.216.34", "10.1.2.3", "192.168.1.1", "2001:db8::1", "fd00::1", "8.8.8.8"):
            self.assertVerdict(address, None)

    def test_not_an_address(self):
        self.assertVerdict("example.com", None)
        self.assertVerdict("", None)


class OwnAddressTests(SynchronousTestCase):
    def test_fixed_addresses_only_without_a_wildcard_listener(self):
        asked = []
        own = OwnAddresses(["198.51.100.7"], all_local=False, bindable=lambda a: asked.append(a) or True)
        asked.clear()
        self.assertIn("198.51.100.7", own)
        self.assertNotIn("198.51.100.8", own)
        self.assertEqual(asked, [])
        self.assertNotIn(None, own)

    def test_bind_trick_with_a_wildcard_listener(self):
        local = {"198.51.100.9", "2001:db8::9"}
        own = OwnAddresses([], all_local=True, bindable=lambda a: a in local, snapshot=lambda: frozenset())
        self.assertIn("198.51.100.9", own)
        self.assertIn("::ffff:198.51.100.9", own)
        self.assertIn("2001:db8::9", own)
        self.assertNotIn("198.51.100.10", own)
        self.assertIn("bind test", own.describe())

    def test_snapshot_when_the_host_binds_anything(self):
        # net.ipv4.ip_nonlocal_bind = 1: every bind succeeds, so the trick is useless.
        own = OwnAddresses([], all_local=True, bindable=lambda a: True,
                           snapshot=lambda: frozenset({"198.51.100.9"}))
        self.assertIn("198.51.100.9", own)
        self.assertNotIn("198.51.100.10", own)
        self.assertIn("snapshot", own.describe())

    def test_the_real_bind_trick(self):
        own = OwnAddresses([], all_local=True)
        self.assertIn("127.0.0.1", own)  # loopback is guarded anyway; it shows the bind works
        # A documentation address no interface holds.
        self.assertNotIn("203.0.113.254", own)
        for address in interface_addresses():
            if not ipaddress.ip_address(address).is_link_local:
                self.assertIn(address, own)

    def test_local_addresses_include_loopback(self):
        self.assertIn("127.0.0.1", interface_addresses())
        self.assertLessEqual(interface_addresses(), local_addresses())


class ModeTests(SynchronousTestCase):
    def test_listener_interfaces(self):
        self.assertEqual(listener_interfaces(["tcp:1080:interface=192.0.2.5", "unix:/run/s.sock"]),
                         (frozenset({"192.0.2.5"}), False))
        self.assertEqual(listener_interfaces([r"tcp6:1080:interface=2001\:db8\:\:5"]),
                         (frozenset({"2001:db8::5"}), False))
        for wildcard in ("tcp:1080", "tcp:1080:interface=0.0.0.0", r"tcp6:1080:interface=\:\:", "tcp6:1080",
                         "haproxy:tcp:1080", "systemd:domain=INET:index=0"):
            self.assertTrue(listener_interfaces([wildcard])[1], wildcard)

    def test_auto_is_on_only_with_a_non_loopback_listener(self):
        self.assertIsNone(destination_guard_for("auto", ["tcp:1080:interface=127.0.0.1", "unix:/x"]))
        self.assertIsNotNone(destination_guard_for("auto", ["tcp:1080:interface=127.0.0.1", "tcp:1081"]))
        self.assertIsNotNone(destination_guard_for("on", ["tcp:1080:interface=127.0.0.1"]))
        self.assertIsNone(destination_guard_for("off", ["tcp:1080"]))
        self.assertRaises(ValueError, destination_guard_for, "sometimes", ["tcp:1080"])

    def test_listener_address_is_own(self):
        guard = destination_guard_for("on", ["tcp:1080:interface=198.51.100.7"])
        self.assertIs(guard.check("connect", "198.51.100.7"), GuardReason.OWN_ADDRESS)
        self.assertIsNone(guard.check("connect", "198.51.100.8"))

    def test_wildcard_listener_makes_every_local_address_own(self):
        guard = destination_guard_for("auto", ["tcp:1080"])
        public = [a for a in interface_addresses() if not ipaddress.ip_address(a).is_loopback
                  and not ipaddress.ip_address(a).is_link_local]
        for address in public:
            self.assertIs(guard.check("connect", address), GuardReason.OWN_ADDRESS, address)


GUARD = DestinationGuard(frozenset({"192.0.2.1"}))


def guarded_harness(**kwargs) -> ServerHarness:
    harness = ServerHarness(**kwargs)
    harness.context.guard = GUARD
    return harness


class ProtocolTests(SynchronousTestCase):
    def connect(self, host: str, **kwargs):
        harness = guarded_harness(**kwargs)
        harness.send(b"\x05\x01\x00")
        harness.take()
        harness.send(connect_request(host, 80))
        return harness

    def assertDenied(self, harness, reason: str) -> None:
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.NOT_ALLOWED)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertTrue(harness.transport.disconnecting)
        self.assertIn(f"destination guard ({reason})", harness.protocol.record.outcome)

    def test_connect_to_loopback_is_02_with_a_log_line(self):
        logs = capture_logs(self)
        harness = self.connect("127.0.0.1")
        self.assertDenied(harness, "loopback")
        [line] = lines_with(logs, "denied connect to 127.0.0.1:80")
        self.assertIn("by destination guard (loopback)", line)

    def test_every_guarded_kind(self):
        for host, reason in [("::1", "loopback"), ("169.254.169.254", "cloud metadata"),
                             ("fd00:ec2::254", "cloud metadata"), ("169.254.10.10", "link-local"),
                             ("fe80::1", "link-local"), ("0.0.0.0", "unspecified address"),
                             ("::", "unspecified address"), ("192.0.2.1", "the proxy's own address"),
                             ("::ffff:127.0.0.1", "loopback")]:
            self.assertDenied(self.connect(host), reason)

    def test_a_name_that_resolves_to_loopback_is_denied_after_dns(self):
        harness = self.connect("sneaky.test", names={"sneaky.test": ["127.0.0.1"]})
        self.assertEqual(harness.resolver.asked, ["sneaky.test"])
        self.assertDenied(harness, "loopback")

    def test_only_the_unguarded_addresses_of_a_name_are_used(self):
        harness = self.connect("mixed.test", names={"mixed.test": ["127.0.0.1", "169.254.169.254", "198.51.100.3"]})
        self.assertEqual([c[:2] for c in harness.reactor.tcpClients], [("198.51.100.3", 80)])

    def test_rules_cannot_allow_what_the_guard_denies(self):
        policy = rules_from_table({"rule": [{"action": "allow", "to": ["127.0.0.0/8"]}], "default": "deny"})
        self.assertDenied(self.connect("127.0.0.1", policy=policy), "loopback")

    def test_ordinary_destination_still_follows_the_rules(self):
        harness = self.connect("198.51.100.3")
        self.assertEqual([c[:2] for c in harness.reactor.tcpClients], [("198.51.100.3", 80)])

    def test_without_the_guard_loopback_is_allowed(self):
        harness = ServerHarness()
        harness.send(b"\x05\x01\x00" + connect_request("127.0.0.1", 80))
        self.assertEqual([c[:2] for c in harness.reactor.tcpClients], [("127.0.0.1", 80)])

    def test_socks4_gets_91(self):
        for host in ("127.0.0.1", "localhost.test"):
            harness = socks4_harness(names={"localhost.test": ["127.0.0.1"]})
            harness.context.guard = GUARD
            harness.send(socks4_request(host))
            self.assertEqual(harness.take()[:2], b"\x00\x5b")
            self.assertEqual(harness.reactor.tcpClients, [])
            self.assertIn("destination guard (loopback)", harness.protocol.record.outcome)

    def test_socks4_bind_to_a_guarded_host_gets_91(self):
        harness = socks4_harness()
        harness.context.guard = GUARD
        harness.send(socks4_request("169.254.169.254", command=SOCKS4Command.BIND))
        self.assertEqual(harness.take()[:2], b"\x00\x5b")
        self.assertEqual(harness.reactor.tcpServers, [])

    def test_bind_naming_a_guarded_host_is_02(self):
        harness = guarded_harness()
        harness.send(b"\x05\x01\x00")
        harness.take()
        harness.send(Request(Command.BIND, Address.of("127.0.0.1", 0)).serialize())
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.NOT_ALLOWED)
        self.assertEqual(harness.reactor.tcpServers, [])
        self.assertIn("destination guard (loopback)", harness.protocol.record.outcome)

    def test_bind_for_any_host_is_allowed(self):
        harness = guarded_harness()
        harness.send(b"\x05\x01\x00" + Request(Command.BIND, Address.of("0.0.0.0", 0)).serialize())
        harness.reactor.advance(0)  # BIND listens on the next reactor turn
        self.assertEqual(len(harness.reactor.tcpServers), 1)


class UDPTests(SynchronousTestCase):
    def test_datagrams_to_guarded_addresses_are_dropped_and_logged(self):
        logs = capture_logs(self)
        _context, protocol, client_side, client = udp_session(
            FakeResolver({"inside.test": ["127.0.0.1"], "outside.test": ["198.51.100.3"]}), guard=GUARD)
        for host in ("127.0.0.1", "169.254.169.254", "inside.test", "192.0.2.1", "outside.test", "198.51.100.4"):
            datagram = UDPDatagram(0, Address.of(host, 53), b"query").serialize()
            client_side.protocol.datagramReceived(datagram, client)
        association = protocol.machine._command_handler
        self.assertEqual(association.dropped, 4)
        [outward] = [port for port in protocol.context.reactor.udpPorts if port.interface == "0.0.0.0"]
        self.assertEqual([addr for _data, addr in outward.written], [("198.51.100.3", 53), ("198.51.100.4", 53)])
        self.assertTrue(lines_with(logs, "denied udp to 169.254.169.254:53"))
        self.assertTrue(lines_with(logs, "by destination guard (cloud metadata)"))
        self.assertIs(protocol.context.guard, GUARD)

    def test_hanging_lookups_are_not_sent_anywhere(self):
        _context, protocol, client_side, client = udp_session(HangingResolver(), guard=GUARD)
        client_side.protocol.datagramReceived(UDPDatagram(0, Address.of("slow.test", 53), b"q").serialize(), client)
        outward = [port for port in protocol.context.reactor.udpPorts if port is not client_side]
        self.assertEqual([port.written for port in outward], [[] for _ in outward])


class RealSocketTests(IntegrationTestCase):
    @inlineCallbacks
    def test_guard_on_refuses_a_local_web_server_and_localhost_by_name(self):
        logs = self.captureLogs()
        web_port, web = self.byteServer(b"local secret")
        socks_port, factory = self.startSOCKS(destination_guard="on")
        self.assertIsNotNone(factory.context.guard)
        for host in ("127.0.0.1", "localhost"):
            client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of(host, web_port)))
            reply = yield client.reply(0)
            self.assertEqual(reply.code, ReplyCode.NOT_ALLOWED)
            yield client.lost
        self.assertEqual(web.closed, 0)
        self.assertTrue(lines_with(logs, f"denied connect to 127.0.0.1:{web_port} for 127.0.0.1"))
        self.assertEqual(len(lines_with(logs, "outcome=denied by destination guard (loopback)")), 2)

    @inlineCallbacks
    def test_guard_auto_is_off_on_a_loopback_listener(self):
        web_port, _web = self.byteServer(b"fine")
        socks_port, factory = self.startSOCKS()
        self.assertIsNone(factory.context.guard)
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", web_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        client.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        yield client.lost
        self.assertTrue(client.data.endswith(b"fine"))
