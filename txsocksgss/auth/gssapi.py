"""
Method 0x01, GSS-API (RFC 1961), server and client side, over python-gssapi.

Theory of operation.  Every message after method selection is an RFC 1961
frame (`txsocksgss.wire.gssapi`).

1. Context establishment (RFC 1961 s3), MTYP 01.  The client (initiator)
   sends the first token; tokens go back and forth, as many rounds as the
   mechanism needs (Kerberos: one; SPNEGO: one or more; NTLM through SPNEGO:
   three messages).  When the acceptor completes without an output token it
   sends a zero-length token (s3.6).  On any failure the server sends the
   abort frame ``01 FF`` and closes (s3.8); the client closes (s3.5).
2. Protection level (RFC 1961 s4), MTYP 02: the client sends one octet, its
   required level, wrapped with conf_req=FALSE; the server answers the level
   it agrees to, wrapped the same way.  Levels: 1 integrity, 2 integrity and
   confidentiality; 0 "clear" is Dante's extension (no protection after
   this step; off by default).  NEC mode sends the octet unwrapped.
3. Encapsulation (RFC 1961 s5) at levels 1 and 2: `GSSAPIStreamProtection`.

Decisions where the RFC is silent or unsafe (see docs/gssapi.rst):

- The server answers the level the client asked for when its policy allows
  it and the context can deliver it; otherwise it answers its own most
  preferred allowed level, and the client decides (a client that finds the
  answer unacceptable closes, s4).  Level 3 (selective) is never agreed.
- The client does not request credential delegation unless asked: RFC 1961
  s3.2 says to always pass GSS_C_DELEG_FLAG, which would hand the user's
  ticket-granting ticket to the proxy.
- The server checks which mechanism the client used from the OID of its
  initial token (RFC 2743 s3.1), so `krb5` refuses SPNEGO and vice versa.
- Steps of the initiator may talk to the KDC and block: they run in a
  thread.  The acceptor's steps are local computation and run inline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gssapi
from gssapi.exceptions import GSSError
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from txsocksgss.auth.conversation import AuthResult, AuthStep, Identity, SessionInfo
from txsocksgss.auth.gssapi_wrap import UNCOUNTED, WRAP_ENGINES, GSSAPIStreamProtection, PeerSequence, gss_text
from txsocksgss.auth.krb5_lucid import KRB5_OID
from txsocksgss.errors import ConfigError, ProtocolError
from txsocksgss.interfaces import (
    IClientAuthenticator,
    IClientAuthenticatorFactory,
    IServerAuthenticator,
    IServerAuthenticatorFactory,
)
from txsocksgss.wire.gssapi import (
    ABORT_FRAME,
    MAX_TOKEN_LENGTH,
    GSSAPIFrame,
    MessageType,
    ProtectionLevel,
    parse_gssapi_frame,
)
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.rfc4121 import wrap_token_sequence
from txsocksgss.wire.socks5 import AuthMethod

__all__ = [
    "KRB5_OID",
    "SPNEGO_OID",
    "MECHANISMS",
    "GSSAPIServerFactory",
    "GSSAPIClientFactory",
    "parse_levels",
    "token_mechanism",
]

_log = Logger()

SPNEGO_OID = "1.3.6.1.5.5.2"
MECHANISMS = {"krb5": KRB5_OID, "spnego": SPNEGO_OID}
_MECHANISM_NAMES = {oid: name for name, oid in MECHANISMS.items()}
_LEVEL_NAMES = {
    "clear": ProtectionLevel.CLEAR,
    "integrity": ProtectionLevel.INTEGRITY,
    "confidentiality": ProtectionLevel.CONFIDENTIALITY,
}
_ABORT = ABORT_FRAME.serialize()
_FRAME_LIMIT = 4 + MAX_TOKEN_LENGTH


def parse_levels(text: str | Sequence[str]) -> tuple[ProtectionLevel, ...]:
    """``"confidentiality,integrity"`` (or a list of names) -> levels in that order."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    levels = []
    for name in names:
        if name not in _LEVEL_NAMES:
            raise ConfigError(f"unknown GSS-API protection level {name!r}; known: clear, integrity, confidentiality")
        levels.append(_LEVEL_NAMES[name])
    if not levels or len(set(levels)) != len(levels):
        raise ConfigError("give one or more distinct GSS-API protection levels")
    return tuple(levels)


def level_name(level: int) -> str:
    for name, value in _LEVEL_NAMES.items():
        if value == level:
            return name
    return f"level {level}"


