"""
The table of the server's settings: one `Setting` per field of
`txsocksgss.server.config.Config`, and from it everything else that names
a setting.

Each row says, for one setting: its default; how a loose value (from TOML,
a program or the command line) is coerced to the field's type; how a
coerced value is checked; its TOML key; its ``twistd socksgss`` option
(the help text, how the option's text is parsed, whether it is a flag or
repeatable) and its shell completion.  `Config` takes its defaults, its
TOML keys, its coercion and its per-value checks from here; ``tap.py``
builds its options and the options-to-Config step from here.  Checks
that need several settings (the methods against the password file, MAF
chains against the methods, ``--workers`` against the listeners and
``--metrics``, the open-proxy refusal) stay in ``Config.validate``.

This module knows values only: no reactor, no twistd, and nothing above
the server core.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.endpoints import serverFromString

from txsocksgss.errors import ConfigError
from txsocksgss.server.rules import ALLOW_ALL

__all__ = [
    "DEFAULT_LISTEN",
    "DESTINATION_GUARD_CHOICES",
    "GSSAPI_LEVEL_NAMES",
    "GSSAPI_MECH_CHOICES",
    "GSSAPI_WRAP_CHOICES",
    "IDENT_CHOICES",
    "SETTINGS",
    "Setting",
    "default_of",
    "parse_seconds",
    "setting_named",
]

DEFAULT_LISTEN = "tcp:1080:interface=127.0.0.1"
GSSAPI_MECH_CHOICES = ("krb5", "spnego", "any")
GSSAPI_WRAP_CHOICES = ("auto", "library")
GSSAPI_LEVEL_NAMES = ("confidentiality", "integrity", "clear")
IDENT_CHOICES = ("off", "log", "require")
DESTINATION_GUARD_CHOICES = ("on", "off", "auto")

Coerce = Callable[[Any], Any]
Validate = Callable[[Any], None]


@dataclass(frozen=True)
class Setting:
    """
    One setting of the server: a field of `Config` and the ways to give it.

    :ivar name: the `Config` field (and the keyword of ``Config.build``).
    :ivar default: the field's default.
    :ivar coerce: a loose value (lists for tuples, ints for floats, a
        comma-separated string for a list of levels...) to the field's
        type; raises `ConfigError` for a value of the wrong type.
    :ivar help: the option's help text (``twistd socksgss --help``).
    :ivar option: the long option of ``twistd socksgss``, without ``--``;
        ``None`` for none (then ``unexposed`` says why).
    :ivar toml_key: the key in the TOML file; ``None`` for none (then
        ``unexposed`` says why).
    :ivar parse: turns the option's text into a value for ``coerce``;
        ``None`` passes the text as it is.  Raises `ConfigError` (or, like
        ``int``, ValueError) for bad text.
    :ivar flag: for an option that takes no argument, the value giving it
        sets (``--no-splice`` sets ``splice`` to False); ``None`` for an
        option with an argument.
    :ivar repeatable: the option may be given again; the values, in order,
        make the list that replaces the file's.
    :ivar relative_path: a path; in the TOML file, relative to the file's
        directory.
    :ivar validate: raises `ConfigError` for a bad coerced value; ``None``
        for any value of the type.
    :ivar complete_files: the option completes file names matching this
        glob pattern.
    :ivar complete_choices: the option completes one of these words.
    :ivar unexposed: why the setting has no option or no TOML key.
    """

    name: str
    default: Any
    coerce: Coerce
    help: str = ""
    option: str | None = None
    toml_key: str | None = None
    parse: Callable[[str], Any] | None = None
    flag: bool | None = None
    repeatable: bool = False
    relative_path: bool = False
    validate: Validate | None = None
    complete_files: str | None = None
    complete_choices: tuple[str, ...] = ()
    unexposed: str = ""

    def check(self, value: Any) -> None:
        """Raise `ConfigError` if ``value`` (already coerced) is not acceptable."""
        if self.validate is not None:
            self.validate(value)


# -- coercion: loose values to the field's type ------------------------------
# The messages name the setting as they always have (some with the field's
# underscores, some with spaces); the factories take that label.


def _strings(label: str, comma_separated: bool = False) -> Coerce:
    def coerce(value: Any) -> tuple[str, ...]:
        if comma_separated and isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        try:
            items = None if isinstance(value, str) else tuple(value)
        except TypeError:  # a number or a boolean where the file should have a list
            items = None
        if items is None or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{label} must be a list of strings")
        return items

    return coerce


def _whole_number(label: str, explanation: str = "") -> Coerce:
    def coerce(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label} must be a whole number{explanation}, not {value!r}")
        return value

    return coerce


def _seconds(label: str, zero_means_never: bool = False) -> Coerce:
    def coerce(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be a number of seconds, not {value!r}")
        return None if zero_means_never and value == 0 else float(value)

    return coerce


def _boolean(label: str) -> Coerce:
    def coerce(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false")
        return value

    return coerce


def _optional_string(label: str, message: str = "must be a string") -> Coerce:
    def coerce(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{label} {message}")
        return value

    return coerce


def _string(label: str, message: str) -> Coerce:
    def coerce(value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{label} {message}")
        return value

    return coerce


def _metrics_endpoint(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError("metrics must be a server endpoint string such as tcp:9180:interface=127.0.0.1")
    return value or None  # "" (an empty option) means none


def _as_is(value: Any) -> Any:
    return value


# -- checks of one coerced value ----------------------------------------------


def _require(acceptable: Callable[[Any], bool], message: str) -> Validate:
    """A check that raises ConfigError(message, with ``{value}`` filled in) unless ``acceptable(value)``."""

    def validate(value: Any) -> None:
        if not acceptable(value):
            raise ConfigError(message.format(value=value))

    return validate


def _check_metrics(description: str | None) -> None:
    if description is None:
        return
    try:
        serverFromString(None, description)  # parses only; nothing listens
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise ConfigError(f"--metrics {description!r} is not a server endpoint string such as "
                          f"tcp:9180:interface=127.0.0.1 ({error})") from None


def _check_protection(levels: tuple[str, ...]) -> None:
    if not levels or any(level not in GSSAPI_LEVEL_NAMES for level in levels):
        raise ConfigError(
            f"--gssapi-protection takes a comma-separated list of {', '.join(GSSAPI_LEVEL_NAMES)}, "
            f"not {','.join(levels)!r}"
        )
    if len(set(levels)) != len(levels):
        raise ConfigError("--gssapi-protection lists a level twice")


def _is_ip_address(text: str | None) -> bool:
    if text is None:
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _limit(option: str) -> Validate:
    return _require(lambda n: n >= 0, f"--{option} must be 0 (unlimited) or a positive number")


# -- the options' text ---------------------------------------------------------


def parse_seconds(text: str) -> float:
    """An option's text as seconds, 0 or more; ConfigError otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"not a number of seconds: {text!r}") from None
    if seconds < 0:
        raise ConfigError(f"a negative number of seconds: {text!r}")
    return seconds


