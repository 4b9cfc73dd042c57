"""
The access policy: first matching rule wins.

Theory of operation.  After a client has authenticated and sent its request,
the server describes the request as an `AccessRequest` (who the client is,
how it proved it, what it wants to reach) and asks an
`txsocksgss.interfaces.IAccessPolicy` for a `Decision`.  A `RuleSet` is an
ordered list of `Rule` objects, in the spirit of Dante's ``client`` and
``socks`` rules: the first rule whose every given field matches decides,
and when none matches the set's default does.  Everything is pure: the
server resolves domain names *before* asking, and passes the resolved
address in `AccessRequest.destination_address`, so a rule written for a
network also catches a name that resolves into it.

Rules usually come from a TOML file (see `rules_from_table` for the format).
The file is validated completely once, at load; a mistake is a
`txsocksgss.errors.ConfigError` naming the rule and the key, never a
surprise at request time.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar, Union

from zope.interface import implementer

from txsocksgss.auth.registry import SERVER_METHOD_NAMES
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IAccessPolicy

__all__ = [
    "COMMANDS",
    "METHODS",
    "VERSIONS",
    "IPNetwork",
    "AccessRequest",
    "Decision",
    "HostPatternKind",
    "HostPattern",
    "PortRange",
    "Rule",
    "RuleSet",
    "ALLOW_ALL",
    "describe",
    "rules_from_table",
    "load_rules",
]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_T = TypeVar("_T")

#: The request commands a rule may name (SOCKS 5 CONNECT, BIND, UDP ASSOCIATE).
COMMANDS: frozenset[str] = frozenset({"connect", "bind", "udp"})
#: The authentication methods a rule may name, as the server reports them
#: (the server's method names of the registry).
METHODS: frozenset[str] = frozenset(SERVER_METHOD_NAMES)
#: The SOCKS versions a rule may name.
VERSIONS: frozenset[int] = frozenset({4, 5})

_ACTIONS = ("allow", "deny")
_RULE_KEYS = (
    "action",
    "name",
    "from",
    "to",
    "ports",
    "commands",
    "users",
    "methods",
    "versions",
    "min_grade",
)
_TOP_KEYS = ("default", "rule")
_ANY_USER = "*"


@dataclass(frozen=True)
class AccessRequest:
    """
    One request to judge, as the server saw it.

    ``client`` is the client's IP address as text.  ``command`` is one of
    `COMMANDS`.  ``destination_host`` is the destination as requested (an IP
    literal or a domain name); ``destination_address`` is the address it
    resolved to, or ``None`` when it was not resolved (or is not
    applicable).  ``user`` is the authenticated user (a Kerberos principal
    such as ``alice@EXAMPLE.COM`` for GSS-API), ``None`` for anonymous;
    ``method`` is one of `METHODS`; ``version`` is 4 or 5.  ``attributes``
    holds further identity facts: ``grade`` (an int, from MAF) and
    ``realm`` (the Kerberos realm, when the authenticator established one)
    are the ones rules look at.
    """

    client: str
    command: str
    destination_host: str
    destination_port: int
    destination_address: str | None
    user: str | None
    method: str
    version: int = 5
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """
    The outcome of `RuleSet.decide`: whether the request may proceed, and
    which rule decided, for the log (``"rule 3 (deny-intranet)"``,
    ``"default deny"``).
    """

    allowed: bool
    rule: str


class HostPatternKind(Enum):
    """How a `HostPattern` compares with a destination host name."""

    #: the name itself: ``example.com``
    EXACT = "exact"
    #: the domain and every name under it (Dante style): ``.example.com``
    DOMAIN = "domain"
    #: an `fnmatch` glob, where ``*`` also spans dots: ``*.example.com``
    GLOB = "glob"


_GLOB_CHARACTERS = frozenset("*?[")


def _normalize_host(host: str) -> str:
    """Lower-case a host name and drop one trailing dot (``example.com.`` is ``example.com``)."""
    host = host.lower()
    if host.endswith(".") and host != ".":
        host = host[:-1]
    return host


@dataclass(frozen=True)
class HostPattern:
    """
    A destination host pattern, compared case-insensitively with
    `AccessRequest.destination_host`.

    ``text`` is the pattern, lower-cased, without a trailing dot; for
    `HostPatternKind.DOMAIN` it keeps its leading dot.
    """

    text: str
    kind: HostPatternKind

    @classmethod
    def parse(cls, text: str) -> "HostPattern":
        """
        Build a pattern from its configuration form: ``example.com`` (exact),
        ``.example.com`` (the domain and its subdomains), or a glob
        containing ``*``, ``?`` or ``[`` (``*.example.com``).

        :raise ValueError: for an empty pattern, a pattern with white space,
            ``/`` or ``:``, or a lone dot; the text says what is wrong.
        """
        if not text or not text.strip():
            raise ValueError("a host pattern is empty")
        if any(c.isspace() for c in text):
            raise ValueError(f"host pattern {text!r} contains white space")
        if "/" in text or ":" in text:
            raise ValueError(f"host pattern {text!r} contains '/' or ':'")
        normalized = _normalize_host(text)
        if _GLOB_CHARACTERS.intersection(normalized):
            return cls(normalized, HostPatternKind.GLOB)
        if normalized.startswith("."):
            if len(normalized) == 1 or normalized.startswith(".."):
                raise ValueError(
                    f"host pattern {text!r} names no domain; write e.g. '.example.com'"
                )
            return cls(normalized, HostPatternKind.DOMAIN)
        if ".." in normalized:
            raise ValueError(f"host pattern {text!r} has an empty label ('..')")
        return cls(normalized, HostPatternKind.EXACT)

    def matches(self, host: str) -> bool:
        """Whether ``host`` (a name or IP literal, any case) matches this pattern."""
        host = _normalize_host(host)
        if self.kind is HostPatternKind.EXACT:
            return host == self.text
        if self.kind is HostPatternKind.DOMAIN:
            return host == self.text[1:] or host.endswith(self.text)
        return fnmatch.fnmatchcase(host, self.text)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class PortRange:
    """An inclusive range of ports, ``low`` to ``high``, both in 0..65535."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not (0 <= self.low <= self.high <= 65535):
            raise ValueError(f"invalid port range {self.low}-{self.high}")

    def matches(self, port: int) -> bool:
        """Whether ``port`` lies in this range."""
        return self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def _as_address(text: str | None) -> _IPAddress | None:
    """
    Parse an IP address, or return ``None`` when ``text`` is not one (a
    domain name).  An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, what a
    dual-stack listener reports for IPv4 clients) is returned as the IPv4
    address, so that IPv4 networks in the rules apply to it.
    """
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in_any(address: _IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


def _realm_of(request: AccessRequest) -> str | None:
    """
    The Kerberos realm the client proved, or ``None``.

    Only a realm an authenticator vouched for counts: the ``realm``
    attribute, or the realm part of a GSS-API principal.  A user name that
    merely contains ``@`` (a password-file user ``mallory@EXAMPLE.COM``)
    proves no realm.
    """
    realm = request.attributes.get("realm")
    if isinstance(realm, str):
        return realm
    if request.method == "gssapi" and request.user is not None and "@" in request.user:
        return request.user.rpartition("@")[2]
    return None


@dataclass(frozen=True)
class Rule:
    """
    One access rule.  Every field other than ``action`` and ``name`` is a
    condition; ``None`` means "any", and a rule matches a request when every
    given condition does (AND), a condition matching when any of its
    entries does (OR).

    - ``clients``: networks containing `AccessRequest.client`.
    - ``destinations``: networks, which match the resolved
      ``destination_address`` or a literal ``destination_host``; and
      `HostPattern` objects, which match ``destination_host``.  A network
      never matches a name that was not resolved.
    - ``ports``: `PortRange` objects containing ``destination_port``.
    - ``commands``, ``methods``, ``versions``: sets of allowed values.
    - ``users``: ``"*"`` any authenticated user; ``"@REALM"`` any user whose
      proven Kerberos realm is exactly REALM (see `AccessRequest`: the
      ``realm`` attribute, or the realm of a GSS-API principal); any other
      entry is compared exactly (case-sensitively) with the user name.  An
      anonymous request never matches a ``users`` condition.
    - ``min_grade``: ``attributes["grade"]`` (0 when absent) must be at
      least this.

    :raise ValueError: at construction, for an action other than
        ``"allow"`` or ``"deny"``.
    """

    action: str
    name: str | None = None
    clients: tuple[IPNetwork, ...] | None = None
    destinations: tuple[IPNetwork | HostPattern, ...] | None = None
    ports: tuple[PortRange, ...] | None = None
    commands: frozenset[str] | None = None
    users: tuple[str, ...] | None = None
    methods: frozenset[str] | None = None
    versions: frozenset[int] | None = None
    min_grade: int | None = None

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"rule action must be 'allow' or 'deny', not {self.action!r}")

    @property
    def allows(self) -> bool:
        """Whether a request this rule matches is allowed."""
        return self.action == "allow"

    def matches(self, request: AccessRequest) -> bool:
        """Whether every condition of this rule holds for ``request``."""
        if self.clients is not None and not _in_any(_as_address(request.client), self.clients):
            return False
        if self.destinations is not None and not self._matches_destination(request):
            return False
        if self.ports is not None and not any(
            r.matches(request.destination_port) for r in self.ports
        ):
            return False
        if self.commands is not None and request.command not in self.commands:
            return False
        if self.methods is not None and request.method not in self.methods:
            return False
        if self.versions is not None and request.version not in self.versions:
            return False
        if self.users is not None and not self._matches_user(request):
            return False
        if self.min_grade is not None:
            grade = request.attributes.get("grade", 0)
            if not isinstance(grade, int) or isinstance(grade, bool):
                grade = 0
            if grade < self.min_grade:
                return False
        return True

    def _matches_destination(self, request: AccessRequest) -> bool:
        assert self.destinations is not None
        resolved = _as_address(request.destination_address)
        literal = _as_address(request.destination_host)
        for entry in self.destinations:
            if isinstance(entry, HostPattern):
                if entry.matches(request.destination_host):
                    return True
            elif _in_any(resolved, (entry,)) or _in_any(literal, (entry,)):
                return True
        return False

    def _matches_user(self, request: AccessRequest) -> bool:
        assert self.users is not None
        user = request.user
        if user is None:
            return False
        realm: str | None = None
        for entry in self.users:
            if entry == _ANY_USER:
                return True
            if entry.startswith("@"):
                if realm is None:
                    realm = _realm_of(request)
                if realm is not None and realm == entry[1:]:
                    return True
            elif entry == user:
                return True
        return False

    def __str__(self) -> str:
        return describe(self)


def describe(rule: Rule) -> str:
    """
    A one-line description of ``rule`` for the log, in the configuration's
    own words: ``deny from 10.0.0.0/8 to .example.com ports 80,8000-8100``.
    A rule with no conditions reads ``allow all``.
    """
    parts = [rule.action]

    def add(key: str, values: Iterable[object] | None) -> None:
        if values is not None:
            parts.append(f"{key} {','.join(str(v) for v in values)}")

    add("from", rule.clients)
    add("to", rule.destinations)
    add("ports", rule.ports)
    add("commands", None if rule.commands is None else sorted(rule.commands))
    add("users", rule.users)
    add("methods", None if rule.methods is None else sorted(rule.methods))
    add("versions", None if rule.versions is None else sorted(rule.versions))
    if rule.min_grade is not None:
        parts.append(f"min_grade {rule.min_grade}")
    if len(parts) == 1:
        parts.append("all")
    return " ".join(parts)


def _label(index: int, rule: Rule) -> str:
    """``rule 3 (name)``, or ``rule 3`` for an unnamed rule; ``index`` counts from 1."""
    return f"rule {index} ({rule.name})" if rule.name else f"rule {index}"


@implementer(IAccessPolicy)
@dataclass(frozen=True)
class RuleSet:
    """
    An ordered list of rules and a default: the first rule that matches a
    request decides; when none does, ``default_allow`` does.  Immutable and
    pure, so one instance serves every connection.
    """

    rules: tuple[Rule, ...] = ()
    default_allow: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))

    def decide(self, request: AccessRequest) -> Decision:
        """
        Judge ``request``.

        :return: a `Decision`; its ``rule`` is ``"rule N (name)"`` (N counts
            from 1, in file order) or ``"default allow"`` / ``"default deny"``.
        """
        for index, rule in enumerate(self.rules, start=1):
            if rule.matches(request):
                return Decision(rule.allows, _label(index, rule))
        default = "default allow" if self.default_allow else "default deny"
        return Decision(self.default_allow, default)


