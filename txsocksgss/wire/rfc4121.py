"""
RFC 4121 Wrap tokens of Kerberos contexts with AES-SHA1 keys, made and
checked with OpenSSL: a pure codec, with no GSS-API library.

Why: Debian's MIT Kerberos library does its AES and HMAC-SHA1 with its own
built-in code, at about 155 MB/s for a confidentiality wrap on this kind of
machine, where OpenSSL (AES-NI, SHA extensions) does AES-256-CBC at about
1 GB/s and HMAC-SHA1 at about 1.9 GB/s.  A protected tunnel spends nearly
all its time there.

What: `KerberosWrapCodec` holds one side of one established context (its
key, enctype, role and sequence numbers) and makes and checks the Wrap
tokens of RFC 4121 s4.2 ("CFX") for aes128-cts-hmac-sha1-96 and
aes256-cts-hmac-sha1-96 keys (RFC 3962, enctypes 17 and 18: MIT's
default).  Where the key and the numbers come from (MIT's "lucid" context
export) is `txsocksgss.auth.krb5_lucid`; which codec a session uses is
`txsocksgss.auth.gssapi_wrap.token_codec`.  The tokens are the library's,
byte for byte in layout; tests check them against MIT's own wrap and
unwrap both ways, and the building blocks against the published vectors.

The pieces, each a handful of calls into OpenSSL per token (no Python loop
touches the bytes of a message):

- RFC 3961 s5.1 n-fold and s5.3 DK key derivation: `n_fold`, `derive_key`,
  `UsageKeys` (Ke, Ki and Kc of one key usage);
- RFC 3962 s5 AES in CBC mode with ciphertext stealing and HMAC-SHA1-96:
  `cts_encrypt`, `cts_decrypt`, `hmac_sha1_96`;
- RFC 3961 s5.3 simplified-profile encryption and checksums: `encrypt`,
  `decrypt`, `checksum`;
- RFC 4121 s4.2 the Wrap token (s4.2.2 flags, s4.2.4 layout, s4.2.5 RRC,
  s2 key usages): `KerberosWrapCodec`.

Receiving is strict: the token's direction and subkey flags must be the
context's (other flag bits are ignored, RFC 4121 s4.2.2), the MAC is
compared in constant time before anything else is believed, a sealed
token's encrypted copy of the header must match the header, and sequence
numbers are checked after the MAC.  A stream token must be the next one
(a token removed from the stream is detected).  Datagrams may arrive out
of order within a window of 64, but never twice.  Datagrams and the stream
share the numbers (RFC 1961 wraps both with the one context), and a lost
datagram leaves a gap nobody can tell from a removed token, so once a
datagram has been accepted, stream tokens are refused outright: in a UDP
association the TCP connection carries nothing after the reply (RFC 1928
gives neither side anything to say there, and both our server and our
client send nothing).
"""

from __future__ import annotations

import hmac
import os
import time
from functools import cached_property, lru_cache
from math import gcd
from typing import Any, Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from txsocksgss.errors import ProtocolError

__all__ = [
    "KerberosWrapCodec",
    "TokenRejected",
    "UsageKeys",
    "wrap_token_sequence",
    "n_fold",
    "derive_key",
    "cts_encrypt",
    "cts_decrypt",
    "hmac_sha1_96",
    "encrypt",
    "decrypt",
    "checksum",
    "KEY_LENGTHS",
    "ENCTYPE_AES128_CTS_HMAC_SHA1_96",
    "ENCTYPE_AES256_CTS_HMAC_SHA1_96",
]

ENCTYPE_AES128_CTS_HMAC_SHA1_96 = 17
ENCTYPE_AES256_CTS_HMAC_SHA1_96 = 18
#: The enctypes this codec takes, and the length of their keys.
KEY_LENGTHS = {ENCTYPE_AES128_CTS_HMAC_SHA1_96: 16, ENCTYPE_AES256_CTS_HMAC_SHA1_96: 32}

# RFC 4121 s2: key usage numbers of Wrap tokens.
KG_USAGE_ACCEPTOR_SEAL = 22
KG_USAGE_INITIATOR_SEAL = 24

# RFC 3961 s5.3: the last octet of the derivation constant of each key.
_ENCRYPTION_KEY_OCTET = b"\xaa"  # Ke
_INTEGRITY_KEY_OCTET = b"\x55"  # Ki
_CHECKSUM_KEY_OCTET = b"\x99"  # Kc

# RFC 4121 s4.2.2: the Flags octet.  The other bits are reserved: a sender
# clears them, a receiver ignores them.
FLAG_SENT_BY_ACCEPTOR = 0x01
FLAG_SEALED = 0x02
FLAG_ACCEPTOR_SUBKEY = 0x04
_CONTEXT_FLAGS = FLAG_SENT_BY_ACCEPTOR | FLAG_ACCEPTOR_SUBKEY