_NO_OPTION_RULES = ("the access policy itself, not a value to type: loaded from `rules_file` (--rules, TOML "
                    "`rules`) or built from the TOML file's `default` key and [[rule]] tables")

#: Every setting, in the order of `Config`'s fields.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen", (DEFAULT_LISTEN,), _strings("listen"), option="listen", toml_key="listen", repeatable=True,
        help=f"Twisted endpoint string to listen on (repeatable; default {DEFAULT_LISTEN}).",
        validate=_require(bool, "no listening address: give at least one --listen ENDPOINT"),
    ),
    # The method names are checked by Config.validate (with the password file
    # that decides the default), against the method tables of config.py.
    Setting(
        "methods", (), _strings("methods"), option="method", toml_key="methods", repeatable=True,
        help="Authentication method to offer, repeatable, in order of preference: none, userpass, gssapi, "
             "maf; socks4 also serves SOCKS 4/4a requests (which have no authentication but ident).",
    ),
    Setting(
        "passwd", None, _optional_string("passwd"), option="passwd", toml_key="passwd", relative_path=True,
        complete_files="*",
        help="Password file for the userpass method (create it with `socksgss passwd FILE USER`).",
    ),
    Setting("rules", ALLOW_ALL, _as_is, unexposed=_NO_OPTION_RULES),
    Setting(
        "rules_file", None, _optional_string("rules_file"), option="rules", toml_key="rules", relative_path=True,
        complete_files="*.toml", help="TOML file of access rules (first match wins).",
    ),
    Setting(
        "negotiation_timeout", 30.0, _seconds("negotiation timeout"), option="negotiation-timeout",
        toml_key="negotiation_timeout", parse=parse_seconds,
        help="Seconds from accept to the reply before the connection is closed (default 30).",
        validate=_require(lambda s: s > 0, "negotiation timeout must be a positive number of seconds"),
    ),
    Setting(
        "idle_timeout", 3600.0, _seconds("idle timeout", zero_means_never=True), option="idle-timeout",
        toml_key="idle_timeout", parse=parse_seconds,
        help="Seconds without traffic before a tunnel is closed; 0 for never (default 3600).",
        validate=_require(lambda s: s is None or s >= 0,
                          "idle timeout must be 0 (never) or a positive number of seconds"),
    ),
    Setting(
        "shutdown_grace", 10.0, _seconds("shutdown grace"), option="shutdown-grace", toml_key="shutdown_grace",
        parse=parse_seconds,
        help="Seconds open tunnels may go on after SIGTERM before they are closed; 0 closes them at once "
             "(default 10).",
        validate=_require(lambda s: s >= 0,
                          "shutdown grace must be 0 (close at once) or a positive number of seconds"),
    ),
    Setting(
        "metrics", None, _metrics_endpoint, option="metrics", toml_key="metrics", validate=_check_metrics,
        help="Twisted server endpoint for a Prometheus metrics HTTP endpoint, e.g. tcp:9180:interface=127.0.0.1 "
             "(default: none).",
    ),
    Setting(
        "allow_open", False, _boolean("allow_open"), option="allow-open", toml_key="allow_open", flag=True,
        help="Allow an unauthenticated listener on a non-loopback address (an open proxy).",
    ),
    Setting(
        "external", None, _optional_string("external"), option="external", toml_key="external",
        help="IP address on which BIND and UDP ASSOCIATE listen (default: the address the client connected to).",
        validate=_require(_is_ip_address, "--external must be an IP address, not {value!r}"),
    ),
    Setting(
        "gssapi_keytab", None, _optional_string("gssapi_keytab"), option="gssapi-keytab", toml_key="gssapi_keytab",
        relative_path=True, complete_files="*",
        help="GSS-API: keytab holding the service principal's keys (default: KRB5_KTNAME or /etc/krb5.keytab).",
    ),
    Setting(
        "gssapi_service", "rcmd", _optional_string("gssapi_service"), option="gssapi-service",
        toml_key="gssapi_service",
        help="GSS-API: service name clients target, as in rcmd/HOST (default rcmd).",
        validate=_require(lambda s: bool(s) and "/" not in s and "@" not in s,
                          "--gssapi-service must be a bare service name such as rcmd, not {value!r}"),
    ),
    Setting(
        "gssapi_mech", "any", _optional_string("gssapi_mech"), option="gssapi-mech", toml_key="gssapi_mech",
        complete_choices=GSSAPI_MECH_CHOICES,
        help="GSS-API: mechanism to accept: krb5, spnego or any (default any).",
        validate=_require(lambda m: m in GSSAPI_MECH_CHOICES,
                          f"--gssapi-mech must be one of {', '.join(GSSAPI_MECH_CHOICES)}, not {{value!r}}"),
    ),
    Setting(
        "gssapi_protection", ("confidentiality", "integrity"), _strings("gssapi_protection", comma_separated=True),
        option="gssapi-protection", toml_key="gssapi_protection", validate=_check_protection,
        help="GSS-API: levels to agree to, most preferred first, from confidentiality, integrity, clear "
             "(default confidentiality,integrity; clear means no protection after authentication).",
    ),
    Setting(
        "gssapi_nec", False, _boolean("gssapi_nec"), option="gssapi-nec", toml_key="gssapi_nec", flag=True,
        help="GSS-API: accept the unwrapped protection-level octet of old NEC-derived clients.",
    ),
    Setting(
        "gssapi_wrap", "auto", _optional_string("gssapi_wrap"), option="gssapi-wrap", toml_key="gssapi_wrap",
        complete_choices=GSSAPI_WRAP_CHOICES,
        help="GSS-API: who computes the per-message tokens: auto (OpenSSL for Kerberos AES-SHA1 keys, the "
             "GSS-API library otherwise) or library (default auto).",
        validate=_require(lambda w: w in GSSAPI_WRAP_CHOICES,
                          f"--gssapi-wrap must be one of {', '.join(GSSAPI_WRAP_CHOICES)}, not {{value!r}}"),
    ),
    Setting(
        "ident", "off", _optional_string("ident"), option="ident", toml_key="ident", complete_choices=IDENT_CHOICES,
        help="SOCKS 4 ident (RFC 1413) check: off, log (ask identd and log) or require (refuse with 92/93) "
             "(default off).",
        validate=_require(lambda i: i in IDENT_CHOICES, "ident must be off, log or require, not {value!r}"),
    ),
    Setting(
        "ident_port", 113, _whole_number("ident_port"), option="ident-port", toml_key="ident_port", parse=int,
        help="Port of the identd on client hosts (default 113).",
        validate=_require(lambda p: 1 <= p <= 65535, "ident port {value} is not a port number"),
    ),
    Setting(
        "ident_timeout", 10.0, _seconds("ident timeout"), option="ident-timeout", toml_key="ident_timeout",
        parse=parse_seconds, help="Seconds an ident lookup may take (default 10).",
        validate=_require(lambda s: s > 0, "ident timeout must be a positive number of seconds"),
    ),
    # Each chain is parsed (sub-method names, grade) by Config.validate, with
    # parse_maf_chain of config.py.
    Setting(
        "maf_chains", (), _strings("maf_chains"), option="maf-chain", toml_key="maf_chains", repeatable=True,
        help="MAF: an acceptable chain of sub-methods and its grade, SUB+SUB=GRADE (sub-methods userpass, "
             "gssapi, test), repeatable, most preferred first.",
    ),
    Setting(
        "maf_continue_on_failure", False, _boolean("maf_continue_on_failure"), option="maf-continue-on-failure",
        toml_key="maf_continue_on_failure", flag=True,
        help="MAF: after a failed sub-method, try the next chain instead of failing.",
    ),
    Setting(
        "splice", True, _boolean("splice"), option="no-splice", toml_key="splice", flag=False,
        help="Relay with ordinary reads and writes, not the zero-copy os.splice path.",
    ),
    Setting(
        "workers", 1, _whole_number("workers"), option="workers", toml_key="workers", parse=int,
        help="Processes serving the TCP listeners, sharing their ports with SO_REUSEPORT (default 1); "
             "each listener needs a fixed port.",
        validate=_require(lambda n: 1 <= n <= 256, "workers must be 1 to 256, not {value}"),
    ),
    Setting(
        "max_sessions", 10000, _whole_number("max_sessions", " (0 for unlimited)"), option="max-sessions",
        toml_key="max_sessions", parse=int, validate=_limit("max-sessions"),
        help="Client connections open at once; more are refused at accept (default 10000; 0 unlimited).",
    ),
    Setting(
        "max_sessions_per_client", 256, _whole_number("max_sessions_per_client", " (0 for unlimited)"),
        option="max-sessions-per-client", toml_key="max_sessions_per_client", parse=int,
        validate=_limit("max-sessions-per-client"),
        help="Client connections open at once from one IP address (default 256; 0 unlimited).",
    ),
    Setting(
        "max_negotiating", 1000, _whole_number("max_negotiating", " (0 for unlimited)"), option="max-negotiating",
        toml_key="max_negotiating", parse=int, validate=_limit("max-negotiating"),
        help="Client connections not yet past their first reply (default 1000; 0 unlimited).",
    ),
    Setting(
        "auth_fail_limit", 5, _whole_number("auth_fail_limit", " (0 for unlimited)"), option="auth-fail-limit",
        toml_key="auth_fail_limit", parse=int, validate=_limit("auth-fail-limit"),
        help="Authentication failures from one IP address within --auth-fail-window after which its "
             "connections are refused for --auth-fail-window seconds (default 5; 0 never).",
    ),
    Setting(
        "auth_fail_window", 60.0, _seconds("auth_fail_window"), option="auth-fail-window",
        toml_key="auth_fail_window", parse=parse_seconds,
        help="Seconds: the window of --auth-fail-limit and the cool-down after it (default 60).",
        validate=_require(lambda s: s > 0, "--auth-fail-window must be a positive number of seconds"),
    ),
    Setting(
        "destination_guard", "auto", _string("destination_guard", "must be on, off or auto"),
        option="destination-guard", toml_key="destination_guard",
        help="on, off or auto: refuse loopback, link-local, cloud metadata, unspecified and the proxy's own "
             "addresses as destinations, after DNS (default auto: on when any listener is not loopback).",
        validate=_require(lambda g: g in DESTINATION_GUARD_CHOICES,
                          "--destination-guard must be on, off or auto, not {value!r}"),
    ),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def setting_named(name: str) -> Setting:
    """The `Setting` of the `Config` field ``name``; ConfigError for an unknown one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown setting {name!r}") from None


def default_of(name: str) -> Any:
    """The default of the `Config` field ``name`` (for Config's own field definitions)."""
    return _BY_NAME[name].default
