"""
The server's configuration: one immutable `Config`, built from command-line
options, a TOML file, or code, and validated once.  Its fields' defaults,
TOML keys, coercion and per-value checks come from the table of settings,
`txsocksgss.server.settings.SETTINGS`; the checks that need several
settings at once are here, in `Config.validate`.

Precedence: a value given on the command line beats the TOML file, which
beats the default.  Every error is a `txsocksgss.errors.ConfigError` whose
text names the setting and says how to fix it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from txsocksgss.auth.maf import parse_chain_spec
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.registry import SERVER_METHOD_NAMES
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IServerAuthenticatorFactory
from txsocksgss.server.rules import RuleSet, load_rules, rules_from_table
from txsocksgss.server.settings import DEFAULT_LISTEN, SETTINGS, default_of, setting_named
from txsocksgss.wire.socks5 import AuthMethod

__all__ = ["Config", "DEFAULT_LISTEN", "KNOWN_METHODS", "endpoint_is_loopback"]

#: The names ``methods`` accepts, from the registry of methods.
KNOWN_METHODS = SERVER_METHOD_NAMES

# TOML key -> Config field.  Rules live under `default` and `[[rule]]`.
_TOML_KEYS = {setting.toml_key: setting.name for setting in SETTINGS if setting.toml_key}
_RULE_KEYS = ("default", "rule")


@dataclass(frozen=True)
class Config:
    """
    Every setting of the server.  Each field has one row in
    `txsocksgss.server.settings.SETTINGS`, which gives its default, TOML
    key, option, coercion and checks.

    :ivar listen: Twisted server endpoint strings, one listener each.
    :ivar methods: authentication methods in order of preference
        (``none``, ``userpass``).  Empty means: ``userpass`` when
        ``passwd`` is set, else ``none``.
    :ivar passwd: the password file for ``userpass`` (see ``socksgss passwd``).
    :ivar rules: the access policy (first matching rule wins).
    :ivar rules_file: where ``rules`` came from, if a file.
    :ivar negotiation_timeout: seconds from accept to the (first) reply.
    :ivar idle_timeout: seconds without a byte either way before a tunnel is
        closed; ``None`` for never.
    :ivar shutdown_grace: seconds open tunnels may go on when the server
        stops (SIGTERM) before they are closed.
    :ivar metrics: a Twisted server endpoint string for the Prometheus
        metrics HTTP endpoint; ``None`` (the default) for none.
    :ivar allow_open: consent to an unauthenticated listener on a
        non-loopback address.
    :ivar external: the address BIND and UDP ASSOCIATE listen on; ``None``
        for the address the client reached the server on.
    :ivar gssapi_keytab: keytab of the GSS-API service principal (``None``:
        the library default, KRB5_KTNAME or /etc/krb5.keytab).
    :ivar gssapi_service: the service name clients target (``rcmd``).
    :ivar gssapi_mech: ``krb5``, ``spnego`` or ``any`` (both).
    :ivar gssapi_protection: levels agreed to, most preferred first, from
        ``confidentiality``, ``integrity``, ``clear``.
    :ivar gssapi_nec: accept the unwrapped protection-level octet of
        NEC-derived clients.
    :ivar gssapi_wrap: who computes the per-message tokens: ``auto``
        (OpenSSL for Kerberos AES-SHA1 keys) or ``library``.
    :ivar ident: SOCKS 4 ident (RFC 1413) checks: ``off``, ``log`` or ``require``.
    :ivar ident_port: the identd port on client hosts (113).
    :ivar ident_timeout: seconds an ident lookup may take.
    :ivar maf_chains: the MAF policy's alternatives, most preferred first,
        each ``SUBMETHOD+SUBMETHOD...=GRADE`` (sub-methods ``userpass``,
        ``gssapi``, ``test``), e.g. ``("gssapi=3", "userpass+test=1")``.
    :ivar maf_continue_on_failure: after a failed sub-method, try the next
        alternative instead of failing the whole MAF subnegotiation.
    :ivar splice: relay unprotected tunnels with os.splice (zero copy) where
        the platform allows; ``False`` forces the ordinary relay.
    :ivar workers: processes serving the listeners (SO_REUSEPORT); 1 is this
        process alone.
    :ivar max_sessions: client connections open at once (0: unlimited);
        more are refused at accept.  Limits are per worker process.
    :ivar max_sessions_per_client: client connections open at once from one
        IP address (0: unlimited).
    :ivar max_negotiating: client connections not yet past their first
        reply (0: unlimited).
    :ivar auth_fail_limit: authentication failures from one IP address
        within ``auth_fail_window`` seconds after which its connections are
        refused for ``auth_fail_window`` seconds (0: never).
    :ivar auth_fail_window: seconds; the failure window and the cool-down.
    :ivar destination_guard: ``on``, ``off`` or ``auto`` (on when any
        listener is not loopback): refuse loopback, link-local, cloud
        metadata, unspecified and the proxy's own addresses as destinations.
    """

    listen: tuple[str, ...] = default_of("listen")
    methods: tuple[str, ...] = default_of("methods")
    passwd: str | None = default_of("passwd")
    rules: RuleSet = default_of("rules")
    rules_file: str | None = default_of("rules_file")
    negotiation_timeout: float = default_of("negotiation_timeout")
    idle_timeout: float | None = default_of("idle_timeout")
    shutdown_grace: float = default_of("shutdown_grace")
    metrics: str | None = default_of("metrics")
    allow_open: bool = default_of("allow_open")
    external: str | None = default_of("external")
    gssapi_keytab: str | None = default_of("gssapi_keytab")
    gssapi_service: str = default_of("gssapi_service")
    gssapi_mech: str = default_of("gssapi_mech")
    gssapi_protection: tuple[str, ...] = default_of("gssapi_protection")
    gssapi_nec: bool = default_of("gssapi_nec")
    gssapi_wrap: str = default_of("gssapi_wrap")
    ident: str = default_of("ident")
    ident_port: int = default_of("ident_port")
    ident_timeout: float = default_of("ident_timeout")
    maf_chains: tuple[str, ...] = default_of("maf_chains")
    maf_continue_on_failure: bool = default_of("maf_continue_on_failure")
    splice: bool = default_of("splice")
    workers: int = default_of("workers")
    max_sessions: int = default_of("max_sessions")
    max_sessions_per_client: int = default_of("max_sessions_per_client")
    max_negotiating: int = default_of("max_negotiating")
    auth_fail_limit: int = default_of("auth_fail_limit")
    auth_fail_window: float = default_of("auth_fail_window")
    destination_guard: str = default_of("destination_guard")

    @property
    def effective_methods(self) -> tuple[str, ...]:
        """`methods`, or the default it stands for when empty."""
        if self.methods:
            return self.methods
        return ("userpass",) if self.passwd else ("none",)

    @classmethod
    def from_toml(cls, path: str) -> "Config":
        """Read a TOML configuration file; relative paths in it are relative to the file."""
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except OSError as error:
            raise ConfigError(f"cannot read the configuration file {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        return cls.from_table(table, base=os.path.dirname(os.path.abspath(path)), source=path)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], base: str = ".", source: str = "configuration") -> "Config":
        """Build a Config from a parsed TOML table (see `from_toml`)."""
        unknown = sorted(set(table) - set(_TOML_KEYS) - set(_RULE_KEYS))
        if unknown:
            raise ConfigError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted([*_TOML_KEYS, *_RULE_KEYS]))}"
            )
        values: dict[str, Any] = {}
        for key, attribute in _TOML_KEYS.items():
            if key in table:
                values[attribute] = table[key]
        for setting in SETTINGS:
            if setting.relative_path and isinstance(values.get(setting.name), str):
                values[setting.name] = os.path.join(base, values[setting.name])
        if "rule" in table or "default" in table:
            if "rules_file" in values:
                raise ConfigError(f"{source}: give either `rules = FILE` or inline [[rule]] tables, not both")
            values["rules"] = rules_from_table({k: table[k] for k in _RULE_KEYS if k in table})
        return cls.build(**values)

    @classmethod
    def build(cls, **values: Any) -> "Config":
        """
        Build and validate a Config from keyword values (loose types
        accepted: lists for tuples, numbers for floats); loads ``rules_file``.
        """
        config = replace(cls(), **_coerce(values))
        if config.rules_file and "rules" not in values:
            config = replace(config, rules=load_rules(config.rules_file))
        config.validate()
        return config

    def merged(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` (``None`` values are ignored), validated."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if "rules_file" in values and "rules" not in values:
            values["rules"] = load_rules(values["rules_file"])
        config = replace(self, **_coerce(values))
        config.validate()
        return config

    def validate(self) -> None:
        """
        Raise `ConfigError` for any invalid or unsafe combination: each
        value by its setting's check, and the checks of several settings.
        """
        # The method names first, as the command line has always refused a bad --method first.
        for method in self.effective_methods:
            if method not in KNOWN_METHODS:
                raise ConfigError(f"unknown method {method!r}; known: {', '.join(KNOWN_METHODS)}")
        if len(set(self.effective_methods)) != len(self.effective_methods):
            raise ConfigError(f"a method is listed twice: {', '.join(self.effective_methods)}")
        if self.metrics is not None and self.workers > 1:
            raise ConfigError("--metrics cannot be used with --workers yet: each process would count "
                              "only the connections it serves")
        for setting in SETTINGS:
            setting.check(getattr(self, setting.name))
        if "maf" in self.effective_methods and not self.maf_chains:
            raise ConfigError("method maf needs at least one --maf-chain, e.g. --maf-chain userpass+gssapi=2")
        for spec in self.maf_chains:
            parse_maf_chain(spec)
        if self.workers > 1:
            for description in self.listen:
                reuse_port_listener(description)  # raises ConfigError for unsuitable listeners
        if {"none", "socks4", "maf"} & set(self.effective_methods) and not self.allow_open:
            # Checked again on the methods actually served (by makeServerFactory);
            # here so that a bad configuration fails before anything is built.
            check_open_proxy(self, [NoAuthServerFactory()] if "none" in self.effective_methods else [])


#: ``"userpass+gssapi=2"`` -> (("userpass", "gssapi"), 2): MAF's own parser of a chain.
parse_maf_chain = parse_chain_spec


def _coerce(values: Mapping[str, Any]) -> dict[str, Any]:
    """Each of ``values`` (Config field -> loose value) coerced by its setting."""
    return {name: setting_named(name).coerce(value) for name, value in values.items()}


def split_endpoint_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split a Twisted endpoint string into type, positional and keyword arguments."""
    parts: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    kind, args = parts[0].lower(), parts[1:]
    positional = [a for a in args if "=" not in a]
    keywords = dict(a.split("=", 1) for a in args if "=" in a)
    return kind, positional, keywords


