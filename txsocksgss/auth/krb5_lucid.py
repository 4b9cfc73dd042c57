"""
The keys and sequence numbers of an established Kerberos context, taken
from python-gssapi for the pure RFC 4121 codec (`txsocksgss.wire.rfc4121`).

How: once the protection level is agreed, the context's enctype is asked
with ``gss_inquire_sec_context_by_oid(GSS_C_INQ_SSPI_SESSION_KEY)``, and a
context whose key the codec takes (aes128/aes256-cts-hmac-sha1-96) is
exported as a "lucid" context (``gss_krb5_export_lucid_sec_context``),
which gives its keys, role, sequence numbers and end time.  The library
deletes the context at that moment, so from then on the codec alone
protects the session and keeps the sequence numbers.

Both calls are extensions of python-gssapi (``gssapi.raw.ext_ggf`` and
``gssapi.raw.ext_krb5``) that a build may lack: then no context is
exported, and every session stays with the library's gss_wrap.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from gssapi.exceptions import GSSError
from gssapi.raw.oids import OID

from txsocksgss.wire.rfc4121 import KEY_LENGTHS, KerberosWrapCodec, TokenRejected

__all__ = ["KRB5_OID", "session_enctype", "codec_from_context"]

#: The Kerberos 5 mechanism (RFC 1964 s1).
KRB5_OID = "1.2.840.113554.1.2.2"

# gss_inquire_sec_context_by_oid(GSS_C_INQ_SSPI_SESSION_KEY) answers the key
# and an OID naming its enctype: 1.2.840.113554.1.2.2.4.<enctype>.
_SSPI_SESSION_KEY_OID = "1.2.840.113554.1.2.2.5.5"
_ENCTYPE_OID_PREFIX = bytes.fromhex("2a864886f71201020204")
# MIT's lucid context structure, version 1 (gss_krb5_lucid_context_v1_t);
# its protocol 1 means CFX, the tokens of RFC 4121.
_LUCID_VERSION = 1
_LUCID_PROTOCOL_CFX = 1

_extensions: tuple[Callable[..., Any], Callable[..., Any]] | None
try:  # optional parts of python-gssapi: both, or the library keeps every context
    from gssapi.raw import inquire_sec_context_by_oid
    from gssapi.raw.ext_krb5 import krb5_export_lucid_sec_context
except ImportError:
    _extensions = None
else:
    _extensions = (inquire_sec_context_by_oid, krb5_export_lucid_sec_context)


def session_enctype(context: Any) -> int | None:
    """The enctype of an established Kerberos context's protection key, or None (not Kerberos, or not told)."""
    if _extensions is None:
        return None
    inquire, _ = _extensions
    try:
        if context.mech.dotted_form != KRB5_OID:
            return None
        answer = inquire(context, OID.from_int_seq(_SSPI_SESSION_KEY_OID))
    except (GSSError, AttributeError, NotImplementedError):
        return None
    if len(answer) != 2 or not answer[1].startswith(_ENCTYPE_OID_PREFIX):
        return None
    encoded = answer[1][len(_ENCTYPE_OID_PREFIX):]
    if len(encoded) != 1 or encoded[0] & 0x80:
        return None
    return int(encoded[0])


def codec_from_context(
    context: Any, next_peer_sequence: int | None, clock: Callable[[], float] = time.time
) -> KerberosWrapCodec | None:
    """
    A `KerberosWrapCodec` for an established python-gssapi context when it
    is Kerberos (directly or under SPNEGO) with an AES-SHA1 key, else None
    and the context is left as it was.  On success the library has deleted
    ``context``: it must not be used again.

    :param next_peer_sequence: the sequence number the peer's next token
        must carry: one more than that of the last per-message token of the
        peer the library processed (the header of a Wrap token tells it,
        `txsocksgss.wire.rfc4121.wrap_token_sequence`); None when the
        library processed none, and then it is the first the peer uses,
        which the lucid context tells.  (MIT's lucid context reports only
        that first one: its replay window is internal.  SPNEGO's
        mechListMIC uses numbers too, so counting tokens is not enough.)
    :raise TokenRejected: the export succeeded (the library context is
        gone) but its content cannot be used.
    """
    if _extensions is None:
        return None
    _, export = _extensions
    if session_enctype(context) not in KEY_LENGTHS:
        return None
    try:
        lucid: Any = export(context, _LUCID_VERSION)
    except GSSError:
        return None
    keys = lucid.cfx_kd
    if lucid.protocol != _LUCID_PROTOCOL_CFX or keys is None:
        raise TokenRejected("the exported Kerberos context is not an RFC 4121 context")
    if keys.acceptor_subkey:
        key, key_type, subkey = bytes(keys.acceptor_subkey), keys.acceptor_subkey_type, True
    else:
        key, key_type, subkey = bytes(keys.ctx_key), keys.ctx_key_type, False
    first = lucid.recv_seq if next_peer_sequence is None else next_peer_sequence
    if first < lucid.recv_seq:
        raise TokenRejected(f"the peer's next sequence number {first} is before its first, {lucid.recv_seq}")
    try:
        return KerberosWrapCodec(
            key,
            key_type,
            initiator=bool(lucid.is_initiator),
            acceptor_subkey=subkey,
            send_seq=lucid.send_seq,
            recv_seq=first,
            endtime=lucid.endtime,
            clock=clock,
        )
    except ValueError as error:
        raise TokenRejected(f"the exported Kerberos context cannot be used: {error}") from None
