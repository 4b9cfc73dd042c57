"""
Every zope.interface of txsocksgss, with its contract.

Theory of operation.  A SOCKS 5 connection goes accept -> greeting -> method
selection -> subnegotiation -> request -> reply -> relay.  The subnegotiation
is a conversation between an `IServerAuthenticator` and an
`IClientAuthenticator` of the same method code.  Each is sans-IO: it takes
the bytes its peer sent and answers with a `txsocksgss.auth.conversation.AuthStep`
(bytes to send, and on the last step an `AuthResult`).  That lets the same
authenticator run on a raw socket or inside another method's framing (MAF
carries sub-method bytes in PROCESS messages), and lets a method that
protects every later byte (GSS-API) hand back an `IStreamProtection` that
the driver installs under the protocol.  An `IAccessPolicy` then judges each
request with the identity the conversation established.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "IServerAuthenticator",
    "IServerAuthenticatorFactory",
    "IClientAuthenticator",
    "IClientAuthenticatorFactory",
    "IStreamProtection",
    "IAccessPolicy",
    "ISOCKSUser",
    "IIdentChecker",
    "IMAFPolicy",
    "ISessionIO",
    "ITunnel",
    "IConnector",
    "ICommand",
]


class IServerAuthenticator(Interface):
    """
    The server side of one subnegotiation, for one connection.

    The driver calls `begin` once, then `receive` with every chunk of bytes
    the client sends, in order, until a step carries a result.  It never
    calls `receive` again while a Deferred from it is pending (it buffers),
    and never after a result.  `abort` is called when the connection goes
    away or times out before the end.
    """

    method = Attribute("The SOCKS 5 method code (int) this authenticator speaks.")

    def begin():  # type: ignore[misc]
        """
        Start the conversation.

        :return: an `AuthStep`, or a Deferred firing with one (usually an
            empty step: in every method so far the client speaks first).
        """

    def receive(data):  # type: ignore[misc]
        """
        Take bytes sent by the client.

        :param bytes data: the next chunk, of any size (possibly only part
            of a message, possibly more than the subnegotiation).
        :return: an `AuthStep`, or a Deferred firing with one when a check
            must wait (a password checker, an ident lookup).  Malformed input
            ends in a step with a failed result (and the method's failure
            message in ``send`` where it has one), never an exception.
        """

    def abort():  # type: ignore[misc]
        """Give up: cancel pending work and drop any secret state."""


class IServerAuthenticatorFactory(Interface):
    """Configured once per server; builds an `IServerAuthenticator` per connection."""

    method = Attribute("The SOCKS 5 method code (int).")
    name = Attribute("The method's name in the configuration: 'none', 'userpass', ...")

    def buildAuthenticator(session):  # type: ignore[misc]
        """
        :param session: a `txsocksgss.auth.conversation.SessionInfo`.
        :return: a new `IServerAuthenticator`.
        """


class IClientAuthenticator(Interface):
    """
    The client side of one subnegotiation, for one connection.

    Same contract as `IServerAuthenticator` from the other end: `begin`
    returns the client's first message (in every method so far the client
    speaks first), `receive` takes the server's bytes.
    """

    method = Attribute("The SOCKS 5 method code (int) this authenticator speaks.")

    def begin():  # type: ignore[misc]
        """
        :return: the first `AuthStep`, or a Deferred firing with it (GSS-API
            may have to ask the KDC for a ticket first).
        """

    def receive(data):  # type: ignore[misc]
        """:return: an `AuthStep` or a Deferred firing with one."""

    def abort():  # type: ignore[misc]
        """Give up: cancel pending work and drop any secret state."""


class IClientAuthenticatorFactory(Interface):
    """What a client endpoint is configured with: one per method it offers."""

    method = Attribute("The SOCKS 5 method code (int) offered in the greeting.")

    def buildAuthenticator(session):  # type: ignore[misc]
        """
        :param session: a `txsocksgss.auth.conversation.SessionInfo`.
        :return: a new `IClientAuthenticator`.
        """


class IStreamProtection(Interface):
    """
    Per-message protection applied to every byte after a subnegotiation
    (RFC 1961 s5 encapsulation, for example).  Sans-IO: the transport wrapper
    in `txsocksgss.protection` calls it.
    """

    name = Attribute("A short name for the logs: 'integrity', 'confidentiality'.")

    def protect(data):  # type: ignore[misc]
        """:return: the bytes to put on the wire for ``data`` (framed, wrapped)."""

    def unprotect(data):  # type: ignore[misc]
        """
        Take received wire bytes (any chunking).

        :return: the plaintext of every whole frame received so far (possibly
            empty); nothing of a frame is returned before it is verified.
        :raise txsocksgss.errors.ProtocolError: on a frame that fails to
            verify or breaks the agreed level; the connection must end.
        """

    def protectDatagram(data):  # type: ignore[misc]
        """:return: one protected datagram for ``data`` (RFC 1961 s5: one token each)."""

    def unprotectDatagram(data):  # type: ignore[misc]
        """:return: the verified plaintext of one datagram, or raise ProtocolError."""


class IAccessPolicy(Interface):
    """Decides whether a request may proceed.  Pure: no I/O, no state."""

    def decide(request):  # type: ignore[misc]
        """
        :param request: a `txsocksgss.server.rules.AccessRequest`.
        :return: a `txsocksgss.server.rules.Decision` (allowed or not, and
            the rule that decided, for the log).
        """


class ISOCKSUser(Interface):
    """
    The avatar a twisted.cred realm returns for a user who authenticated to
    the proxy (username/password, and any method that logs in through a
    portal).  A program may plug in its own realm returning any provider.
    """

    name = Attribute("The user name (str) that the access rules and the logs see.")


class IIdentChecker(Interface):
    """
    The SOCKS 4 counterpart of an authenticator: SOCKS 4 has no method
    negotiation, so the server judges the USERID a client sends (with an
    RFC 1413 lookup, or not at all) before it serves the request.
    """

    def check(client, server, userid):  # type: ignore[misc]
        """
        :param client: (host, port) of the client, as the server sees it.
        :param server: (host, port) the client connected to.
        :param str userid: the request's USERID.
        :return: a Deferred firing with a `txsocksgss.auth.ident.IdentOutcome`
            (the session's user, or the SOCKS 4 reply code to refuse with).
        """


class IMAFPolicy(Interface):
    """
    The Authentication Management Server of the Multi-Authentication
    Framework (method 0x08): the server-side policy that decides, after the
    client's offer and after each sub-method, what happens next.
    """

    def decide(state):  # type: ignore[misc]
        """
        :param state: a `txsocksgss.auth.maf.MAFState` (the sub-methods
            offered, whether the client has more, the outcomes so far).
        :return: one of `txsocksgss.auth.maf.DoSubMethod`,
            `txsocksgss.auth.maf.AskForMore`, `txsocksgss.auth.maf.Succeed`
            (with the integrity grade) or `txsocksgss.auth.maf.Fail`.
        """


class ISessionIO(Interface):
    """
    What the server's session machine (`txsocksgss.server.negotiation.SessionMachine`)
    asks of the driver that carries its connection: the only way the machine
    acts.  Two drivers provide it, over a Twisted transport and over a bare
    socket; the second hands the connection (and the machine) to the first
    when it is asked for something it cannot do.
    """

    def send(data):  # type: ignore[misc]
        """Send ``data`` (bytes) to the client, in order, through the protection if one is installed."""

    def installProtection(protection):  # type: ignore[misc]
        """From now on, wrap what is sent and unwrap what is received with ``protection`` (`IStreamProtection`)."""

    def connect(addresses, port, timeout, onConnected, onFailed):  # type: ignore[misc]
        """
        An `IConnector` (not started) for the first of ``addresses`` (IP
        address strings) that answers on ``port``; it reports
        ``onConnected(upstream, bound)`` (an upstream for `openTunnel`, and
        the local `Address` of the outgoing connection; it returns False
        when the session no longer wants it, and the connector closes it)
        or ``onFailed(failure)``.
        """

    def openTunnel(upstream, reply, onEnd):  # type: ignore[misc]
        """
        Send the success ``reply`` as far as the connection takes it now and
        build the tunnel (`ITunnel`, not started) between the client and
        ``upstream``; ``onEnd(outcome)`` is called once when it ends.
        Returns ``(tunnel, unsent)``: ``unsent`` is the rest of the reply,
        which the tunnel's `ITunnel.start` sends first.
        """

    def tunnelEnded(tunnel):  # type: ignore[misc]
        """The session's tunnel ended (after the session line is written)."""

    def openBind(context, destination):  # type: ignore[misc]
        """The BIND command (`ICommand`, not started) of ``context`` (the session machine) for ``destination``."""

    def openUDP(context, declared):  # type: ignore[misc]
        """The UDP ASSOCIATE command (`ICommand`, not started) of ``context`` for the client's ``declared`` address."""

    def close(abort):  # type: ignore[misc]
        """Close the client's connection once what was sent is out (``abort``: now, with a reset)."""


class ITunnel(Interface):
    """
    The relay between the client and the destination, after the success
    reply: `txsocksgss.server.relay.Relay` (Twisted transports, any kind)
    and `txsocksgss.server.splice.SpliceRelay` (plain TCP sockets, zero copy).
    """

    bytes_from_client = Attribute("Tunnel bytes received from the client so far (int).")
    bytes_from_upstream = Attribute("Tunnel bytes received from the destination so far (int).")
    closed_at_once = Attribute("True once the tunnel closed both connections itself at its end.")

    def start(toUpstream=b"", toClient=b""):  # type: ignore[misc]
        """Start relaying; ``toUpstream`` (the client's early bytes) and ``toClient`` (the unsent reply) go first."""

    def fromClient(data):  # type: ignore[misc]
        """Bytes the client's driver received (a tunnel that reads its sockets itself never gets these)."""

    def clientEOF():  # type: ignore[misc]
        """The client shut down its sending side."""

    def clientLost(reason):  # type: ignore[misc]
        """The client's connection is gone."""

    def close(outcome):  # type: ignore[misc]
        """End the tunnel now, with ``outcome`` as the session's outcome."""


class IConnector(Interface):
    """One outgoing connection attempt of a CONNECT (over a list of addresses)."""

    def start():  # type: ignore[misc]
        """Try the first address (the outcome may be reported before this returns)."""

    def cancel():  # type: ignore[misc]
        """Stop the attempt under way; nothing is reported after it."""

    def describe():  # type: ignore[misc]
        """What the session waits for (``connecting to HOST:PORT``), for the negotiation timeout's log line."""


class ICommand(Interface):
    """A BIND or UDP ASSOCIATE command, run against its session's command context (the session machine)."""

    def start():  # type: ignore[misc]
        """Begin: resolve, judge, open the listener, reply (or end the session with the reply owed)."""

    def stop():  # type: ignore[misc]
        """The session ended: release every socket and timer of the command."""