TOK_ID_WRAP = b"\x05\x04"
FILLER = 0xFF
HEADER_LENGTH = 16
CONFOUNDER_LENGTH = 16  # the AES block size
CHECKSUM_LENGTH = 12  # HMAC-SHA1-96
BLOCK = 16
SEQUENCE_WINDOW = 64


class TokenRejected(ProtocolError):
    """A Wrap token cannot be accepted (malformed, forged, replayed or out of order) or made (the context expired)."""


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
    """RFC 3961 s5.3 DK for the AES enctypes (RFC 3962 s6: random-to-key is the identity, so DK = DR)."""
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


def hmac_sha1_96(key: bytes, *pieces: bytes | memoryview) -> bytes:
    """RFC 3962 s6: HMAC-SHA1 of the concatenation of ``pieces``, truncated to 96 bits."""
    digest = hmac.new(key, pieces[0], "sha1")
    for piece in pieces[1:]:
        digest.update(piece)
    return digest.digest()[:CHECKSUM_LENGTH]


class UsageKeys:
    """
    The keys RFC 3961 s5.3 derives from a base key for one key usage: Ke
    and Ki for encryption (constants ``usage | AA`` and ``usage | 55``), Kc
    for checksums (``usage | 99``).  Each is derived on first use: a
    session at one protection level needs only its own.
    """

    def __init__(self, key: bytes, usage: int) -> None:
        self._key = key
        self._usage = usage.to_bytes(4, "big")

    @cached_property
    def encryption_key(self) -> bytes:
        """Ke."""
        return derive_key(self._key, self._usage + _ENCRYPTION_KEY_OCTET)

    @cached_property
    def integrity_key(self) -> bytes:
        """Ki."""
        return derive_key(self._key, self._usage + _INTEGRITY_KEY_OCTET)

    @cached_property
    def checksum_key(self) -> bytes:
        """Kc."""
        return derive_key(self._key, self._usage + _CHECKSUM_KEY_OCTET)

    @cached_property
    def cbc(self) -> Cipher[Any]:
        """AES with Ke in CBC mode with a zero IV (for `cts_encrypt` and `cts_decrypt`)."""
        return Cipher(algorithms.AES(self.encryption_key), modes.CBC(_ZERO_IV))

    @cached_property
    def ecb(self) -> Cipher[Any]:
        """AES with Ke on single blocks (for `cts_decrypt`)."""
        return Cipher(algorithms.AES(self.encryption_key), modes.ECB())


def encrypt(keys: UsageKeys, confounded: bytes | memoryview) -> tuple[bytes, bytes]:
    """
    RFC 3961 s5.3 encryption: (AES-CTS of ``confounded`` under Ke, its
    HMAC-SHA1-96 under Ki), to be sent one after the other.  ``confounded``
    starts with its confounder (one random block), which the caller chose.
    """
    return cts_encrypt(keys.cbc, confounded), hmac_sha1_96(keys.integrity_key, confounded)


def decrypt(keys: UsageKeys, ciphertext: bytes | memoryview) -> bytes:
    """
    The inverse of `encrypt`: the confounded plaintext, confounder
    included, once its MAC verified (compared in constant time).

    :raise TokenRejected: too short, or the MAC does not verify.
    """
    if len(ciphertext) < CONFOUNDER_LENGTH + CHECKSUM_LENGTH:
        raise TokenRejected(f"{len(ciphertext)} bytes are too short for a ciphertext")
    view = memoryview(ciphertext)
    confounded = cts_decrypt(keys.cbc, keys.ecb, view[:-CHECKSUM_LENGTH])
    if not hmac.compare_digest(hmac_sha1_96(keys.integrity_key, confounded), view[-CHECKSUM_LENGTH:]):
        raise TokenRejected("a sealed token does not verify")
    return confounded


