"""
``socksgss connect``: join standard input and output to a host through a
SOCKS proxy, in the spirit of ``ncat --proxy``.

    socksgss connect --proxy socks5h://alice:s3cret@proxy.example:1080 example.com 80

Theory of operation.  Three layers, from pure to I/O, each in its module:

1. `txsocksgss.cli.proxy_url.parse_proxy_url` turns a proxy URL, spelled
   as curl spells it, into a `ProxyURL`;
   `txsocksgss.cli.connect_options.options_from_args` turns the parsed
   command line into a `ConnectOptions` (credentials, methods in order of
   preference from `txsocksgss.cli.client_methods`, SOCKS 4 user id).  All
   are pure and raise `UsageError` for bad input.
2. `txsocksgss.cli.destination.resolve_destination` decides where the
   destination name is resolved (locally for ``socks5://`` and
   ``socks4://``, by the proxy for ``socks5h://`` and ``socks4a://``) and
   `txsocksgss.cli.destination.build_endpoint` builds the
   `SOCKS5ClientEndpoint` or `SOCKS4ClientEndpoint` for it.
3. The Twisted glue: `txsocksgss.cli.stdio_tunnel.StdioBridge` joins a
   `twisted.internet.stdio.StandardIO` to the tunnel (with flow control
   both ways and half-close),
   `txsocksgss.cli.stdio_datagrams.DatagramLines` joins it to a UDP
   association, and `run_connect`, here, drives one of the three modes
   under `task.react`.

Exit status (`txsocksgss.cli.status`):

    0  the tunnel (or association) ended normally
    1  connection or reply failure: proxy unreachable, failure reply, lookup
       failure, timeout, protocol error, connection lost, interrupted
    2  usage error: bad option, bad proxy URL, missing credentials
    3  authentication failure: bad user name or password, or the proxy
       accepts none of the methods offered

Every failure is one line on standard error (``socksgss: ...``, worded by
`txsocksgss.cli.failure_messages.describe_error`), never a traceback
(``-v`` adds one for internal errors) and never a password.
"""

from __future__ import annotations

import argparse
import ipaddress
import traceback
from typing import Any, Callable

from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol

from txsocksgss.cli.client_methods import CLIENT_METHODS, build_authenticators, method_name
from txsocksgss.cli.connect_options import ConnectOptions, Mode, options_from_args
from txsocksgss.cli.console import StderrConsole, error_line, report_error
from txsocksgss.cli.destination import build_endpoint, resolve_destination
from txsocksgss.cli.failure_messages import describe_error
from txsocksgss.cli.status import EXIT_FAILURE, EXIT_USAGE, UsageError, react_for_status
from txsocksgss.cli.stdio_datagrams import DatagramLines
from txsocksgss.cli.stdio_tunnel import StdioBridge
from txsocksgss.client.endpoints import DEFAULT_TIMEOUT, SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.errors import SOCKSError
from txsocksgss.client.bind import bindThroughProxy
from txsocksgss.client.udp import associateUDP

__all__ = ["add_connect_parser", "run_connect"]

_COMMAND = "connect"


# --- the run ------------------------------------------------------------------------------


def _printable_host(host: str, fallback: Callable[[], str]) -> str:
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host
    # RFC 1928 s6: an unspecified BND.ADDR means "the address you reached me on".
    return fallback() if unspecified else host


def _default_stdio(reactor: Any) -> Callable[[Protocol], Any]:
    from twisted.internet.stdio import StandardIO

    return lambda protocol: StandardIO(protocol, reactor=reactor)