def token_mechanism(token: bytes) -> str | None:
    """
    The mechanism OID (dotted text) of a GSS-API initial context token
    (RFC 2743 s3.1: ``60 len 06 oidlen oid ...``), or None if it has no such
    header (raw NTLM, for example).
    """
    try:
        if token[0] != 0x60:
            return None
        offset = 1
        length = token[offset]
        offset += 1
        if length & 0x80:
            offset += length & 0x7F
        if token[offset] != 0x06:
            return None
        oid_length = token[offset + 1]
        oid = token[offset + 2: offset + 2 + oid_length]
        if len(oid) != oid_length or oid_length == 0:
            return None
    except IndexError:
        return None
    arcs = [oid[0] // 40, oid[0] % 40]
    value = 0
    for byte in oid[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(arc) for arc in arcs)


def _display_name(name: Any) -> str:
    """A GSS-API name as text; gss-ntlmssp's names end in a NUL, which no log line should carry."""
    return str(name).rstrip("\x00")


def _frame(kind: MessageType, token: bytes) -> bytes:
    return GSSAPIFrame(kind, token).serialize()


class _Stage(enum.Enum):
    CONTEXT = "context establishment"
    ACKNOWLEDGE = "waiting for the server's last context token"
    LEVEL = "protection-level negotiation"
    DONE = "done"


# -- server -------------------------------------------------------------------


@dataclass(frozen=True)
class GSSAPIServerSettings:
    """What `GSSAPIServerFactory` was configured with."""

    service: str = "rcmd"
    keytab: str | None = None
    mechanisms: tuple[str, ...] = ("krb5", "spnego")
    protection: tuple[ProtectionLevel, ...] = (ProtectionLevel.CONFIDENTIALITY, ProtectionLevel.INTEGRITY)
    nec: bool = False
    wrap: str = "auto"


@implementer(IServerAuthenticatorFactory)
class GSSAPIServerFactory:
    """
    Server side of method 0x01; configuration name ``gssapi``.

    :param service: the service name clients must target (``rcmd``, as
        Dante and curl use): the first component of the service principal.
    :param keytab: the keytab with the service's keys (default: the GSS-API
        library's default, KRB5_KTNAME or /etc/krb5.keytab).
    :param mechanisms: ``krb5`` and/or ``spnego``.
    :param protection: levels the server agrees to, most preferred first.
    :param nec: accept the unwrapped level octet of NEC-derived clients.
    :param wrap: who computes the per-message tokens (`WRAP_ENGINES`):
        ``auto`` uses OpenSSL for Kerberos contexts with AES-SHA1 keys
        (`txsocksgss.wire.rfc4121`), ``library`` always the GSS-API
        library.
    :raise ConfigError: when the acceptor credential cannot be acquired.
    """

    method = AuthMethod.GSSAPI
    name = "gssapi"

    def __init__(
        self,
        service: str = "rcmd",
        keytab: str | None = None,
        mechanisms: Sequence[str] = ("krb5", "spnego"),
        protection: Sequence[ProtectionLevel] = (ProtectionLevel.CONFIDENTIALITY, ProtectionLevel.INTEGRITY),
        nec: bool = False,
        wrap: str = "auto",
    ) -> None:
        if wrap not in WRAP_ENGINES:
            raise ConfigError(f"unknown GSS-API wrap engine {wrap!r}; known: {', '.join(WRAP_ENGINES)}")
        for mechanism in mechanisms:
            if mechanism not in MECHANISMS:
                raise ConfigError(f"unknown GSS-API mechanism {mechanism!r}; known: krb5, spnego")
        if not service or "/" in service or "@" in service:
            raise ConfigError(f"GSS-API service name {service!r}: give a bare service name such as rcmd")
        self.settings = GSSAPIServerSettings(service, keytab, tuple(mechanisms), tuple(protection), nec, wrap)
        self.credentials = self._acquire()

    def _acquire(self) -> Any:
        store: Any = {"keytab": self.settings.keytab} if self.settings.keytab else None
        # The keytab is checked through Kerberos alone, which says clearly
        # what is wrong; inquiring SPNEGO credentials instead reaches every
        # installed mechanism, and gss-ntlmssp 1.2 crashes there when the
        # keytab is missing.
        mechs = [gssapi.OID.from_int_seq(MECHANISMS[m]) for m in self.settings.mechanisms]
        try:
            gssapi.Credentials(usage="accept", store=store, mechs=[gssapi.OID.from_int_seq(KRB5_OID)])
            credentials = gssapi.Credentials(usage="accept", store=store, mechs=mechs)
        except GSSError as error:
            where = self.settings.keytab or "the default keytab"
            raise ConfigError(f"cannot use {where} to accept GSS-API contexts: {gss_text(error)}") from None
        return credentials

    def buildAuthenticator(self, session: SessionInfo) -> IServerAuthenticator:
        return _GSSAPIServerConversation(self.settings, self.credentials, session)


@implementer(IServerAuthenticator)
class _GSSAPIServerConversation:
    method = AuthMethod.GSSAPI

    def __init__(self, settings: GSSAPIServerSettings, credentials: Any, session: SessionInfo) -> None:
        self._settings = settings
        self._context: Any = gssapi.SecurityContext(creds=credentials, usage="accept")
        self._buffer = MessageBuffer(limit=_FRAME_LIMIT)
        self._stage = _Stage.CONTEXT
        self._mechanism: str | None = None
        self._service_principal: str | None = None
        self._client_tokens = 0
        self._session = session

    def begin(self) -> AuthStep:
        return AuthStep()

    def abort(self) -> None:
        self._context = None
        self._stage = _Stage.DONE

    def receive(self, data: bytes) -> AuthStep:
        self._buffer.feed(data)
        sent: list[bytes] = []
        try:
            while self._stage is not _Stage.DONE:
                frame = self._buffer.next(parse_gssapi_frame)
                if frame is None:
                    break
                result = self._handle(frame, sent)
                if result is not None:
                    self._stage = _Stage.DONE
                    return AuthStep(b"".join(sent), result, self._buffer.take_all())
        except ProtocolError as error:
            return self._abort(f"malformed GSS-API message: {error}", sent)
        except GSSError as error:
            return self._abort(f"GSS-API error during {self._stage.value}: {gss_text(error)}", sent)
        except _Refused as refusal:
            return self._abort(str(refusal), sent)
        return AuthStep(b"".join(sent))

    def _abort(self, reason: str, sent: list[bytes]) -> AuthStep:
        self._stage = _Stage.DONE
        self._context = None
        return AuthStep(b"".join(sent) + _ABORT, AuthResult.failure(reason))

    def _handle(self, frame: GSSAPIFrame, sent: list[bytes]) -> AuthResult | None:
        if frame.type == MessageType.ABORT:
            raise _Refused("the client aborted the GSS-API subnegotiation")
        if self._stage is _Stage.CONTEXT:
            return self._contextToken(frame, sent)
        return self._levelRequest(frame, sent)

    def _contextToken(self, frame: GSSAPIFrame, sent: list[bytes]) -> AuthResult | None:
        if frame.type != MessageType.AUTHENTICATION:
            raise _Refused(f"expected a context token (MTYP 01), got MTYP {int(frame.type):#04x}")
        if self._mechanism is None:
            oid = token_mechanism(frame.token)
            allowed = {MECHANISMS[m] for m in self._settings.mechanisms}
            if oid not in allowed:
                shown = _MECHANISM_NAMES.get(oid or "", oid or "no mechanism header")
                raise _Refused(f"mechanism {shown} is not allowed (allowed: {', '.join(self._settings.mechanisms)})")
            self._mechanism = _MECHANISM_NAMES[oid]  # type: ignore[index]
        self._client_tokens += 1
        token = self._context.step(frame.token)
        if not self._context.complete:
            if not token:
                raise _Refused("the mechanism wants another round but produced no token")
            sent.append(_frame(MessageType.AUTHENTICATION, token))
            return None
        self._checkEstablished()
        # RFC 1961 s3.6: the last token, or a zero-length one.
        sent.append(_frame(MessageType.AUTHENTICATION, token or b""))
        self._stage = _Stage.LEVEL
        return None

    def _checkEstablished(self) -> None:
        if self._context.mech.dotted_form != KRB5_OID:
            # Only Kerberos names the service principal the client targeted
            # (asking NTLM's context for it crashes gss-ntlmssp 1.2).
            return
        target = str(self._context.target_name)
        self._service_principal = target
        service = target.split("/", 1)[0].split("@", 1)[0]
        if service != self._settings.service:
            raise _Refused(f"the client asked for service {target!r}, this server is {self._settings.service!r}")

    def _deliverable(self) -> list[ProtectionLevel]:
        flags = self._context.actual_flags
        usable = []
        for level in self._settings.protection:
            if level == ProtectionLevel.CONFIDENTIALITY and gssapi.RequirementFlag.confidentiality not in flags:
                continue
            if level == ProtectionLevel.INTEGRITY and gssapi.RequirementFlag.integrity not in flags:
                continue
            usable.append(level)
        return usable

    def _levelRequest(self, frame: GSSAPIFrame, sent: list[bytes]) -> AuthResult:
        if frame.type != MessageType.PROTECTION:
            raise _Refused(f"expected the protection level (MTYP 02), got MTYP {int(frame.type):#04x}")
        nec = self._settings.nec and len(frame.token) == 1
        # Read before unwrap, which rewrites parts of the buffer it is given.
        level_sequence = None if nec else wrap_token_sequence(frame.token)
        octet = frame.token if nec else bytes(self._context.unwrap(frame.token).message)
        if len(octet) != 1:
            raise _Refused(f"the protection-level message holds {len(octet)} octets, not 1")
        requested = octet[0]
        usable = self._deliverable()
        if not usable:
            raise _Refused("no allowed protection level is available with this security context")
        answer = ProtectionLevel(requested) if requested in usable else usable[0]
        answer_octet = bytes([answer])
        token = answer_octet if nec else bytes(self._context.wrap(answer_octet, False).message)
        sent.append(_frame(MessageType.PROTECTION, token))
        principal = _display_name(self._context.initiator_name)
        inner_mechanism = self._context.mech.dotted_form
        # Last use of the context: the OpenSSL codec has the library delete it.
        try:
            protection = (None if answer == ProtectionLevel.CLEAR
                          else _protection(self._context, answer, level_sequence, nec, self._mechanism,
                                           self._settings.wrap))
        except ProtocolError as error:
            raise _Refused(f"cannot protect the session: {error}") from None
        self._context = None
        identity = Identity(
            AuthMethod.GSSAPI,
            principal,
            {
                "realm": principal.rsplit("@", 1)[1] if "@" in principal else "",
                "mechanism": self._mechanism,
                "protection": level_name(answer),
                "requested_protection": level_name(requested),
                "service": self._service_principal,
                "inner_mechanism": inner_mechanism,
                "context_tokens": self._client_tokens,
                "nec": nec,
                "wrap_engine": protection.engine if protection else None,
            },
        )
        _log.info(
            "GSS-API: {principal} authenticated with {mechanism} after {tokens} client tokens, "
            "asked for {requested}, agreed {agreed}",
            principal=principal,
            tokens=self._client_tokens,
            mechanism=self._mechanism,
            requested=level_name(requested),
            agreed=level_name(answer),
        )
        return AuthResult.success(identity, protection)


def _protection(context: Any, level: ProtectionLevel, level_sequence: int | None, nec: bool,
                mechanism: str | None, wrap: str) -> GSSAPIStreamProtection:
    """The stream protection once the level is agreed (`_next_peer_sequence` tells the codec where the peer is)."""
    return GSSAPIStreamProtection(context, level, _next_peer_sequence(level_sequence, nec, mechanism), wrap)


def _next_peer_sequence(level_sequence: int | None, nec: bool, mechanism: str | None) -> PeerSequence:
    """
    The sequence number of the peer's next token: one more than that of
    its level message.  With NEC there is none: the peer's first number
    (None), except under SPNEGO, whose mechListMIC tokens may have used
    numbers nobody counted (`UNCOUNTED`); and a level message that is not
    an RFC 4121 token tells nothing either.
    """
    if nec:
        return UNCOUNTED if mechanism == "spnego" else None
    if level_sequence is None:
        return UNCOUNTED
    return level_sequence + 1


class _Refused(Exception):
    """The server refuses the subnegotiation; the text says why (for the log)."""


# -- client -------------------------------------------------------------------


def _run_in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)