def checksum(keys: UsageKeys, *pieces: bytes | memoryview) -> bytes:
    """RFC 3961 s5.3 get_mic: HMAC-SHA1-96 under Kc of the concatenation of ``pieces``."""
    return hmac_sha1_96(keys.checksum_key, *pieces)


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
        if stream:
            if self.datagrams:
                return f"stream token {number} after datagrams: the UDP association's connection carries nothing"
            if number != self.highest + 1:
                what = "repeated or out of order" if number <= self.highest else "skips tokens"
                return f"stream token {number} {what}: expected {self.highest + 1}"
            return None
        if number > self.highest:
            return None
        age = self.highest - number
        if age >= SEQUENCE_WINDOW:
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
    :param enctype: 17 or 18 (`KEY_LENGTHS`).
    :param initiator: whether this side initiated the context.
    :param acceptor_subkey: whether ``key`` is the acceptor's subkey (the
        AcceptorSubkey flag of every token).
    :param send_seq: the sequence number of the next token sent.
    :param recv_seq: the sequence number of the first token expected.
    :param endtime: when the context expires (seconds since the epoch).
    :param clock: the time now (`time.time`).
    :raise ValueError: ``key`` is not a key of ``enctype``.
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
        if KEY_LENGTHS.get(enctype) != len(key):
            raise ValueError(f"not an AES-SHA1 key: enctype {enctype}, {len(key)} bytes")
        if initiator:
            self._send = UsageKeys(key, KG_USAGE_INITIATOR_SEAL)
            self._receive = UsageKeys(key, KG_USAGE_ACCEPTOR_SEAL)
        else:
            self._send = UsageKeys(key, KG_USAGE_ACCEPTOR_SEAL)
            self._receive = UsageKeys(key, KG_USAGE_INITIATOR_SEAL)
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
        """
        One Wrap token of ``data``: sealed (encrypted) when ``conf``, else signed.

        :raise TokenRejected: the context has expired.
        """
        self._check_time()
        number = self._send_seq
        self._send_seq = (number + 1) & 0xFFFFFFFFFFFFFFFF
        sequence = number.to_bytes(8, "big")
        keys = self._send
        if conf:
            # RFC 4121 s4.2.4: encrypt(confounder | data | header), EC = RRC = 0.
            header = bytes((5, 4, self._send_flags | FLAG_SEALED, FILLER, 0, 0, 0, 0)) + sequence
            ciphertext, mac = encrypt(keys, b"".join((os.urandom(CONFOUNDER_LENGTH), data, header)))
            return b"".join((header, ciphertext, mac))
        # The checksum covers data | header with EC and RRC zero; EC is then the checksum's length.
        zeroed = bytes((5, 4, self._send_flags, FILLER, 0, 0, 0, 0)) + sequence
        mac = checksum(keys, data, zeroed)
        header = bytes((5, 4, self._send_flags, FILLER, 0, CHECKSUM_LENGTH, 0, 0)) + sequence
        return b"".join((header, data, mac))

    def unwrap(self, token: bytes, *, stream: bool = True) -> tuple[bytes, bool]:
        """
        Check one Wrap token and answer (plaintext, sealed).

        :param stream: a token of the TCP stream (must be the next one, and
            none comes after a datagram) or a datagram (may be late, within
            the window, but not repeated).
        :raise TokenRejected: whatever is wrong with it; no other exception,
            whatever the bytes.
        """
        self._check_time()
        if len(token) < HEADER_LENGTH + CHECKSUM_LENGTH:
            raise TokenRejected(f"a {len(token)}-byte token is too short for a Wrap token")
        if token[:2] != TOK_ID_WRAP or token[3] != FILLER:
            raise TokenRejected(f"not an RFC 4121 Wrap token (header {token[:4].hex()})")
        flags = token[2]
        if flags & _CONTEXT_FLAGS != self._receive_flags:  # RFC 4121 s4.2.2: unknown flags are ignored
            raise TokenRejected(f"token flags {flags:#04x} do not fit this context (direction or subkey)")
        extra = int.from_bytes(token[4:6], "big")
        rotation = int.from_bytes(token[6:8], "big")
        number = int.from_bytes(token[8:16], "big")
        body = memoryview(token)[HEADER_LENGTH:]
        if rotation:  # RFC 4121 s4.2.5: the body was rotated right by RRC octets
            rotation %= len(body)
            body = memoryview(b"".join((body[rotation:], body[:rotation])))
        keys = self._receive
        if flags & FLAG_SEALED:
            plaintext = self._open(keys, body, token[:6] + b"\x00\x00" + token[8:16], extra)
        else:
            if extra != CHECKSUM_LENGTH:
                raise TokenRejected(f"a signed token's EC is {extra}, not {CHECKSUM_LENGTH}")
            data = body[:-CHECKSUM_LENGTH]
            expected = checksum(keys, data, token[:4] + b"\x00\x00\x00\x00" + token[8:16])
            if not hmac.compare_digest(expected, body[-CHECKSUM_LENGTH:]):
                raise TokenRejected("a token's checksum does not verify")
            plaintext = bytes(data)
        problem = self._received.problem(number, stream)
        if problem is not None:
            raise TokenRejected(problem)
        self._received.accept(number, stream)
        return plaintext, bool(flags & FLAG_SEALED)

    @staticmethod
    def _open(keys: UsageKeys, body: memoryview, zeroed: bytes, extra: int) -> bytes:
        if len(body) < CONFOUNDER_LENGTH + extra + HEADER_LENGTH + CHECKSUM_LENGTH:
            raise TokenRejected(f"a {len(body) + HEADER_LENGTH}-byte sealed token is too short (EC {extra})")
        opened = decrypt(keys, body)
        if not hmac.compare_digest(opened[-HEADER_LENGTH:], zeroed):
            raise TokenRejected("a sealed token's encrypted header differs from its header")
        return opened[CONFOUNDER_LENGTH: len(opened) - HEADER_LENGTH - extra]


def wrap_token_sequence(token: bytes) -> int | None:
    """The sequence number in the header of an RFC 4121 Wrap token, or None if it is not one."""
    if len(token) < HEADER_LENGTH or token[:2] != TOK_ID_WRAP or token[3] != FILLER:
        return None
    return int.from_bytes(token[8:16], "big")