def endpoint_is_loopback(description: str) -> bool:
    """
    True if a server endpoint string only accepts connections from this host
    (a loopback interface, or a UNIX socket).  Unknown endpoint types count as
    public, so the open-proxy check errs on the safe side.
    """
    if description.lower().startswith("haproxy:"):
        return False  # clients arrive through a load balancer, from anywhere
    kind, _positional, keywords = split_endpoint_description(description)
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = keywords.get("interface", "::" if kind == "tcp6" else "")
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def reuse_port_listener(description: str) -> tuple[str, int, str, int]:
    """
    ``(kind, port, interface, backlog)`` of a ``tcp:PORT:interface=...`` or
    ``tcp6:`` listener description for ``--workers`` (every process listens
    on the one port, with SO_REUSEPORT); ConfigError for any other.
    """
    kind, positional, keywords = split_endpoint_description(description)
    if kind not in ("tcp", "tcp6"):
        raise ConfigError(f"--workers needs tcp: or tcp6: listeners, not {description!r}")
    port_text = keywords.get("port", positional[0] if positional else "")
    if not port_text.isdigit() or int(port_text) == 0:
        raise ConfigError(f"--workers needs a fixed port in {description!r} (the processes share it)")
    interface = keywords.get("interface", "::" if kind == "tcp6" else "0.0.0.0")
    backlog = int(keywords.get("backlog", "1024"))
    return kind, int(port_text), interface.strip("[]"), backlog


def check_open_proxy(config: Config, methods: "Iterable[IServerAuthenticatorFactory]") -> None:
    """
    Refuse an unauthenticated method on a listener other clients can reach,
    unless ``config.allow_open``: the open-proxy check, on the methods
    actually served (a program's own authenticators included).
    """
    socks4_open = "socks4" in config.effective_methods and config.ident != "require"
    # A MAF chain of nothing but the internal test method authenticates nobody.
    maf_open = "maf" in config.effective_methods and any(
        set(parse_maf_chain(spec)[0]) <= {"test"} for spec in config.maf_chains)
    unauthenticated = socks4_open or maf_open or any(m.method == AuthMethod.NONE for m in methods)
    if config.allow_open or not unauthenticated:
        return
    public = [desc for desc in config.listen if not endpoint_is_loopback(desc)]
    if public:
        raise ConfigError(
            f"refusing to start an unauthenticated proxy on {public[0]}: anyone who can "
            "reach that address could use it.  Listen on 127.0.0.1 "
            "(--listen tcp:1080:interface=127.0.0.1), require a password "
            "(--method userpass --passwd FILE), or pass --allow-open if the "
            "network or the rules already restrict who can connect"
        )