#: The policy when no rules are configured: everything is allowed.
ALLOW_ALL = RuleSet((), default_allow=True)


# --- loading ----------------------------------------------------------------


class _RuleContext:
    """Builds error messages that name where in the configuration a value sits."""

    def __init__(self, source: str, index: int, name: str | None) -> None:
        self.source = source
        self.where = f"rule {index}" + (f" ({name})" if name else "")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}: key {key!r}: {message}")


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _entries(
    ctx: _RuleContext, rule: Mapping[str, Any], key: str, example: str
) -> Sequence[Any] | None:
    """The list under ``key``, ``None`` when absent; an empty list or a non-list is an error."""
    if key not in rule:
        return None
    value = rule[key]
    if not isinstance(value, list):
        raise ctx.error(key, f"must be a list, e.g. {key} = {example}")
    if not value:
        raise ctx.error(
            key, "is an empty list, which would match nothing; remove the key to match anything"
        )
    return value


def _each(
    ctx: _RuleContext,
    key: str,
    values: Sequence[Any] | None,
    convert: Callable[[Any], _T],
) -> tuple[_T, ...] | None:
    """Convert every entry; a ValueError from ``convert`` becomes a ConfigError naming the entry."""
    if values is None:
        return None
    result = []
    for value in values:
        try:
            result.append(convert(value))
        except ValueError as e:
            raise ctx.error(key, f"entry {value!r}: {e}") from None
    return tuple(result)