@implementer(IClientAuthenticatorFactory)
class GSSAPIClientFactory:
    """
    Client side of method 0x01.

    :param host: the proxy's host name for the target name ``service@host``
        (default: the address the connection reached).
    :param service: the service name (default ``rcmd``).
    :param principal: a full target principal (``rcmd/proxy.example@REALM``)
        instead of ``service@host``.
    :param mechanism: ``krb5`` (default) or ``spnego``.
    :param ccache: a credential cache (``FILE:/path`` or a path; default:
        KRB5CCNAME / the library default).
    :param level: the protection level to request.
    :param accept: levels accepted in the server's answer (default: only
        ``level``); any other answer ends the handshake.
    :param nec: send the level octet unwrapped (NEC-derived servers).
    :param delegate: request credential delegation (off by default; see the
        module docstring).
    :param credentials: a ``gssapi.Credentials`` to initiate with (instead of
        ``ccache``), e.g. acquired from a client keytab or for one mechanism.
    :param runner: runs blocking GSS-API calls (default: a reactor thread).
    :param wrap: who computes the per-message tokens, as for
        `GSSAPIServerFactory`: ``auto`` or ``library``.
    """

    method = AuthMethod.GSSAPI

    def __init__(
        self,
        host: str | None = None,
        service: str = "rcmd",
        principal: str | None = None,
        mechanism: str = "krb5",
        ccache: str | None = None,
        level: ProtectionLevel = ProtectionLevel.CONFIDENTIALITY,
        accept: Sequence[ProtectionLevel] | None = None,
        nec: bool = False,
        delegate: bool = False,
        credentials: Any = None,
        runner: Callable[..., Deferred[Any]] | None = None,
        wrap: str = "auto",
    ) -> None:
        if wrap not in WRAP_ENGINES:
            raise ConfigError(f"unknown GSS-API wrap engine {wrap!r}; known: {', '.join(WRAP_ENGINES)}")
        if mechanism not in MECHANISMS:
            raise ConfigError(f"unknown GSS-API mechanism {mechanism!r}; known: krb5, spnego")
        self.host = host
        self.service = service
        self.principal = principal
        self.mechanism = mechanism
        self.ccache = ccache
        self.level = ProtectionLevel(level)
        self.accept = tuple(accept) if accept else (self.level,)
        self.nec = nec
        self.delegate = delegate
        self.credentials = credentials
        self.runner = runner or _run_in_thread
        self.wrap = wrap

    def __repr__(self) -> str:
        return f"<GSSAPIClientFactory {self.targetDescription(None)} {self.mechanism} {level_name(self.level)}>"

    def targetDescription(self, session: SessionInfo | None) -> str:
        if self.principal:
            return self.principal
        host = self.host or (session.server_name if session else None) or (
            session.server[0] if session and session.server else "?")
        return f"{self.service}@{host}"

    def buildAuthenticator(self, session: SessionInfo) -> IClientAuthenticator:
        return _GSSAPIClientConversation(self, session)


