"""
The server's configuration: one immutable `Config`, built from command-line
options, a TOML file, or code, and validated once.

Precedence: a value given on the command line beats the TOML file, which
beats the default.  Every error is a `txsocksgss.errors.ConfigError` whose
text names the setting and says how to fix it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from twisted.internet.endpoints import serverFromString

from txsocksgss.auth.maf import parse_chain_spec
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.registry import SERVER_METHOD_NAMES
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IServerAuthenticatorFactory
from txsocksgss.server.rules import ALLOW_ALL, RuleSet, load_rules, rules_from_table
from txsocksgss.wire.socks5 import AuthMethod

__all__ = ["Config", "DEFAULT_LISTEN", "KNOWN_METHODS", "endpoint_is_loopback"]

DEFAULT_LISTEN = "tcp:1080:interface=127.0.0.1"
#: The names ``methods`` accepts, from the registry of methods.
KNOWN_METHODS = SERVER_METHOD_NAMES
GSSAPI_MECH_CHOICES = ("krb5", "spnego", "any")
GSSAPI_WRAP_CHOICES = ("auto", "library")
GSSAPI_LEVEL_NAMES = ("confidentiality", "integrity", "clear")

# TOML key -> Config field.  Rules live under `default` and `[[rule]]`.
_TOML_KEYS = {
    "listen": "listen",
    "methods": "methods",
    "passwd": "passwd",
    "rules": "rules_file",
    "negotiation_timeout": "negotiation_timeout",
    "idle_timeout": "idle_timeout",
    "shutdown_grace": "shutdown_grace",
    "metrics": "metrics",
    "allow_open": "allow_open",
    "external": "external",
    "gssapi_keytab": "gssapi_keytab",
    "gssapi_service": "gssapi_service",
    "gssapi_mech": "gssapi_mech",
    "gssapi_protection": "gssapi_protection",
    "gssapi_nec": "gssapi_nec",
    "gssapi_wrap": "gssapi_wrap",
    "ident": "ident",
    "ident_port": "ident_port",
    "ident_timeout": "ident_timeout",
    "maf_chains": "maf_chains",
    "maf_continue_on_failure": "maf_continue_on_failure",
    "splice": "splice",
    "workers": "workers",
    "max_sessions": "max_sessions",
    "max_sessions_per_client": "max_sessions_per_client",
    "max_negotiating": "max_negotiating",
    "auth_fail_limit": "auth_fail_limit",
    "auth_fail_window": "auth_fail_window",
    "destination_guard": "destination_guard",
}
_RULE_KEYS = ("default", "rule")


@dataclass(frozen=True)
class Config:
    """
    Every setting of the server.

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

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    methods: tuple[str, ...] = ()
    passwd: str | None = None
    rules: RuleSet = field(default=ALLOW_ALL)
    rules_file: str | None = None
    negotiation_timeout: float = 30.0
    idle_timeout: float | None = 3600.0
    shutdown_grace: float = 10.0
    metrics: str | None = None
    allow_open: bool = False
    external: str | None = None
    gssapi_keytab: str | None = None
    gssapi_service: str = "rcmd"
    gssapi_mech: str = "any"
    gssapi_protection: tuple[str, ...] = ("confidentiality", "integrity")
    gssapi_nec: bool = False
    gssapi_wrap: str = "auto"
    ident: str = "off"
    ident_port: int = 113
    ident_timeout: float = 10.0
    maf_chains: tuple[str, ...] = ()
    maf_continue_on_failure: bool = False
    splice: bool = True
    workers: int = 1
    max_sessions: int = 10000
    max_sessions_per_client: int = 256
    max_negotiating: int = 1000
    auth_fail_limit: int = 5
    auth_fail_window: float = 60.0
    destination_guard: str = "auto"

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
        for key in ("passwd", "rules_file", "gssapi_keytab"):
            if isinstance(values.get(key), str):
                values[key] = os.path.join(base, values[key])
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
        """Raise `ConfigError` for any invalid or unsafe combination."""
        if not self.listen:
            raise ConfigError("no listening address: give at least one --listen ENDPOINT")
        for method in self.effective_methods:
            if method not in KNOWN_METHODS:
                raise ConfigError(f"unknown method {method!r}; known: {', '.join(KNOWN_METHODS)}")
        if len(set(self.effective_methods)) != len(self.effective_methods):
            raise ConfigError(f"a method is listed twice: {', '.join(self.effective_methods)}")
        if self.negotiation_timeout <= 0:
            raise ConfigError("negotiation timeout must be a positive number of seconds")
        if self.idle_timeout is not None and self.idle_timeout < 0:
            raise ConfigError("idle timeout must be 0 (never) or a positive number of seconds")
        if self.shutdown_grace < 0:
            raise ConfigError("shutdown grace must be 0 (close at once) or a positive number of seconds")
        if self.metrics is not None:
            _check_metrics_endpoint(self.metrics, self.workers)
        if self.gssapi_wrap not in GSSAPI_WRAP_CHOICES:
            raise ConfigError(f"--gssapi-wrap must be one of {', '.join(GSSAPI_WRAP_CHOICES)}, not {self.gssapi_wrap!r}")
        if self.gssapi_mech not in GSSAPI_MECH_CHOICES:
            raise ConfigError(f"--gssapi-mech must be one of {', '.join(GSSAPI_MECH_CHOICES)}, not {self.gssapi_mech!r}")
        if not self.gssapi_protection or any(p not in GSSAPI_LEVEL_NAMES for p in self.gssapi_protection):
            raise ConfigError(
                f"--gssapi-protection takes a comma-separated list of {', '.join(GSSAPI_LEVEL_NAMES)}, "
                f"not {','.join(self.gssapi_protection)!r}"
            )
        if len(set(self.gssapi_protection)) != len(self.gssapi_protection):
            raise ConfigError("--gssapi-protection lists a level twice")
        if not self.gssapi_service or "/" in self.gssapi_service or "@" in self.gssapi_service:
            raise ConfigError(f"--gssapi-service must be a bare service name such as rcmd, not {self.gssapi_service!r}")
        if "maf" in self.effective_methods and not self.maf_chains:
            raise ConfigError("method maf needs at least one --maf-chain, e.g. --maf-chain userpass+gssapi=2")
        for spec in self.maf_chains:
            parse_maf_chain(spec)
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"workers must be 1 to 256, not {self.workers}")
        if self.workers > 1:
            for description in self.listen:
                reuse_port_listener(description)  # raises ConfigError for unsuitable listeners
        if self.ident not in ("off", "log", "require"):
            raise ConfigError(f"ident must be off, log or require, not {self.ident!r}")
        if not 1 <= self.ident_port <= 65535:
            raise ConfigError(f"ident port {self.ident_port} is not a port number")
        if self.ident_timeout <= 0:
            raise ConfigError("ident timeout must be a positive number of seconds")
        for name in ("max_sessions", "max_sessions_per_client", "max_negotiating", "auth_fail_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 (unlimited) or a positive number")
        if self.auth_fail_window <= 0:
            raise ConfigError("--auth-fail-window must be a positive number of seconds")
        if self.destination_guard not in ("on", "off", "auto"):
            raise ConfigError(f"--destination-guard must be on, off or auto, not {self.destination_guard!r}")
        if self.external is not None:
            try:
                ipaddress.ip_address(self.external)
            except ValueError:
                raise ConfigError(f"--external must be an IP address, not {self.external!r}") from None
        if {"none", "socks4", "maf"} & set(self.effective_methods) and not self.allow_open:
            # Checked again on the methods actually served (by makeServerFactory);
            # here so that a bad configuration fails before anything is built.
            check_open_proxy(self, [NoAuthServerFactory()] if "none" in self.effective_methods else [])


