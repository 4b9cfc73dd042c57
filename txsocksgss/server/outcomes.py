"""
How a session ended, as values: an `Outcome` is a kind (`OutcomeKind`) and
a detail; it renders the text of the session line (``outcome=...``) and
gives the metrics their labels (`OutcomeClass`, `AuthFailureReason`)
without anyone reading the text back.  Rewording a kind's text changes
the log only; the labels come from the kind.

The one place that still classifies text is `classify_auth_failure`: an
authenticator reports why it refused as a sentence
(`txsocksgss.auth.conversation.AuthResult.reason`), and the metrics' reason
label is derived from it here, once, when the outcome is made.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from txsocksgss.wire.socks5 import ReplyCode

__all__ = [
    "AuthFailureReason",
    "Outcome",
    "OutcomeClass",
    "OutcomeKind",
    "classify_auth_failure",
    "CLIENT_CLOSED",
    "CLOSED",
    "IDLE_TIMEOUT",
    "UPSTREAM_CLOSED",
]


class OutcomeClass(enum.Enum):
    """The values of the ``outcome`` label of ``socksgss_sessions_total``."""

    CLOSED = "closed"                        # a tunnel or association ended normally (either side closed)
    IDLE_TIMEOUT = "idle_timeout"
    SHUTDOWN = "shutdown"                    # closed by the server stopping
    RESET = "reset"                          # the zero-copy relay saw a connection reset
    CLIENT_ABORTED = "client_aborted"        # the client left before the reply
    AUTH_FAILED = "auth_failed"
    DENIED = "denied"                        # the access rules refused the request
    TIMEOUT = "timeout"                      # negotiation timeout, BIND wait timeout
    DESTINATION_ERROR = "destination_error"  # the destination could not be reached (the reply code says why)
    PROTOCOL_ERROR = "protocol_error"        # malformed or unexpected input, protection failure
    ERROR = "error"                          # anything else


class AuthFailureReason(enum.Enum):
    """The values of the ``reason`` label of ``socksgss_auth_failures_total``."""

    NO_ACCEPTABLE_METHOD = "no_acceptable_method"
    BAD_CREDENTIALS = "bad_credentials"
    MALFORMED = "malformed"
    MECHANISM = "mechanism"  # a GSS-API or MAF failure other than the above
    IDENT = "ident"          # SOCKS 4 ident check refused the request
    TIMEOUT = "timeout"
    ERROR = "error"          # the authenticator or the checker crashed
    OTHER = "other"


class OutcomeKind(enum.Enum):
    """
    Each way a session ends: the text of its session line (``{}`` is the
    detail), its metrics class and, for an authentication failure, its
    reason (None: not one; `AUTH_FAILED` takes its reason from the detail).
    """

    CLOSED = ("closed", OutcomeClass.CLOSED, None)
    CLIENT_CLOSED = ("client closed", OutcomeClass.CLOSED, None)
    UPSTREAM_CLOSED = ("upstream closed", OutcomeClass.CLOSED, None)
    CONTROL_CLOSED = ("client closed the control connection", OutcomeClass.CLOSED, None)
    CLIENT_GONE = ("client closed during negotiation", OutcomeClass.CLIENT_ABORTED, None)
    IDLE_TIMEOUT = ("idle timeout", OutcomeClass.IDLE_TIMEOUT, None)
    SHUTDOWN = ("server shutdown", OutcomeClass.SHUTDOWN, None)
    RESET = ("reset ({})", OutcomeClass.RESET, None)
    NO_ACCEPTABLE_METHOD = ("no acceptable method (client offered {})", OutcomeClass.AUTH_FAILED,
                            AuthFailureReason.NO_ACCEPTABLE_METHOD)
    AUTH_FAILED = ("authentication failed: {}", OutcomeClass.AUTH_FAILED, None)
    AUTH_ERROR = ("authentication error", OutcomeClass.AUTH_FAILED, AuthFailureReason.ERROR)
    AUTH_TIMEOUT = ("negotiation timeout in authenticating", OutcomeClass.AUTH_FAILED, AuthFailureReason.TIMEOUT)
    AUTH_TOO_MUCH_DATA = ("client sent too much data during authentication", OutcomeClass.AUTH_FAILED,
                          AuthFailureReason.MALFORMED)
    IDENT_REFUSED = ("ident: {}", OutcomeClass.AUTH_FAILED, AuthFailureReason.IDENT)
    DENIED = ("denied by {}", OutcomeClass.DENIED, None)
    NEGOTIATION_TIMEOUT = ("negotiation timeout in {}", OutcomeClass.TIMEOUT, None)
    COMMAND_TIMEOUT = ("negotiation timeout while {}", OutcomeClass.TIMEOUT, None)
    BIND_TIMEOUT = ("BIND: nobody connected in time", OutcomeClass.TIMEOUT, None)
    BAD_REQUEST = ("bad request: {}", OutcomeClass.PROTOCOL_ERROR, None)
    PROTOCOL_ERROR = ("protocol error in {}", OutcomeClass.PROTOCOL_ERROR, None)
    SOCKS4_DISABLED = ("SOCKS 4 request, but SOCKS 4 is not enabled (--method socks4)",
                       OutcomeClass.PROTOCOL_ERROR, None)
    TOO_MUCH_EARLY_DATA = ("client sent too much data before the reply", OutcomeClass.PROTOCOL_ERROR, None)
    PROTECTION_FAILURE = ("protection failure: {}", OutcomeClass.PROTOCOL_ERROR, None)
    DESTINATION_FAILED = ("{}", OutcomeClass.DESTINATION_ERROR, None)
    COMMAND_ERROR = ("{}", OutcomeClass.ERROR, None)

    def __init__(self, text: str, outcome_class: OutcomeClass, reason: AuthFailureReason | None) -> None:
        self.text = text
        self.outcome_class = outcome_class
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    """
    How one session ended: ``kind`` and its ``detail`` (what the kind's
    text leaves open: an error message, a rule, a state).  ``str()`` is the
    session line's text.  Make them with the class methods where the
    detail is built from parts.
    """

    kind: OutcomeKind
    detail: str = ""
    #: For AUTH_FAILED: the reason class of the authenticator's sentence.
    reason: AuthFailureReason | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.kind.text.format(self.detail) if "{}" in self.kind.text else self.kind.text

    @property
    def outcome_class(self) -> OutcomeClass:
        return self.kind.outcome_class

    @property
    def auth_failure_reason(self) -> AuthFailureReason | None:
        """The reason label when the session failed to authenticate, else None."""
        return self.reason if self.reason is not None else self.kind.reason

    @classmethod
    def auth_failed(cls, reason: str) -> "Outcome":
        """An authenticator refused, saying ``reason``."""
        return cls(OutcomeKind.AUTH_FAILED, reason, classify_auth_failure(reason))

    @classmethod
    def negotiation_timeout(cls, state: str) -> "Outcome":
        """The negotiation deadline passed in ``state`` (a `SessionState` value)."""
        if state == "authenticating":
            return cls(OutcomeKind.AUTH_TIMEOUT)
        return cls(OutcomeKind.NEGOTIATION_TIMEOUT, state)

    @classmethod
    def protocol_error(cls, state: str, error: object) -> "Outcome":
        """Malformed input in ``state``."""
        return cls(OutcomeKind.PROTOCOL_ERROR, f"{state}: {error}")

    @classmethod
    def destination_failed(cls, code: ReplyCode, message: str) -> "Outcome":
        """The destination could not be reached: the reply ``code`` sent, and why."""
        return cls(OutcomeKind.DESTINATION_FAILED, f"{code.name.lower().replace('_', ' ')}: {message}")


def classify_auth_failure(reason: str) -> AuthFailureReason:
    """The reason class of an authenticator's refusal (`AuthResult.reason`)."""
    if "bad user name or password" in reason:
        return AuthFailureReason.BAD_CREDENTIALS
    if "malformed" in reason or "not UTF-8" in reason:
        return AuthFailureReason.MALFORMED
    if reason.startswith("password check for"):
        return AuthFailureReason.ERROR
    if "GSS-API" in reason or reason.startswith("MAF") or "sub-method" in reason:
        return AuthFailureReason.MECHANISM
    return AuthFailureReason.OTHER


#: The outcomes a tunnel ends with most often, made once.
CLOSED = Outcome(OutcomeKind.CLOSED)
CLIENT_CLOSED = Outcome(OutcomeKind.CLIENT_CLOSED)
UPSTREAM_CLOSED = Outcome(OutcomeKind.UPSTREAM_CLOSED)
IDLE_TIMEOUT = Outcome(OutcomeKind.IDLE_TIMEOUT)
