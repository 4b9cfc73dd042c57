"""Tests for txsocksgss.server.rules: matching, ordering, defaults, and loading."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IAccessPolicy
from txsocksgss.server.rules import (
    ALLOW_ALL,
    AccessRequest,
    Decision,
    HostPattern,
    HostPatternKind,
    PortRange,
    Rule,
    RuleSet,
    describe,
    load_rules,
    rules_from_table,
)

REQUEST = AccessRequest(
    client="10.1.2.3",
    command="connect",
    destination_host="www.example.com",
    destination_port=443,
    destination_address="192.0.2.10",
    user="alice@EXAMPLE.COM",
    method="gssapi",
)


def request(**changes: Any) -> AccessRequest:
    return replace(REQUEST, **changes)


def one_rule(**keys: Any) -> RuleSet:
    """A rule set with one allow rule holding ``keys`` and a default of deny."""
    return rules_from_table({"default": "deny", "rule": [{"action": "allow", **keys}]})


class RuleSetTests(SynchronousTestCase):
    def test_provides_access_policy(self) -> None:
        verifyObject(IAccessPolicy, ALLOW_ALL)
        verifyObject(IAccessPolicy, rules_from_table({"rule": [{"action": "deny"}]}))

    def test_allow_all_allows_everything(self) -> None:
        self.assertEqual(ALLOW_ALL.decide(REQUEST), Decision(True, "default allow"))

    def test_first_matching_rule_wins(self) -> None:
        rules = rules_from_table(
            {
                "rule": [
                    {"action": "deny", "name": "no-ssh", "ports": [22]},
                    {"action": "allow", "name": "web", "ports": [80, 443]},
                    {"action": "deny", "name": "never-reached", "ports": [443]},
                ]
            }
        )
        self.assertEqual(rules.decide(REQUEST), Decision(True, "rule 2 (web)"))
        self.assertEqual(
            rules.decide(request(destination_port=22)), Decision(False, "rule 1 (no-ssh)")
        )

    def test_unnamed_rule_is_labelled_by_number(self) -> None:
        rules = rules_from_table({"rule": [{"action": "deny", "ports": [1]}, {"action": "allow"}]})
        self.assertEqual(rules.decide(REQUEST), Decision(True, "rule 2"))

    def test_default_is_deny_when_rules_and_no_default(self) -> None:
        rules = rules_from_table({"rule": [{"action": "allow", "ports": [80]}]})
        self.assertEqual(rules.decide(REQUEST), Decision(False, "default deny"))

    def test_explicit_default_allow(self) -> None:
        rules = rules_from_table({"default": "allow", "rule": [{"action": "deny", "ports": [80]}]})
        self.assertEqual(rules.decide(REQUEST), Decision(True, "default allow"))

    def test_no_rules_no_default_is_allow_all(self) -> None:
        self.assertIs(rules_from_table({}), ALLOW_ALL)

    def test_no_rules_default_deny_denies_all(self) -> None:
        self.assertEqual(rules_from_table({"default": "deny"}).decide(REQUEST).allowed, False)

    def test_fields_are_anded(self) -> None:
        rules = one_rule(ports=[443], commands=["bind"])
        self.assertFalse(rules.decide(REQUEST).allowed)
        self.assertTrue(rules.decide(request(command="bind")).allowed)

    def test_ruleset_is_immutable_tuple(self) -> None:
        rules = RuleSet([Rule("allow")], default_allow=False)  # type: ignore[arg-type]
        self.assertIsInstance(rules.rules, tuple)

    @given(
        client=st.ip_addresses().map(str),
        port=st.integers(0, 65535),
        command=st.sampled_from(["connect", "bind", "udp"]),
        method=st.sampled_from(["none", "userpass", "gssapi", "maf", "socks4"]),
        version=st.sampled_from([4, 5]),
    )
    def test_rule_without_conditions_matches_everything(
        self, client: str, port: int, command: str, method: str, version: int
    ) -> None:
        r = request(
            client=client, destination_port=port, command=command, method=method, version=version
        )
        self.assertTrue(Rule("deny").matches(r))


class ClientTests(SynchronousTestCase):
    def test_client_network(self) -> None:
        rules = one_rule(**{"from": ["10.0.0.0/8"]})
        self.assertTrue(rules.decide(REQUEST).allowed)
        self.assertFalse(rules.decide(request(client="11.0.0.1")).allowed)

    def test_ipv6_client_network(self) -> None:
        rules = one_rule(**{"from": ["2001:db8::/32", "::1"]})
        self.assertTrue(rules.decide(request(client="2001:db8:1::5")).allowed)
        self.assertTrue(rules.decide(request(client="::1")).allowed)
        self.assertFalse(rules.decide(request(client="2001:db9::1")).allowed)
        self.assertFalse(rules.decide(request(client="10.0.0.1")).allowed)

    def test_ipv4_mapped_client_matches_ipv4_network(self) -> None:
        rules = one_rule(**{"from": ["127.0.0.0/8"]})
        self.assertTrue(rules.decide(request(client="::ffff:127.0.0.1")).allowed)

    def test_unparseable_client_never_matches_a_network(self) -> None:
        rules = one_rule(**{"from": ["0.0.0.0/0", "::/0"]})
        self.assertFalse(rules.decide(request(client="unix-socket")).allowed)

    @given(st.ip_addresses(v=4), st.integers(0, 32))
    def test_network_contains_iff_ipaddress_says_so(
        self, address: ipaddress.IPv4Address, prefix: int
    ) -> None:
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        rule = Rule("allow", clients=(network,))
        self.assertTrue(rule.matches(request(client=str(address))))
        outside = int(network.broadcast_address) + 1
        if outside <= 0xFFFFFFFF:
            self.assertFalse(rule.matches(request(client=str(ipaddress.IPv4Address(outside)))))


class DestinationTests(SynchronousTestCase):
    def test_network_matches_resolved_address(self) -> None:
        rules = one_rule(to=["192.0.2.0/24"])
        self.assertTrue(rules.decide(REQUEST).allowed)
        self.assertFalse(rules.decide(request(destination_address="198.51.100.1")).allowed)

    def test_network_matches_literal_destination(self) -> None:
        rules = one_rule(to=["192.0.2.0/24"])
        self.assertTrue(
            rules.decide(request(destination_host="192.0.2.99", destination_address=None)).allowed
        )

    def test_network_does_not_match_unresolved_name(self) -> None:
        rules = one_rule(to=["0.0.0.0/0"])
        self.assertFalse(rules.decide(request(destination_address=None)).allowed)

    def test_ipv6_destination_network(self) -> None:
        rules = one_rule(to=["2001:db8::/48", "::1"])
        self.assertTrue(
            rules.decide(request(destination_host="2001:db8:0:1::1", destination_address=None)).allowed
        )
        self.assertTrue(rules.decide(request(destination_address="::1")).allowed)
        self.assertFalse(rules.decide(request(destination_address="2001:db8:1::1")).allowed)

    def test_deny_intranet_catches_names_resolving_inside(self) -> None:
        rules = rules_from_table(
            {
                "default": "allow",
                "rule": [{"action": "deny", "name": "deny-intranet", "to": ["10.0.0.0/8"]}],
            }
        )
        decision = rules.decide(
            request(destination_host="intranet.example.com", destination_address="10.9.9.9")
        )
        self.assertEqual(decision, Decision(False, "rule 1 (deny-intranet)"))

    def test_exact_host_is_case_insensitive_and_exact(self) -> None:
        rules = one_rule(to=["Example.COM"])
        self.assertTrue(rules.decide(request(destination_host="example.com")).allowed)
        self.assertTrue(rules.decide(request(destination_host="EXAMPLE.com.")).allowed)
        self.assertFalse(rules.decide(request(destination_host="www.example.com")).allowed)
        self.assertFalse(rules.decide(request(destination_host="badexample.com")).allowed)

    def test_leading_dot_matches_domain_and_subdomains(self) -> None:
        rules = one_rule(to=[".example.com"])
        for host in ("example.com", "www.example.com", "a.b.EXAMPLE.com"):
            self.assertTrue(rules.decide(request(destination_host=host)).allowed, host)
        for host in ("badexample.com", "example.com.evil", "example.org"):
            self.assertFalse(rules.decide(request(destination_host=host)).allowed, host)

    def test_glob_matches_subdomains_only(self) -> None:
        rules = one_rule(to=["*.example.com"])
        self.assertTrue(rules.decide(request(destination_host="www.Example.com")).allowed)
        self.assertTrue(rules.decide(request(destination_host="a.b.example.com")).allowed)
        self.assertFalse(rules.decide(request(destination_host="example.com")).allowed)
        self.assertFalse(rules.decide(request(destination_host="badexample.com")).allowed)

    def test_host_pattern_kinds(self) -> None:
        self.assertEqual(HostPattern.parse("A.example"), HostPattern("a.example", HostPatternKind.EXACT))
        self.assertEqual(HostPattern.parse(".A.example"), HostPattern(".a.example", HostPatternKind.DOMAIN))
        self.assertEqual(HostPattern.parse("h?.example"), HostPattern("h?.example", HostPatternKind.GLOB))

    def test_networks_and_hosts_are_ored(self) -> None:
        rules = one_rule(to=["198.51.100.0/24", ".example.com"])
        self.assertTrue(rules.decide(REQUEST).allowed)
        self.assertTrue(
            rules.decide(request(destination_host="x.org", destination_address="198.51.100.7")).allowed
        )
        self.assertFalse(rules.decide(request(destination_host="x.org")).allowed)

    @given(
        labels=st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), max_size=4)
    )
    def test_domain_pattern_matches_any_subdomain(self, labels: list[str]) -> None:
        host = ".".join([*labels, "example", "com"])
        self.assertTrue(HostPattern.parse(".example.com").matches(host.upper()))


class PortCommandMethodVersionTests(SynchronousTestCase):
    def test_ports_and_ranges(self) -> None:
        rules = one_rule(ports=[80, "8000-8100", "443"])
        for port in (80, 443, 8000, 8050, 8100):
            self.assertTrue(rules.decide(request(destination_port=port)).allowed, port)
        for port in (0, 79, 81, 7999, 8101, 65535):
            self.assertFalse(rules.decide(request(destination_port=port)).allowed, port)

    def test_commands(self) -> None:
        rules = one_rule(commands=["bind", "udp"])
        self.assertFalse(rules.decide(REQUEST).allowed)
        self.assertTrue(rules.decide(request(command="udp")).allowed)

    def test_methods(self) -> None:
        rules = one_rule(methods=["userpass"])
        self.assertFalse(rules.decide(REQUEST).allowed)
        self.assertTrue(rules.decide(request(method="userpass", user="bob")).allowed)

    def test_versions(self) -> None:
        rules = one_rule(versions=[4])
        self.assertFalse(rules.decide(REQUEST).allowed)
        self.assertTrue(rules.decide(request(version=4, method="socks4")).allowed)

    def test_min_grade(self) -> None:
        rules = one_rule(min_grade=2)
        self.assertFalse(rules.decide(REQUEST).allowed)
        self.assertFalse(rules.decide(request(attributes={"grade": 1})).allowed)
        self.assertTrue(rules.decide(request(attributes={"grade": 2})).allowed)
        self.assertTrue(rules.decide(request(attributes={"grade": 3})).allowed)
        self.assertFalse(rules.decide(request(attributes={"grade": "9"})).allowed)

    def test_min_grade_zero_matches_without_grade(self) -> None:
        self.assertTrue(one_rule(min_grade=0).decide(REQUEST).allowed)


class UserTests(SynchronousTestCase):
    def test_exact_user(self) -> None:
        rules = one_rule(users=["bob", "alice@EXAMPLE.COM"])
        self.assertTrue(rules.decide(REQUEST).allowed)
        self.assertTrue(rules.decide(request(user="bob", method="userpass")).allowed)
        self.assertFalse(rules.decide(request(user="alice")).allowed)
        self.assertFalse(rules.decide(request(user="Bob", method="userpass")).allowed)

    def test_any_authenticated_user(self) -> None:
        rules = one_rule(users=["*"])
        self.assertTrue(rules.decide(REQUEST).allowed)
        self.assertFalse(rules.decide(request(user=None, method="none")).allowed)

    def test_anonymous_never_matches_users(self) -> None:
        rules = one_rule(users=["@EXAMPLE.COM", "bob"])
        self.assertFalse(rules.decide(request(user=None, method="none")).allowed)

    def test_realm_matches_gssapi_principals_of_that_realm(self) -> None:
        rules = one_rule(users=["@EXAMPLE.COM"])
        self.assertTrue(rules.decide(REQUEST).allowed)
        self.assertTrue(rules.decide(request(user="host/db.example.com@EXAMPLE.COM")).allowed)
        self.assertFalse(rules.decide(request(user="alice@OTHER.ORG")).allowed)
        self.assertFalse(rules.decide(request(user="alice@SUB.EXAMPLE.COM")).allowed)
        self.assertFalse(rules.decide(request(user="alice@example.com")).allowed)
        self.assertFalse(rules.decide(request(user="alice")).allowed)

    def test_realm_uses_last_at_sign(self) -> None:
        rules = one_rule(users=["@EXAMPLE.COM"])
        self.assertTrue(rules.decide(request(user="we\\@ird@EXAMPLE.COM")).allowed)
        self.assertFalse(rules.decide(request(user="x@EXAMPLE.COM@EVIL.ORG")).allowed)

    def test_realm_not_proven_by_password_user_name(self) -> None:
        rules = one_rule(users=["@EXAMPLE.COM"])
        self.assertFalse(
            rules.decide(request(user="mallory@EXAMPLE.COM", method="userpass")).allowed
        )

    def test_realm_attribute_counts(self) -> None:
        rules = one_rule(users=["@EXAMPLE.COM"])
        maf = request(user="alice@EXAMPLE.COM", method="maf", attributes={"realm": "EXAMPLE.COM"})
        self.assertTrue(rules.decide(maf).allowed)
        self.assertFalse(rules.decide(replace(maf, attributes={"realm": "OTHER"})).allowed)


class DescribeTests(SynchronousTestCase):
    def test_describe_uses_configuration_words(self) -> None:
        rules = rules_from_table(
            {
                "rule": [
                    {
                        "action": "deny",
                        "name": "x",
                        "from": ["10.0.0.0/8"],
                        "to": ["192.0.2.0/24", ".Example.com"],
                        "ports": [80, "8000-8100"],
                        "commands": ["udp", "connect"],
                        "users": ["@EXAMPLE.COM"],
                        "methods": ["gssapi"],
                        "versions": [5],
                        "min_grade": 1,
                    }
                ]
            }
        )
        self.assertEqual(
            describe(rules.rules[0]),
            "deny from 10.0.0.0/8 to 192.0.2.0/24,.example.com ports 80,8000-8100 "
            "commands connect,udp users @EXAMPLE.COM methods gssapi versions 5 min_grade 1",
        )
        self.assertEqual(str(rules.rules[0]), describe(rules.rules[0]))

    def test_describe_empty_rule(self) -> None:
        self.assertEqual(describe(Rule("allow")), "allow all")

    def test_rule_rejects_bad_action(self) -> None:
        self.assertRaises(ValueError, Rule, "permit")

    def test_port_range_rejects_backwards(self) -> None:
        self.assertRaises(ValueError, PortRange, 10, 9)


class InvalidConfigTests(SynchronousTestCase):
    def assertConfigError(self, table: dict[str, Any], *fragments: str) -> str:
        with self.assertRaises(ConfigError) as cm:
            rules_from_table(table)
        text = str(cm.exception)
        for fragment in fragments:
            self.assertIn(fragment, text)
        return text

    def rule(self, **keys: Any) -> dict[str, Any]:
        return {"rule": [{"action": "allow"}, {"action": "allow", "name": "second", **keys}]}

    def test_unknown_rule_key_suggests_the_right_one(self) -> None:
        self.assertConfigError(self.rule(port=[80]), "rule 2 (second)", "'port'", "did you mean 'ports'")

    def test_unknown_top_level_key(self) -> None:
        self.assertConfigError({"rules": []}, "'rules'", "did you mean 'rule'")

    def test_missing_action(self) -> None:
        self.assertConfigError({"rule": [{"name": "x"}]}, "rule 1 (x)", "missing key 'action'")

    def test_bad_action(self) -> None:
        self.assertConfigError({"rule": [{"action": "permit"}]}, "rule 1", "'action'", '"allow"')

    def test_bad_default(self) -> None:
        self.assertConfigError({"default": "maybe"}, "'default'", '"deny"')

    def test_rule_not_array(self) -> None:
        self.assertConfigError({"rule": {"action": "allow"}}, "[[rule]]")

    def test_bad_network(self) -> None:
        self.assertConfigError(self.rule(**{"from": ["10.0.0.300"]}), "rule 2 (second)", "'from'", "10.0.0.300")

    def test_network_with_host_bits_suggests_network(self) -> None:
        self.assertConfigError(self.rule(**{"from": ["10.0.0.1/8"]}), '"10.0.0.0/8"')

    def test_bad_ipv6_network(self) -> None:
        self.assertConfigError(self.rule(to=["2001:db8::/129"]), "'to'", "2001:db8::/129")

    def test_bad_destination_host(self) -> None:
        self.assertConfigError(self.rule(to=["exa mple.com"]), "'to'", "white space")
        self.assertConfigError(self.rule(to=["."]), "'to'")
        self.assertConfigError(self.rule(to=[""]), "'to'", "empty")

    def test_bad_port(self) -> None:
        self.assertConfigError(self.rule(ports=[70000]), "'ports'", "0..65535")
        self.assertConfigError(self.rule(ports=["http"]), "'ports'", "http")
        self.assertConfigError(self.rule(ports=[True]), "'ports'")
        self.assertConfigError(self.rule(ports=["-5"]), "'ports'")

    def test_backwards_port_range(self) -> None:
        self.assertConfigError(self.rule(ports=["8100-8000"]), "'ports'", '"8000-8100"')

    def test_unknown_command_suggests(self) -> None:
        self.assertConfigError(self.rule(commands=["connnect"]), "'commands'", "did you mean 'connect'")

    def test_unknown_method(self) -> None:
        self.assertConfigError(self.rule(methods=["kerberos"]), "'methods'", "gssapi")

    def test_bad_version(self) -> None:
        self.assertConfigError(self.rule(versions=[6]), "'versions'", "4 or 5")

    def test_bad_users(self) -> None:
        self.assertConfigError(self.rule(users=["@"]), "'users'", "@EXAMPLE.COM")
        self.assertConfigError(self.rule(users=[""]), "'users'")

    def test_bad_min_grade(self) -> None:
        self.assertConfigError(self.rule(min_grade=-1), "'min_grade'")
        self.assertConfigError(self.rule(min_grade="2"), "'min_grade'")

    def test_scalar_instead_of_list(self) -> None:
        self.assertConfigError(self.rule(**{"from": "10.0.0.0/8"}), "'from'", "must be a list")

    def test_empty_list(self) -> None:
        self.assertConfigError(self.rule(ports=[]), "'ports'", "remove the key")

    def test_bad_name(self) -> None:
        self.assertConfigError({"rule": [{"action": "allow", "name": 3}]}, "'name'")

    def test_rule_not_table(self) -> None:
        self.assertConfigError({"rule": ["allow"]}, "rule 1", "table")


class LoadRulesTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.unlink, path)
        return path

    def test_loads_toml_file(self) -> None:
        path = self.write(
            """
