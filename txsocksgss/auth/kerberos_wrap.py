"""
RFC 4121 Wrap tokens of Kerberos contexts with AES-SHA1 keys, made and
checked by OpenSSL.

Why: Debian's MIT Kerberos library does its AES and HMAC-SHA1 with its own
built-in code, at about 155 MB/s for a confidentiality wrap on this kind of
machine, where OpenSSL (AES-NI, SHA extensions) does AES-256-CBC at about
1 GB/s and HMAC-SHA1 at about 1.9 GB/s.  A protected tunnel spends nearly
all its time there.

How: once the protection level is agreed, the established context is
exported as a "lucid" context (``gss_krb5_export_lucid_sec_context``),
which gives its keys and sequence numbers; the library deletes the context
at that moment, so from then on this codec alone protects the session and
keeps the sequence numbers.  Only RFC 4121 ("CFX") contexts whose key is
aes128-cts-hmac-sha1-96 or aes256-cts-hmac-sha1-96 (RFC 3962, enctypes 17
and 18: MIT's default) take this path; `codec_from_context` answers None for
anything else (another enctype, SPNEGO over NTLM) and the caller keeps using
the library's ``gss_wrap``.  The tokens are the library's, byte for byte in
layout; tests check them against MIT's own wrap and unwrap both ways.

The pieces (RFC 3961 s5.1 n-fold, s5.3 DK key derivation; RFC 3962 AES in
CBC mode with ciphertext stealing and HMAC-SHA1-96; RFC 4121 s4.2.4 Wrap
token layout and key usages) are small and are each a handful of calls
into OpenSSL per token: no Python loop touches the bytes of a message.

Receiving is strict: the token's direction flag must be the peer's, the
MAC is compared in constant time before anything else is believed, a
sealed token's encrypted copy of the header must match the header, and
sequence numbers are checked after the MAC: a stream token must be the
next one (a token removed from the stream is detected), datagrams may
arrive out of order within a window of 64 but never twice.  Datagrams and
the stream share the numbers (RFC 1961 wraps both with the one context),
and a lost datagram leaves a gap nobody can tell from a removed token:
once datagrams have come, a stream token need only be newer than every
token seen.  In a UDP association the TCP connection carries nothing after
the reply (both our server and our client ignore anything there), so this
costs no protection in practice.
"""

from __future__ import annotations

import hmac
import os
import time
from functools import cached_property, lru_cache
from math import gcd
from typing import Any, Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "KerberosWrapCodec",
    "TokenRejected",
    "codec_from_context",
    "wrap_token_sequence",
    "n_fold",
    "derive_key",
    "cts_encrypt",
    "cts_decrypt",
    "ENCTYPE_AES128_CTS_HMAC_SHA1_96",
    "ENCTYPE_AES256_CTS_HMAC_SHA1_96",
]

ENCTYPE_AES128_CTS_HMAC_SHA1_96 = 17
ENCTYPE_AES256_CTS_HMAC_SHA1_96 = 18
_KEY_LENGTHS = {ENCTYPE_AES128_CTS_HMAC_SHA1_96: 16, ENCTYPE_AES256_CTS_HMAC_SHA1_96: 32}

# RFC 4121 s2: key usage numbers of Wrap tokens.
KG_USAGE_ACCEPTOR_SEAL = 22
KG_USAGE_INITIATOR_SEAL = 24

# RFC 4121 s4.2.2: the Flags octet.
FLAG_SENT_BY_ACCEPTOR = 0x01
FLAG_SEALED = 0x02
FLAG_ACCEPTOR_SUBKEY = 0x04

TOK_ID_WRAP = b"\x05\x04"
FILLER = 0xFF
HEADER_LENGTH = 16
CONFOUNDER_LENGTH = 16  # the AES block size
CHECKSUM_LENGTH = 12  # HMAC-SHA1-96
BLOCK = 16
SEQUENCE_WINDOW = 64