@implementer(IClientAuthenticator)
class _GSSAPIClientConversation:
    method = AuthMethod.GSSAPI

    def __init__(self, settings: GSSAPIClientFactory, session: SessionInfo) -> None:
        self._settings = settings
        self._target = settings.targetDescription(session)
        self._buffer = MessageBuffer(limit=_FRAME_LIMIT)
        self._stage = _Stage.CONTEXT
        self._context: Any = None

    def _makeContext(self) -> Any:
        settings = self._settings
        if settings.principal:
            name = gssapi.Name(settings.principal, gssapi.NameType.kerberos_principal)
        else:
            name = gssapi.Name(self._target, gssapi.NameType.hostbased_service)
        flags = (
            gssapi.RequirementFlag.mutual_authentication
            | gssapi.RequirementFlag.replay_detection
            | gssapi.RequirementFlag.out_of_sequence_detection
            | gssapi.RequirementFlag.integrity
            | gssapi.RequirementFlag.confidentiality
        )
        if settings.delegate:
            flags |= gssapi.RequirementFlag.delegate_to_peer
        credentials = settings.credentials
        if credentials is None and settings.ccache:
            ccache = settings.ccache if ":" in settings.ccache else f"FILE:{settings.ccache}"
            credentials = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
        mech = gssapi.OID.from_int_seq(MECHANISMS[settings.mechanism])
        return gssapi.SecurityContext(name=name, creds=credentials, mech=mech, flags=flags, usage="initiate")

    def begin(self) -> Deferred[AuthStep]:
        def first() -> bytes:
            self._context = self._makeContext()
            return bytes(self._context.step() or b"")

        d = self._settings.runner(first)
        d.addCallback(self._afterStep)
        d.addErrback(self._failed)
        return d

    def abort(self) -> None:
        self._stage = _Stage.DONE
        self._context = None

    def receive(self, data: bytes) -> AuthStep | Deferred[AuthStep]:
        self._buffer.feed(data)
        try:
            frame = self._buffer.next(parse_gssapi_frame)
        except ProtocolError as error:
            return self._fail(f"malformed GSS-API message from the proxy: {error}")
        if frame is None:
            return AuthStep()
        if len(self._buffer) and self._stage is not _Stage.LEVEL:
            # The server speaks only after we do: more frames are a protocol error.
            return self._fail("the proxy sent more than one GSS-API message at a time")
        if frame.type == MessageType.ABORT:
            return self._fail(f"the proxy refused GSS-API authentication for {self._target}")
        if self._stage is _Stage.CONTEXT:
            if frame.type != MessageType.AUTHENTICATION:
                return self._fail(f"expected a context token, got MTYP {int(frame.type):#04x}")
            d = self._settings.runner(lambda: bytes(self._context.step(frame.token) or b""))
            d.addCallback(self._afterStep)
            d.addErrback(self._failed)
            return d
        if self._stage is _Stage.ACKNOWLEDGE:
            if frame.type != MessageType.AUTHENTICATION:
                return self._fail(f"expected the proxy's last context token, got MTYP {int(frame.type):#04x}")
            return self._requestLevel()
        if self._stage is _Stage.LEVEL:
            return self._levelAnswer(frame)
        return self._fail("GSS-API message after the end of the subnegotiation")

    def _afterStep(self, token: bytes) -> AuthStep:
        if self._stage is _Stage.DONE:
            return AuthStep(result=AuthResult.failure("cancelled"))
        if not self._context.complete:
            if not token:
                return self._fail("the mechanism wants another round but produced no token")
            return AuthStep(_frame(MessageType.AUTHENTICATION, token))
        if gssapi.RequirementFlag.mutual_authentication not in self._context.actual_flags:
            return self._fail("the proxy did not authenticate itself (no mutual authentication)")
        if token:
            # RFC 1961 s3.3: send it, then the server answers (usually with a zero-length token).
            self._stage = _Stage.ACKNOWLEDGE
            return AuthStep(_frame(MessageType.AUTHENTICATION, token))
        return self._requestLevel()

    def _requestLevel(self) -> AuthStep:
        level = self._settings.level
        flags = self._context.actual_flags
        if level == ProtectionLevel.CONFIDENTIALITY and gssapi.RequirementFlag.confidentiality not in flags:
            return self._fail("the security context cannot provide confidentiality")
        octet = bytes([level])
        token = octet if self._settings.nec else bytes(self._context.wrap(octet, False).message)
        self._stage = _Stage.LEVEL
        return AuthStep(_frame(MessageType.PROTECTION, token))

    def _levelAnswer(self, frame: GSSAPIFrame) -> AuthStep:
        if frame.type != MessageType.PROTECTION:
            return self._fail(f"expected the proxy's protection level, got MTYP {int(frame.type):#04x}")
        # Read before unwrap, which rewrites parts of the buffer it is given.
        level_sequence = None if self._settings.nec else wrap_token_sequence(frame.token)
        try:
            octet = frame.token if self._settings.nec else bytes(self._context.unwrap(frame.token).message)
        except GSSError as error:
            return self._fail(f"the proxy's protection-level message failed to verify: {gss_text(error)}")
        if len(octet) != 1:
            return self._fail(f"the proxy's protection-level message holds {len(octet)} octets")
        answer = octet[0]
        if answer not in self._settings.accept:
            accepted = ", ".join(level_name(level) for level in self._settings.accept)
            return self._fail(f"the proxy agreed to {level_name(answer)}, which is not acceptable ({accepted})")
        level = ProtectionLevel(answer)
        principal = _display_name(self._context.initiator_name)
        identity = Identity(
            AuthMethod.GSSAPI,
            principal,
            {
                "mechanism": self._settings.mechanism,
                "protection": level_name(level),
                "service": self._target,
            },
        )
        try:
            protection = (None if level == ProtectionLevel.CLEAR
                          else _protection(self._context, level, level_sequence, self._settings.nec,
                                           self._settings.mechanism, self._settings.wrap))
        except ProtocolError as error:
            return self._fail(f"cannot protect the session: {error}")
        self._context = None
        self._stage = _Stage.DONE
        return AuthStep(result=AuthResult.success(identity, protection), unused=self._buffer.take_all())

    def _fail(self, reason: str) -> AuthStep:
        self._stage = _Stage.DONE
        self._context = None
        return AuthStep(result=AuthResult.failure(reason))

    def _failed(self, failure: Any) -> AuthStep:
        if failure.check(GSSError):
            return self._fail(f"GSS-API error for {self._target}: {gss_text(failure.value)}")
        return failure  # type: ignore[no-any-return]