default = "deny"

[[rule]]
action = "deny"
name = "deny-intranet"
to = ["10.0.0.0/8", "fd00::/8"]

[[rule]]
action = "allow"
from = ["10.0.0.0/8"]
to = [".example.com"]
ports = [80, "443"]
users = ["@EXAMPLE.COM"]
"""
        )
        rules = load_rules(path)
        self.assertEqual(len(rules.rules), 2)
        self.assertEqual(rules.decide(REQUEST), Decision(True, "rule 2"))
        self.assertEqual(
            rules.decide(request(destination_address="10.0.0.1")),
            Decision(False, "rule 1 (deny-intranet)"),
        )
        self.assertEqual(rules.decide(request(destination_port=25)), Decision(False, "default deny"))

    def test_error_names_the_file(self) -> None:
        path = self.write('[[rule]]\naction = "allow"\nports = [99999]\n')
        with self.assertRaises(ConfigError) as cm:
            load_rules(path)
        self.assertIn(path, str(cm.exception))
        self.assertIn("rule 1", str(cm.exception))

    def test_invalid_toml(self) -> None:
        path = self.write("[[rule]\n")
        with self.assertRaises(ConfigError) as cm:
            load_rules(path)
        self.assertIn("not valid TOML", str(cm.exception))

    def test_missing_file(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_rules("/nonexistent/rules.toml")
        self.assertIn("cannot read", str(cm.exception))