# gss_inquire_sec_context_by_oid(GSS_C_INQ_SSPI_SESSION_KEY) answers the key
# and an OID naming its enctype: 1.2.840.113554.1.2.2.4.<enctype>.
_SSPI_SESSION_KEY_OID = "1.2.840.113554.1.2.2.5.5"
_ENCTYPE_OID_PREFIX = bytes.fromhex("2a864886f71201020204")
KRB5_OID = "1.2.840.113554.1.2.2"


class TokenRejected(Exception):
    """A received Wrap token is malformed, forged, replayed or out of order, or the context has expired."""


# -- RFC 3961 / 3962 building blocks -------------------------------------------


@lru_cache(maxsize=64)  # the same few usage constants, for every session
def n_fold(data: bytes, size: int) -> bytes:
    """RFC 3961 s5.1: stretch or fold ``data`` to ``size`` bytes."""
    if not data or size <= 0:
        raise ValueError("n-fold needs some input and a positive size")
    in_bits = len(data) * 8
    total = len(data) * size // gcd(len(data), size)
    value = int.from_bytes(data, "big")
    everything = 0
    for copy in range(total // len(data)):
        shift = (13 * copy) % in_bits
        rotated = ((value >> shift) | (value << (in_bits - shift))) & ((1 << in_bits) - 1)
        everything = (everything << in_bits) | rotated
    out_bits = size * 8
    mask = (1 << out_bits) - 1
    result = 0
    for chunk in range(total // size - 1, -1, -1):
        result += (everything >> (chunk * out_bits)) & mask
    while result >> out_bits:  # ones'-complement addition: carry wraps around
        result = (result & mask) + (result >> out_bits)
    return result.to_bytes(size, "big")


def derive_key(key: bytes, constant: bytes) -> bytes:
    """RFC 3961 s5.3 DK for the AES enctypes (random-to-key is the identity)."""
    block = constant if len(constant) == BLOCK else n_fold(constant, BLOCK)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    derived = b""
    while len(derived) < len(key):
        block = encryptor.update(block)
        derived += block
    return derived[: len(key)]


_ZERO_IV = bytes(BLOCK)


def cts_encrypt(cipher: Cipher[Any], plaintext: bytes | memoryview) -> bytes:
    """
    RFC 3962 s5: CBC with a zero IV and ciphertext stealing (the last two
    blocks swapped, the final one cut to the length of the last piece).
    ``cipher`` is AES in CBC mode with a zero IV; ``plaintext`` is at least
    one block.
    """
    view = memoryview(plaintext)
    size = len(view)
    if size < BLOCK:
        raise ValueError("AES-CTS needs at least one block")
    encryptor = cipher.encryptor()
    if size == BLOCK:
        return encryptor.update(view)
    tail = size % BLOCK or BLOCK
    head = size - tail
    front = memoryview(encryptor.update(view[:head]))
    last = encryptor.update(bytes(view[head:]) + bytes(BLOCK - tail))
    return b"".join((front[: head - BLOCK], last, front[head - BLOCK: head - BLOCK + tail]))


def cts_decrypt(cipher: Cipher[Any], block_decryptor: Cipher[Any], ciphertext: bytes | memoryview) -> bytes:
    """The inverse of `cts_encrypt`; ``block_decryptor`` is the same key in ECB mode."""
    view = memoryview(ciphertext)
    size = len(view)
    if size < BLOCK:
        raise ValueError("AES-CTS needs at least one block")
    if size == BLOCK:
        return cipher.decryptor().update(view)
    tail = size % BLOCK or BLOCK
    stolen = size - tail - BLOCK  # where the swapped full block starts
    decrypted_last = block_decryptor.decryptor().update(view[stolen: stolen + BLOCK])
    partial = bytes(view[stolen + BLOCK:])
    last_plain = _xor(decrypted_last[:tail], partial)
    previous = partial + decrypted_last[tail:]
    decryptor = cipher.decryptor()
    return b"".join((decryptor.update(view[:stolen]), decryptor.update(previous), last_plain))


def _xor(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


class _UsageKeys:
    """
    The keys of one direction's Wrap tokens, all derived for its SEAL usage
    (RFC 4121 s2: the SIGN usages are for MIC tokens): Ke and Ki for sealed
    tokens (0xAA, 0x55), Kc for the checksum of signed ones (0x99).  Each
    is derived on first use: a session at one level needs only its own.
    """

    def __init__(self, key: bytes, usage: int) -> None:
        self._key = key
        self._usage = usage.to_bytes(4, "big")

    @cached_property
    def _encryption_key(self) -> bytes:
        return derive_key(self._key, self._usage + b"\xaa")

    @cached_property
    def integrity_key(self) -> bytes:
        return derive_key(self._key, self._usage + b"\x55")

    @cached_property
    def checksum_key(self) -> bytes:
        return derive_key(self._key, self._usage + b"\x99")

    @cached_property
    def cbc(self) -> Cipher[Any]:
        return Cipher(algorithms.AES(self._encryption_key), modes.CBC(_ZERO_IV))

    @cached_property
    def ecb(self) -> Cipher[Any]:
        return Cipher(algorithms.AES(self._encryption_key), modes.ECB())


def _mac(key: bytes, *pieces: bytes | memoryview) -> bytes:
    digest = hmac.new(key, pieces[0], "sha1")
    for piece in pieces[1:]:
        digest.update(piece)
    return digest.digest()[:CHECKSUM_LENGTH]


# -- the codec -----------------------------------------------------------------


class _ReceivedSequence:
    """Which sequence numbers were accepted: the highest, and a window of 64 below it."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.highest = first - 1
        self.seen = 0  # bit i: highest - i was accepted
        self.datagrams = False

    def problem(self, number: int, stream: bool) -> str | None:
        if number < self.first:
            return f"sequence number {number} is from before this session ({self.first})"
        if stream and not self.datagrams and number != self.highest + 1:
            what = "repeated or out of order" if number <= self.highest else "skips tokens"
            return f"stream token {number} {what}: expected {self.highest + 1}"
        if number > self.highest:
            return None
        age = self.highest - number
        if stream or age >= SEQUENCE_WINDOW:
            return f"token {number} is too old (newest {self.highest})"
        if self.seen >> age & 1:
            return f"token {number} was already received"
        return None

    def accept(self, number: int, stream: bool) -> None:
        if not stream:
            self.datagrams = True
        if number > self.highest:
            shift = number - self.highest
            self.seen = ((self.seen << shift) | 1) & ((1 << SEQUENCE_WINDOW) - 1) if shift < SEQUENCE_WINDOW else 1
            self.highest = number
        else:
            self.seen |= 1 << (self.highest - number)


class KerberosWrapCodec:
    """
    Wrap and unwrap RFC 4121 tokens for one side of one security context.

    :param key: the key tokens are protected with (the acceptor's subkey
        when it asserted one, else the context key).
    :param enctype: 17 or 18.
    :param initiator: whether this side initiated the context.
    :param acceptor_subkey: whether ``key`` is the acceptor's subkey (the
        AcceptorSubkey flag of every token).
    :param send_seq: the sequence number of the next token sent.
    :param recv_seq: the sequence number of the first token expected.
    :param endtime: when the context expires (seconds since the epoch).
    :param clock: the time now (`time.time`).
    """

    engine = "openssl"
    #: When the context expires (seconds since the epoch): no token is made
    #: or accepted after it.
    endtime: float

    def __init__(
        self,
        key: bytes,
        enctype: int,
        *,
        initiator: bool,
        acceptor_subkey: bool,
        send_seq: int,
        recv_seq: int,
        endtime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if _KEY_LENGTHS.get(enctype) != len(key):
            raise ValueError(f"not an AES-SHA1 key: enctype {enctype}, {len(key)} bytes")
        if initiator:
            self._send = _UsageKeys(key, KG_USAGE_INITIATOR_SEAL)
            self._receive = _UsageKeys(key, KG_USAGE_ACCEPTOR_SEAL)
        else:
            self._send = _UsageKeys(key, KG_USAGE_ACCEPTOR_SEAL)
            self._receive = _UsageKeys(key, KG_USAGE_INITIATOR_SEAL)
        subkey_flag = FLAG_ACCEPTOR_SUBKEY if acceptor_subkey else 0
        self._send_flags = subkey_flag | (0 if initiator else FLAG_SENT_BY_ACCEPTOR)
        self._receive_flags = subkey_flag | (FLAG_SENT_BY_ACCEPTOR if initiator else 0)
        self.enctype = enctype
        self._send_seq = send_seq
        self._received = _ReceivedSequence(recv_seq)
        self.endtime = endtime
        self._clock = clock

    @staticmethod
    def wrap_size_limit(max_token: int, conf: bool) -> int:
        """The most plaintext that fits in a token of ``max_token`` bytes."""
        overhead = HEADER_LENGTH + CHECKSUM_LENGTH + (CONFOUNDER_LENGTH + HEADER_LENGTH if conf else 0)
        return max(0, max_token - overhead)

    def _check_time(self) -> None:
        if self._clock() > self.endtime:
            raise TokenRejected("the security context has expired")

    def wrap(self, data: bytes | memoryview, conf: bool) -> bytes:
        """One Wrap token of ``data``: sealed (encrypted) when ``conf``, else signed."""
        self._check_time()
        number = self._send_seq
        self._send_seq = (number + 1) & 0xFFFFFFFFFFFFFFFF
        sequence = number.to_bytes(8, "big")
        keys = self._send
        if conf:
            header = bytes((5, 4, self._send_flags | FLAG_SEALED, FILLER, 0, 0, 0, 0)) + sequence
            plaintext = b"".join((os.urandom(CONFOUNDER_LENGTH), data, header))
            return b"".join((header, cts_encrypt(keys.cbc, plaintext), _mac(keys.integrity_key, plaintext)))
        zeroed = bytes((5, 4, self._send_flags, FILLER, 0, 0, 0, 0)) + sequence
        checksum = _mac(keys.checksum_key, data, zeroed)
        header = bytes((5, 4, self._send_flags, FILLER, 0, CHECKSUM_LENGTH, 0, 0)) + sequence
        return b"".join((header, data, checksum))

    def unwrap(self, token: bytes, *, stream: bool = True) -> tuple[bytes, bool]:
        """
        Check one Wrap token and answer (plaintext, sealed).

        :param stream: a token of the TCP stream (must be the next one) or
            a datagram (may be late, within the window, but not repeated).
        :raise TokenRejected: whatever is wrong with it.
        """
        self._check_time()
        if len(token) < HEADER_LENGTH + CHECKSUM_LENGTH:
            raise TokenRejected(f"a {len(token)}-byte token is too short for a Wrap token")
        if token[:2] != TOK_ID_WRAP or token[3] != FILLER:
            raise TokenRejected(f"not an RFC 4121 Wrap token (header {token[:4].hex()})")
        flags = token[2]
        if flags & ~FLAG_SEALED != self._receive_flags:
            raise TokenRejected(f"token flags {flags:#04x} do not fit this context (direction or subkey)")
        extra = int.from_bytes(token[4:6], "big")
        rotation = int.from_bytes(token[6:8], "big")
        number = int.from_bytes(token[8:16], "big")
        body = memoryview(token)[HEADER_LENGTH:]
        if rotation:
            rotation %= len(body)
            body = memoryview(b"".join((body[rotation:], body[:rotation])))
        keys = self._receive
        if flags & FLAG_SEALED:
            plaintext = self._open(keys, body, token[:6] + b"\x00\x00" + token[8:16], extra)
        else:
            if extra != CHECKSUM_LENGTH:
                raise TokenRejected(f"a signed token's EC is {extra}, not {CHECKSUM_LENGTH}")
            data = body[:-CHECKSUM_LENGTH]
            expected = _mac(keys.checksum_key, data, token[:4] + b"\x00\x00\x00\x00" + token[8:16])
            if not hmac.compare_digest(expected, body[-CHECKSUM_LENGTH:]):
                raise TokenRejected("a token's checksum does not verify")
            plaintext = bytes(data)
        problem = self._received.problem(number, stream)
        if problem is not None:
            raise TokenRejected(problem)
        self._received.accept(number, stream)
        return plaintext, bool(flags & FLAG_SEALED)

    @staticmethod
    def _open(keys: _UsageKeys, body: memoryview, zeroed: bytes, extra: int) -> bytes:
        if len(body) < CONFOUNDER_LENGTH + extra + HEADER_LENGTH + CHECKSUM_LENGTH:
            raise TokenRejected(f"a {len(body) + HEADER_LENGTH}-byte sealed token is too short (EC {extra})")
        opened = cts_decrypt(keys.cbc, keys.ecb, body[:-CHECKSUM_LENGTH])
        if not hmac.compare_digest(_mac(keys.integrity_key, opened), body[-CHECKSUM_LENGTH:]):
            raise TokenRejected("a sealed token does not verify")
        if not hmac.compare_digest(opened[-HEADER_LENGTH:], zeroed):
            raise TokenRejected("a sealed token's encrypted header differs from its header")
        return opened[CONFOUNDER_LENGTH: len(opened) - HEADER_LENGTH - extra]


# -- from a python-gssapi context ----------------------------------------------


def session_enctype(context: Any) -> int | None:
    """The enctype of an established Kerberos context's protection key, or None."""
    from gssapi.exceptions import GSSError
    from gssapi.raw import inquire_sec_context_by_oid
    from gssapi.raw.oids import OID

    try:
        if context.mech.dotted_form != KRB5_OID:
            return None
        answer = inquire_sec_context_by_oid(context, OID.from_int_seq(_SSPI_SESSION_KEY_OID))
    except (GSSError, AttributeError, NotImplementedError):
        return None
    if len(answer) != 2 or not answer[1].startswith(_ENCTYPE_OID_PREFIX):
        return None
    encoded = answer[1][len(_ENCTYPE_OID_PREFIX):]
    if len(encoded) != 1 or encoded[0] & 0x80:
        return None
    return encoded[0]


def wrap_token_sequence(token: bytes) -> int | None:
    """The sequence number in the header of an RFC 4121 Wrap token, or None if it is not one."""
    if len(token) < HEADER_LENGTH or token[:2] != TOK_ID_WRAP or token[3] != FILLER:
        return None
    return int.from_bytes(token[8:16], "big")


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
        `wrap_token_sequence`); None when the library processed none, and
        then it is the first the peer uses, which the lucid context tells.
        (MIT's lucid context reports only that first one: its replay window
        is internal.  SPNEGO's mechListMIC uses numbers too, so counting
        tokens is not enough.)
    :raise TokenRejected: the export succeeded (the library context is
        gone) but its content cannot be used.
    """
    try:
        from gssapi.exceptions import GSSError
        from gssapi.raw.ext_krb5 import krb5_export_lucid_sec_context
    except ImportError:  # python-gssapi built without the Kerberos extensions
        return None
    enctype = session_enctype(context)
    if enctype not in _KEY_LENGTHS:
        return None
    try:
        lucid: Any = krb5_export_lucid_sec_context(context, 1)
    except GSSError:
        return None
    keys = lucid.cfx_kd
    if lucid.protocol != 1 or keys is None:
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