async def run_connect(
    reactor: Any,
    options: ConnectOptions,
    console: StderrConsole | None = None,
    open_stdio: Callable[[Protocol], Any] | None = None,
) -> int:
    """
    Run one ``socksgss connect`` with ``options``; returns the exit status.

    Every expected failure becomes a one-line message on stderr and its
    status (see the module docstring); nothing raises.
    """
    console = console or StderrConsole(options.verbose)
    open_stdio = open_stdio or _default_stdio(reactor)
    proxy = options.proxy
    try:
        for warning in options.warnings:
            console.error(f"warning: {warning}")
        if proxy.version == 5:
            console.info(f"proxy {proxy.display()}, offering {', '.join(options.methods)}")
            authenticators = build_authenticators(options.methods, options.credentials, options.gssapi,
                                                  options.maf_submethods)
        else:
            console.info(f"proxy {proxy.display()}, user id {options.userid!r}")
            authenticators = []
        target = await resolve_destination(reactor, proxy, options.host)
        if target != options.host:
            console.info(f"resolved {options.host} to {target}")

        def endpoint_for(host: str, port: int) -> SOCKS5ClientEndpoint | SOCKS4ClientEndpoint:
            return build_endpoint(reactor, proxy, host, port, authenticators=authenticators,
                                  userid=options.userid, timeout=options.timeout)

        if options.mode is Mode.UDP:
            return await _run_udp(reactor, options, console, open_stdio, endpoint_for, target)
        if options.mode is Mode.BIND:
            return await _run_bind(options, console, open_stdio, endpoint_for(target, options.port))
        return await _run_tunnel(options, console, open_stdio, endpoint_for(target, options.port))
    except UsageError as error:
        console.status(error_line(_COMMAND, str(error)))
        return EXIT_USAGE
    except Exception as error:
        message, status = describe_error(error, proxy)
        console.error(message)
        if options.verbose and not isinstance(error, (SOCKSError, ConnectError, DNSLookupError)):
            traceback.print_exc()
        return status


def _log_identity(console: StderrConsole, identity: Any) -> None:
    if identity is None:
        return
    if identity.method < 0:
        console.info("SOCKS 4: no method negotiation")
        return
    user = f" as {identity.user}" if identity.user else ""
    console.info(f"method {method_name(identity.method)}{user}")


async def _run_tunnel(options: ConnectOptions, console: StderrConsole, open_stdio: Callable[[Protocol], Any],
                      endpoint: Any) -> int:
    bridge = StdioBridge(open_stdio, console)
    connection = await endpoint.establish(bridge.factory())
    _log_identity(console, connection.identity)
    console.info(f"connected to {options.host} port {options.port}; "
                 f"the proxy bound {connection.bound.host} {connection.bound.port}")
    return await bridge.finished


async def _run_bind(options: ConnectOptions, console: StderrConsole, open_stdio: Callable[[Protocol], Any],
                    endpoint: Any) -> int:
    bridge = StdioBridge(open_stdio, console)
    pending = await bindThroughProxy(endpoint, bridge.factory())
    _log_identity(console, pending.handshake.identity)

    def proxy_address() -> str:
        transport = pending.handshake.transport
        peer = transport.getPeer() if transport is not None else None
        return str(getattr(peer, "host", options.proxy.host))

    console.status(f"bound {_printable_host(pending.address.host, proxy_address)} {pending.address.port}")
    connection = await pending.accepted
    console.status(f"accepted {connection.bound.host} {connection.bound.port}")
    return await bridge.finished


async def _run_udp(reactor: Any, options: ConnectOptions, console: StderrConsole,
                   open_stdio: Callable[[Protocol], Any], endpoint_for: Callable[[str, int], Any],
                   target: str) -> int:
    # The address we will send from is unknown before the association:
    # RFC 1928 s4 says to send zeros then.
    endpoint = endpoint_for("0.0.0.0", 0)
    lines = DatagramLines((target, options.port), console)
    association = await associateUDP(endpoint, lines, reactor)
    _log_identity(console, association.handshake.identity)
    console.info(f"UDP relay {association.relay[0]} {association.relay[1]}; "
                 f"datagrams go to {options.host} port {options.port}")
    lines.attach(association, open_stdio)
    return await lines.finished


# --- the subcommand ------------------------------------------------------------------------

_DESCRIPTION = """\
Join standard input and output to HOST PORT through a SOCKS proxy (like
ncat --proxy).  EOF on standard input half-closes the connection; the
program ends when the remote side closes.  With --bind, HOST PORT is the
peer expected to connect (0.0.0.0 0 for any): "bound HOST PORT" (where the
proxy listens) and then "accepted HOST PORT" are printed on standard error.
With --udp, each line of standard input is one datagram to HOST PORT and
each datagram received is printed as a line; EOF ends the association.
"""