def _check_metrics_endpoint(description: str, workers: int) -> None:
    """Refuse a metrics endpoint string Twisted cannot parse, and metrics with several workers."""
    if workers > 1:
        raise ConfigError("--metrics cannot be used with --workers yet: each process would count "
                          "only the connections it serves")
    try:
        serverFromString(None, description)  # parses only; nothing listens
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise ConfigError(f"--metrics {description!r} is not a server endpoint string such as "
                          f"tcp:9180:interface=127.0.0.1 ({error})") from None


#: ``"userpass+gssapi=2"`` -> (("userpass", "gssapi"), 2): MAF's own parser of a chain.
parse_maf_chain = parse_chain_spec


def _coerce(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("listen", "methods", "gssapi_protection", "maf_chains"):
            if key == "gssapi_protection" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")]
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key} must be a list of strings")
            out[key] = tuple(value)
        elif key in ("ident_port", "workers"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key} must be a whole number, not {value!r}")
            out[key] = value
        elif key in ("negotiation_timeout", "idle_timeout", "ident_timeout"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key.replace('_', ' ')} must be a number of seconds, not {value!r}")
            out[key] = None if key == "idle_timeout" and value == 0 else float(value)
        elif key in ("allow_open", "gssapi_nec", "maf_continue_on_failure", "splice"):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false")
            out[key] = value
        elif key == "shutdown_grace":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"shutdown grace must be a number of seconds, not {value!r}")
            out[key] = float(value)
        elif key == "metrics":
            if value is not None and not isinstance(value, str):
                raise ConfigError("metrics must be a server endpoint string such as tcp:9180:interface=127.0.0.1")
            out[key] = value or None
        elif key in ("passwd", "rules_file", "external", "gssapi_keytab", "gssapi_service", "gssapi_mech", "gssapi_wrap",
                     "ident"):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key} must be a string")
            out[key] = value
        elif key in ("max_sessions", "max_sessions_per_client", "max_negotiating", "auth_fail_limit"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key} must be a whole number (0 for unlimited), not {value!r}")
            out[key] = value
        elif key == "auth_fail_window":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number of seconds, not {value!r}")
            out[key] = float(value)
        elif key == "destination_guard":
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be on, off or auto")
            out[key] = value
        elif key == "rules":
            out[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}")
    return out


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
