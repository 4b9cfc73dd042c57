"""
twistd's entry: ``twistd -n socksgss [options]``.  Command-line options are
turned into a `txsocksgss.server.config.Config`; nothing else happens here.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from txsocksgss.errors import ConfigError
from txsocksgss.server.config import DEFAULT_LISTEN, KNOWN_METHODS, Config
from txsocksgss.server.service import SOCKSService, makeServerFactory, makeServiceFromFactory

__all__ = ["Options", "makeService", "config_from_options"]


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise usage.UsageError(f"not a number of seconds: {value!r}") from None
    if seconds < 0:
        raise usage.UsageError(f"a negative number of seconds: {value!r}")
    return seconds


class Options(usage.Options):
    """The options of ``twistd socksgss``; every one is also a TOML setting (see docs/configuration)."""

    synopsis = "[options]"
    longdesc = (
        "An authenticating SOCKS 5 proxy.  With no options it listens on "
        f"{DEFAULT_LISTEN} without authentication.  Settings may also come "
        "from a TOML file (--config); options given here win over the file."
    )
    optFlags = [
        ["allow-open", None,
         "Allow an unauthenticated listener on a non-loopback address (an open proxy)."],
        ["gssapi-nec", None,
         "GSS-API: accept the unwrapped protection-level octet of old NEC-derived clients."],
        ["maf-continue-on-failure", None,
         "MAF: after a failed sub-method, try the next chain instead of failing."],
        ["no-splice", None,
         "Relay with ordinary reads and writes, not the zero-copy os.splice path."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file with the same settings as these options."],
        ["passwd", None, None,
         "Password file for the userpass method (create it with `socksgss passwd FILE USER`)."],
        ["rules", None, None, "TOML file of access rules (first match wins)."],
        ["negotiation-timeout", None, None,
         "Seconds from accept to the reply before the connection is closed (default 30).", _seconds],
        ["idle-timeout", None, None,
         "Seconds without traffic before a tunnel is closed; 0 for never (default 3600).", _seconds],
        ["shutdown-grace", None, None,
         "Seconds open tunnels may go on after SIGTERM before they are closed; 0 closes them at once "
         "(default 10).", _seconds],
        ["metrics", None, None,
         "Twisted server endpoint for a Prometheus metrics HTTP endpoint, e.g. tcp:9180:interface=127.0.0.1 "
         "(default: none)."],
        ["external", None, None,
         "IP address on which BIND and UDP ASSOCIATE listen (default: the address the client connected to)."],
        ["gssapi-keytab", None, None,
         "GSS-API: keytab holding the service principal's keys (default: KRB5_KTNAME or /etc/krb5.keytab)."],
        ["ident", None, None,
         "SOCKS 4 ident (RFC 1413) check: off, log (ask identd and log) or require (refuse with 92/93) "
         "(default off)."],
        ["ident-port", None, None, "Port of the identd on client hosts (default 113).", int],
        ["ident-timeout", None, None, "Seconds an ident lookup may take (default 10).", _seconds],
        ["gssapi-service", None, None, "GSS-API: service name clients target, as in rcmd/HOST (default rcmd)."],
        ["workers", None, None,
         "Processes serving the TCP listeners, sharing their ports with SO_REUSEPORT (default 1); "
         "each listener needs a fixed port.", int],
        ["gssapi-mech", None, None, "GSS-API: mechanism to accept: krb5, spnego or any (default any)."],
        ["gssapi-wrap", None, None,
         "GSS-API: who computes the per-message tokens: auto (OpenSSL for Kerberos AES-SHA1 keys, the "
         "GSS-API library otherwise) or library (default auto)."],
        ["gssapi-protection", None, None,
         "GSS-API: levels to agree to, most preferred first, from confidentiality, integrity, clear "
         "(default confidentiality,integrity; clear means no protection after authentication)."],
        ["max-sessions", None, None,
         "Client connections open at once; more are refused at accept (default 10000; 0 unlimited).", int],
        ["max-sessions-per-client", None, None,
         "Client connections open at once from one IP address (default 256; 0 unlimited).", int],
        ["max-negotiating", None, None,
         "Client connections not yet past their first reply (default 1000; 0 unlimited).", int],
        ["auth-fail-limit", None, None,
         "Authentication failures from one IP address within --auth-fail-window after which its "
         "connections are refused for --auth-fail-window seconds (default 5; 0 never).", int],
        ["auth-fail-window", None, None,
         "Seconds: the window of --auth-fail-limit and the cool-down after it (default 60).", _seconds],
        ["destination-guard", None, None,
         "on, off or auto: refuse loopback, link-local, cloud metadata, unspecified and the proxy's own "
         "addresses as destinations, after DNS (default auto: on when any listener is not loopback)."],
    ]
    compData = usage.Completions(
        optActions={
            "config": usage.CompleteFiles("*.toml"),
            "passwd": usage.CompleteFiles(),
            "rules": usage.CompleteFiles("*.toml"),
            "method": usage.CompleteList(list(KNOWN_METHODS)),
            "gssapi-keytab": usage.CompleteFiles(),
            "gssapi-mech": usage.CompleteList(["krb5", "spnego", "any"]),
            "gssapi-wrap": usage.CompleteList(["auto", "library"]),
            "ident": usage.CompleteList(["off", "log", "require"]),
        },
    )

    worker = False  # True in a worker process started by the master

    def parseOptions(self, options: Any = None) -> None:
        import sys

        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["method"] = []
        self["maf-chain"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on (repeatable; default tcp:1080:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    def opt_maf_chain(self, spec: str) -> None:
        """
        MAF: an acceptable chain of sub-methods and its grade, SUB+SUB=GRADE
        (sub-methods userpass, gssapi, test), repeatable, most preferred first.
        """
        self["maf-chain"].append(spec)

    def opt_method(self, name: str) -> None:
        """
        Authentication method to offer, repeatable, in order of preference:
        none, userpass, gssapi, maf; socks4 also serves SOCKS 4/4a requests
        (which have no authentication but ident).
        """
        if name not in KNOWN_METHODS:
            raise usage.UsageError(f"unknown method {name!r}; known: {', '.join(KNOWN_METHODS)}")
        self["method"].append(name)

    def postOptions(self) -> None:
        # Build everything that can fail on a bad setting (password file,
        # keytab, rules) now, so twistd prints a usage error, not a traceback.
        try:
            self.config = config_from_options(self)
            self.factory = makeServerFactory(self.config)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def config_from_options(options: Any) -> Config:
    """The `Config` for parsed `Options`: the TOML file (if any), then the options over it."""
    base = Config.from_toml(options["config"]) if options["config"] else Config()
    idle = options["idle-timeout"]
    return base.merged(
        listen=options["listen"] or None,
        methods=options["method"] or None,
        passwd=options["passwd"],
        rules_file=options["rules"],
        negotiation_timeout=options["negotiation-timeout"],
        idle_timeout=idle,
        shutdown_grace=options["shutdown-grace"],
        metrics=options["metrics"],
        allow_open=True if options["allow-open"] else None,
        external=options["external"],
        gssapi_keytab=options["gssapi-keytab"],
        gssapi_service=options["gssapi-service"],
        gssapi_mech=options["gssapi-mech"],
        gssapi_wrap=options["gssapi-wrap"],
        gssapi_protection=options["gssapi-protection"],
        gssapi_nec=True if options["gssapi-nec"] else None,
        ident=options["ident"],
        ident_port=options["ident-port"],
        ident_timeout=options["ident-timeout"],
        maf_chains=options["maf-chain"] or None,
        maf_continue_on_failure=True if options["maf-continue-on-failure"] else None,
        splice=False if options["no-splice"] else None,
        workers=options["workers"],
        max_sessions=options["max-sessions"],
        max_sessions_per_client=options["max-sessions-per-client"],
        max_negotiating=options["max-negotiating"],
        auth_fail_limit=options["auth-fail-limit"],
        auth_fail_window=options["auth-fail-window"],
        destination_guard=options["destination-guard"],
    )


def makeService(options: Options) -> SOCKSService:
    """twistd's IServiceMaker entry."""
    worker_argv = None if options.worker else options.argv
    return makeServiceFromFactory(options.config, options.factory, worker_argv=worker_argv, handle_signals=True)