_EPILOG = """\
proxy URLs (as curl):
  socks5://[USER:PASSWORD@]HOST[:PORT]   HOST resolved by this client
  socks5h://...                          HOST resolved by the proxy
  socks4://[USER@]HOST[:PORT]            resolved here, IPv4 only
  socks4a://...                          resolved by the proxy
  The port defaults to 1080; an IPv6 proxy address is written [2001:db8::1];
  USER and PASSWORD are percent-decoded.  For SOCKS 4 the user id is
  --userid, else USER, else the local user name.

exit status:
  0  normal end
  1  connection or reply failure (unreachable proxy, failure reply, timeout)
  2  usage error
  3  authentication failure (bad user name or password, no acceptable method)
"""


def add_connect_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``socksgss connect`` to the ``socksgss`` subparsers."""
    parser = subparsers.add_parser(
        _COMMAND,
        help="join stdin/stdout to a host through a SOCKS proxy",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("host", metavar="HOST", help="destination (or expected peer with --bind)")
    parser.add_argument("port", metavar="PORT", help="destination port")
    parser.add_argument("--proxy", metavar="URL", required=True,
                        help="the proxy: socks5://, socks5h://, socks4:// or socks4a://")
    parser.add_argument("--proxy-user", metavar="USER:PASSWORD",
                        help="credentials for the proxy (override those in the URL)")
    parser.add_argument("--method", action="append", choices=sorted(CLIENT_METHODS), metavar="NAME",
                        help="an authentication method to offer, repeatable, in order of preference: "
                             f"{', '.join(CLIENT_METHODS)} (default: userpass then none with "
                             "credentials, else none; ignored by SOCKS 4)")
    parser.add_argument("--userid", metavar="NAME", help="the SOCKS 4 user id (default: the local user name)")
    parser.add_argument("--maf-submethod", action="append", metavar="NAME",
                        help="with --method maf: a sub-method to offer (userpass, gssapi, test), repeatable, "
                             "in order")
    gss = parser.add_argument_group("GSS-API (RFC 1961); any of these offers gssapi first")
    gss.add_argument("--gssapi-service", metavar="NAME", help="service name of the proxy (default rcmd)")
    gss.add_argument("--gssapi-host", metavar="HOST",
                     help="host part of the target name SERVICE@HOST (default: the proxy URL's host)")
    gss.add_argument("--gssapi-principal", metavar="PRINCIPAL",
                     help="full target principal, e.g. rcmd/proxy.example@REALM, instead of SERVICE@HOST")
    gss.add_argument("--gssapi-mech", choices=("krb5", "spnego"), help="mechanism (default krb5)")
    gss.add_argument("--gssapi-ccache", metavar="PATH", help="credential cache (default: KRB5CCNAME)")
    gss.add_argument("--gssapi-protection", choices=("confidentiality", "integrity", "clear"),
                     help="protection level to request (default confidentiality)")
    gss.add_argument("--gssapi-accept", metavar="LEVELS",
                     help="comma-separated levels accepted in the proxy's answer (default: the one requested)")
    gss.add_argument("--gssapi-nec", action="store_true", help="send the level octet unwrapped (NEC servers)")
    gss.add_argument("--gssapi-delegate", action="store_true",
                     help="delegate the Kerberos ticket to the proxy (off: RFC 1961 asks for it, but it hands "
                          "the proxy your TGT)")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=None,
                        help=f"seconds for reaching the proxy and for the handshake (default {DEFAULT_TIMEOUT:g})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--bind", action="store_true", help="BIND: accept one connection from HOST PORT")
    mode.add_argument("--udp", action="store_true", help="UDP ASSOCIATE: lines to and from datagrams")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the handshake to standard error")
    parser.set_defaults(run=_run)


def _ensure_standard_fds() -> None:
    """
    Put /dev/null on a closed stdin or stdout (``<&-``, ``>&-``): a closed
    stdin reads as empty, a closed stdout discards, rather than the reactor
    failing on a bad descriptor.
    """
    import os

    for fd in (0, 1):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _run(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except UsageError as error:
        report_error(_COMMAND, str(error))
        return EXIT_USAGE
    _ensure_standard_fds()
    # Stopped before the end (a signal): a failure.
    return react_for_status(lambda reactor: run_connect(reactor, options), stopped=EXIT_FAILURE)