def _parse_network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError('must be a string such as "10.0.0.0/8" or "::1"')
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(
                f'is not an IP address or network ({e}); write e.g. "10.0.0.0/8", '
                '"192.0.2.1" or "2001:db8::/32"'
            ) from None
        raise ValueError(f'has host bits set; write the network as "{loose}"') from None


def _looks_like_address(text: str) -> bool:
    """Whether a ``to`` entry is meant as an address or network, not a host name."""
    stripped = text.strip()
    return "/" in stripped or ":" in stripped or all(c.isdigit() or c == "." for c in stripped)


def _parse_destination(value: Any) -> IPNetwork | HostPattern:
    if not isinstance(value, str):
        raise ValueError('must be a string: a network ("192.0.2.0/24") or a host ("example.com")')
    if not value.strip():
        raise ValueError('is empty; write a network ("192.0.2.0/24") or a host ("example.com")')
    if _looks_like_address(value):
        return _parse_network(value)
    return HostPattern.parse(value)


def _parse_port_number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f'{text!r} is not a port number; write e.g. 80 or "8000-8100"')
    number = int(text)
    if number > 65535:
        raise ValueError(f"port {number} is out of range; ports are 0..65535")
    return number


def _parse_ports(value: Any) -> PortRange:
    if isinstance(value, bool):
        raise ValueError('must be a port number or a range such as "8000-8100"')
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise ValueError(f"port {value} is out of range; ports are 0..65535")
        return PortRange(value, value)
    if not isinstance(value, str):
        raise ValueError('must be a port number or a range such as "8000-8100"')
    low_text, dash, high_text = value.strip().partition("-")
    low = _parse_port_number(low_text.strip())
    high = _parse_port_number(high_text.strip()) if dash else low
    if low > high:
        raise ValueError(f'the range is backwards; write "{high}-{low}"')
    return PortRange(low, high)


def _parse_choice(choices: frozenset[str], what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            raise ValueError(f"is not a {what}{hint}; use one of {', '.join(sorted(choices))}")
        return value

    return parse


def _parse_version(value: Any) -> int:
    if isinstance(value, bool) or value not in VERSIONS:
        raise ValueError("is not a SOCKS version; use 4 or 5")
    return int(value)


def _parse_user(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be a user name, "@REALM" or "*"')
    if value == "@":
        raise ValueError('names no realm; write e.g. "@EXAMPLE.COM"')
    return value


def _parse_rule(index: int, table: Any, source: str) -> Rule:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: rule {index}: must be a table; write each rule as [[rule]]")
    name = table.get("name")
    ctx = _RuleContext(source, index, name if isinstance(name, str) else None)
    for key in table:
        if key not in _RULE_KEYS:
            raise ctx.error(
                key,
                f"unknown key{_suggest(key, _RULE_KEYS)}; known keys: {', '.join(_RULE_KEYS)}",
            )
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ctx.error("name", 'must be a non-empty string, e.g. name = "deny-intranet"')
    if "action" not in table:
        raise ConfigError(
            f"{source}: {ctx.where}: missing key 'action'; "
            'add action = "allow" or action = "deny"'
        )
    action = table["action"]
    if action not in _ACTIONS:
        raise ctx.error("action", f'is {action!r}; use "allow" or "deny"')

    min_grade = table.get("min_grade")
    if min_grade is not None and (
        isinstance(min_grade, bool) or not isinstance(min_grade, int) or min_grade < 0
    ):
        raise ctx.error(
            "min_grade", f"is {min_grade!r}; use a whole number >= 0, e.g. min_grade = 2"
        )

    commands = _each(
        ctx, "commands", _entries(ctx, table, "commands", '["connect"]'),
        _parse_choice(COMMANDS, "command"),
    )
    methods = _each(
        ctx, "methods", _entries(ctx, table, "methods", '["gssapi"]'),
        _parse_choice(METHODS, "method"),
    )
    versions = _each(ctx, "versions", _entries(ctx, table, "versions", "[5]"), _parse_version)
    return Rule(
        action=action,
        name=name,
        clients=_each(ctx, "from", _entries(ctx, table, "from", '["10.0.0.0/8"]'), _parse_network),
        destinations=_each(
            ctx, "to", _entries(ctx, table, "to", '["192.0.2.0/24", ".example.com"]'),
            _parse_destination,
        ),
        ports=_each(ctx, "ports", _entries(ctx, table, "ports", '[80, "8000-8100"]'), _parse_ports),
        commands=None if commands is None else frozenset(commands),
        users=_each(
            ctx, "users", _entries(ctx, table, "users", '["alice", "@EXAMPLE.COM"]'), _parse_user
        ),
        methods=None if methods is None else frozenset(methods),
        versions=None if versions is None else frozenset(versions),
        min_grade=min_grade,
    )


def rules_from_table(table: Mapping[str, Any], *, source: str = "access rules") -> RuleSet:
    """
    Build a `RuleSet` from a parsed TOML table.

    The table holds ``default = "allow" | "deny"`` and a ``[[rule]]`` array of
    tables with the keys ``action`` (required: ``"allow"`` or ``"deny"``),
    ``name``, ``from`` (client networks), ``to`` (destination networks and
    host patterns), ``ports`` (numbers and ``"low-high"`` ranges),
    ``commands``, ``users``, ``methods``, ``versions`` (lists; see `Rule`)
    and ``min_grade`` (an int).  With rules and no ``default`` the default is
    deny; with no rules and no ``default`` the result is `ALLOW_ALL`.

    :param source: where the table came from (a file name), for messages.
    :raise ConfigError: for any unknown key, wrong type, bad network, port
        range, command, method, version or user entry; the message names
        the rule (number from 1, and name) and the key, and how to fix it.
    """
    for key in table:
        if key not in _TOP_KEYS:
            raise ConfigError(
                f"{source}: unknown key {key!r}{_suggest(key, _TOP_KEYS)}; "
                'the access rules take only default = "allow"|"deny" and [[rule]] tables'
            )
    raw_rules = table.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(
            f"{source}: 'rule' must be an array of tables; write each rule as [[rule]]"
        )
    rules = tuple(_parse_rule(i, raw, source) for i, raw in enumerate(raw_rules, start=1))
    if "default" not in table:
        return ALLOW_ALL if not rules else RuleSet(rules, default_allow=False)
    default = table["default"]
    if default not in _ACTIONS:
        raise ConfigError(f'{source}: key \'default\' is {default!r}; use "allow" or "deny"')
    return RuleSet(rules, default_allow=default == "allow")


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """
    Read a TOML rules file (see `rules_from_table`).

    :raise ConfigError: when the file cannot be read, is not valid TOML, or
        holds an invalid rule; the message starts with the path.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise ConfigError(
            f"{source}: cannot read the rules file ({e.strerror}); check the path"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return rules_from_table(table, source=source)
