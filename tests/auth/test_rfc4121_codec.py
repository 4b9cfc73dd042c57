"""
The pure RFC 4121 codec (txsocksgss.wire.rfc4121.KerberosWrapCodec) on its
own, no Kerberos library: two codecs sharing a key talk to each other;
tokens built by hand from the module's pieces check the rules the
library's tokens cannot reach (reserved flag bits, RFC 4121 s4.2.2); and
hypothesis throws random, truncated and altered tokens at the parser,
which must answer TokenRejected and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.errors import ProtocolError
from txsocksgss.wire.rfc4121 import (
    KG_USAGE_INITIATOR_SEAL,
    KerberosWrapCodec,
    TokenRejected,
    UsageKeys,
    checksum,
    encrypt,
    wrap_token_sequence,
)

KEY = bytes(range(32))
SUBKEY_FROM_INITIATOR = 0x04  # AcceptorSubkey set, SentByAcceptor clear
RESERVED_FLAGS = (0x08, 0x10, 0x80, 0xF8)


def pair(key: bytes = KEY, enctype: int = 18, now: list[float] | None = None,
         ) -> tuple[KerberosWrapCodec, KerberosWrapCodec]:
    """(initiator, acceptor) codecs of one context with an acceptor subkey."""
    clock = (lambda: now[0]) if now is not None else (lambda: 0.0)
    common = dict(acceptor_subkey=True, send_seq=0, recv_seq=0, endtime=1000.0, clock=clock)
    return (KerberosWrapCodec(key, enctype, initiator=True, **common),  # type: ignore[arg-type]
            KerberosWrapCodec(key, enctype, initiator=False, **common))  # type: ignore[arg-type]


def sealed_token(flags: int, number: int, data: bytes, filler: int = 0) -> bytes:
    """A sealed initiator token built by hand (RFC 4121 s4.2.4), with any flags and EC filler octets."""
    header = bytes((5, 4, flags | 0x02, 0xFF)) + filler.to_bytes(2, "big") + b"\0\0" + number.to_bytes(8, "big")
    ciphertext, mac = encrypt(UsageKeys(KEY, KG_USAGE_INITIATOR_SEAL),
                              os.urandom(16) + data + bytes(filler) + header)
    return header + ciphertext + mac


def signed_token(flags: int, number: int, data: bytes) -> bytes:
    """A signed initiator token built by hand (RFC 4121 s4.2.4), with any flags."""
    tail = number.to_bytes(8, "big")
    mac = checksum(UsageKeys(KEY, KG_USAGE_INITIATOR_SEAL), data, bytes((5, 4, flags, 0xFF, 0, 0, 0, 0)) + tail)
    return bytes((5, 4, flags, 0xFF, 0, 12, 0, 0)) + tail + data + mac


class RoundTripTests(SynchronousTestCase):
    def test_both_directions_both_levels_both_enctypes(self):
        for enctype, key in ((17, KEY[:16]), (18, KEY)):
            initiator, acceptor = pair(key, enctype)
            for conf in (True, False):
                for size in (0, 1, 15, 16, 17, 33, 1000, 65475):
                    data = os.urandom(size)
                    self.assertEqual(acceptor.unwrap(initiator.wrap(data, conf)), (data, conf))
                    self.assertEqual(initiator.unwrap(acceptor.wrap(memoryview(data), conf)), (data, conf))

    def test_sequence_numbers_count_up_from_the_first(self):
        initiator, _ = pair()
        self.assertEqual([wrap_token_sequence(initiator.wrap(b"x", conf)) for conf in (True, False, True)], [0, 1, 2])
        self.assertIsNone(wrap_token_sequence(b"\x05\x04\x00"))
        self.assertIsNone(wrap_token_sequence(b"\x04\x04\x00\xff" + bytes(12)))

    def test_the_token_size_limit_is_exact(self):
        initiator, _ = pair()
        for conf in (True, False):
            limit = KerberosWrapCodec.wrap_size_limit(65535, conf)
            self.assertEqual(len(initiator.wrap(bytes(limit), conf)), 65535)
        self.assertEqual(KerberosWrapCodec.wrap_size_limit(10, True), 0)

    def test_a_key_of_another_enctype_is_refused(self):
        self.assertRaises(ValueError, pair, KEY[:16], 18)
        self.assertRaises(ValueError, pair, KEY, 20)

    def test_the_error_is_a_protocol_error(self):
        self.assertTrue(issubclass(TokenRejected, ProtocolError))

    def test_the_codec_needs_neither_gssapi_nor_twisted(self):
        probe = ("import sys, txsocksgss.wire.rfc4121; "
                 "print(sorted({m.split('.')[0] for m in sys.modules} & {'gssapi', 'twisted'}))")
        output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        self.assertEqual(output.strip(), "[]")


class FlagTests(SynchronousTestCase):
    """RFC 4121 s4.2.2: the direction and subkey flags must fit; other bits are ignored."""

    def test_reserved_flag_bits_are_ignored_in_sealed_and_signed_tokens(self):
        _, acceptor = pair()
        number = 0
        for reserved in RESERVED_FLAGS:
            token = sealed_token(SUBKEY_FROM_INITIATOR | reserved, number, b"sealed")
            self.assertEqual(acceptor.unwrap(token), (b"sealed", True), reserved)
            token = signed_token(SUBKEY_FROM_INITIATOR | reserved, number + 1, b"signed")
            self.assertEqual(acceptor.unwrap(token), (b"signed", False), reserved)
            number += 2

    def test_hand_built_tokens_are_the_codec_s_own(self):
        """The builders above make what the codec makes: the flags tests test the parser, not the builders."""
        _, acceptor = pair()
        self.assertEqual(acceptor.unwrap(sealed_token(SUBKEY_FROM_INITIATOR, 0, b"a", filler=5)), (b"a", True))
        self.assertEqual(acceptor.unwrap(signed_token(SUBKEY_FROM_INITIATOR, 1, b"b")), (b"b", False))

    def test_the_direction_and_subkey_flags_must_fit(self):
        initiator, acceptor = pair()
        for flags, what in ((SUBKEY_FROM_INITIATOR | 0x01, "reflected"), (0x00, "no subkey flag")):
            for token in (sealed_token(flags, 0, b"x"), signed_token(flags, 0, b"x")):
                error = self.assertRaises(TokenRejected, acceptor.unwrap, token)
                self.assertIn("direction or subkey", str(error), what)
        self.assertIn("direction", str(self.assertRaises(TokenRejected, initiator.unwrap, initiator.wrap(b"e", True))))

    def test_a_reserved_bit_set_on_the_way_is_still_detected(self):
        """The flags are covered: the sealed copy of the header, or the checksum."""
        initiator, acceptor = pair()
        for conf in (True, False):
            token = bytearray(initiator.wrap(b"covered", conf))
            token[2] |= 0x80
            self.assertRaises(TokenRejected, acceptor.unwrap, bytes(token))


class SequenceTests(SynchronousTestCase):
    def test_stream_tokens_must_come_in_order(self):
        initiator, acceptor = pair()
        first, second, third = (initiator.wrap(bytes([n]), True) for n in range(3))
        self.assertIn("skips", str(self.assertRaises(TokenRejected, acceptor.unwrap, second)))
        acceptor.unwrap(first)
        self.assertIn("repeated", str(self.assertRaises(TokenRejected, acceptor.unwrap, first)))
        acceptor.unwrap(second)
        acceptor.unwrap(third)

    def test_datagrams_may_be_late_but_not_repeated_or_too_old(self):
        initiator, acceptor = pair()
        tokens = [initiator.wrap(bytes([n]), True) for n in range(70)]
        self.assertEqual(acceptor.unwrap(tokens[5], stream=False), (b"\x05", True))
        self.assertEqual(acceptor.unwrap(tokens[2], stream=False), (b"\x02", True))
        self.assertIn("already", str(self.assertRaises(TokenRejected, acceptor.unwrap, tokens[2], stream=False)))
        self.assertEqual(acceptor.unwrap(tokens[69], stream=False), (b"E", True))
        self.assertIn("too old", str(self.assertRaises(TokenRejected, acceptor.unwrap, tokens[3], stream=False)))
        self.assertEqual(acceptor.unwrap(tokens[6], stream=False), (b"\x06", True))

    def test_no_stream_token_is_accepted_after_a_datagram(self):
        """Datagrams leave gaps nobody can tell from removed stream tokens: the stream ends at the first datagram."""
        initiator, acceptor = pair()
        self.assertEqual(acceptor.unwrap(initiator.wrap(b"request", True)), (b"request", True))
        self.assertEqual(acceptor.unwrap(initiator.wrap(b"datagram", True), stream=False), (b"datagram", True))
        error = self.assertRaises(TokenRejected, acceptor.unwrap, initiator.wrap(b"next", True))
        self.assertIn("after datagrams", str(error))
        self.assertEqual(acceptor.unwrap(initiator.wrap(b"more", True), stream=False), (b"more", True))

    def test_tokens_from_before_the_first_expected_are_refused(self):
        initiator = KerberosWrapCodec(KEY, 18, initiator=True, acceptor_subkey=True, send_seq=8, recv_seq=0,
                                      endtime=1000.0, clock=lambda: 0.0)
        acceptor = KerberosWrapCodec(KEY, 18, initiator=False, acceptor_subkey=True, send_seq=0, recv_seq=10,
                                     endtime=1000.0, clock=lambda: 0.0)
        old = [initiator.wrap(b"old", True) for _ in range(2)]  # numbers 8 and 9
        for token, stream in zip(old, (True, False)):
            error = self.assertRaises(TokenRejected, acceptor.unwrap, token, stream=stream)
            self.assertIn("before this session", str(error))
        self.assertEqual(acceptor.unwrap(initiator.wrap(b"first", True)), (b"first", True))

    def test_after_its_end_the_context_neither_wraps_nor_unwraps(self):
        now = [999.0]
        initiator, acceptor = pair(now=now)
        token = initiator.wrap(b"in time", True)
        now[0] = 1000.5
        self.assertIn("expired", str(self.assertRaises(TokenRejected, initiator.wrap, b"late", True)))
        self.assertIn("expired", str(self.assertRaises(TokenRejected, acceptor.unwrap, token)))


class MalformedTokenTests(SynchronousTestCase):
    """Whatever the bytes, the parser answers TokenRejected (or the true plaintext), never another exception."""

    @given(st.binary(max_size=300), st.booleans())
    @settings(max_examples=300, deadline=None)
    def test_random_bytes(self, junk, stream):
        _, acceptor = pair()
        with self.assertRaises(TokenRejected):
            acceptor.unwrap(junk, stream=stream)
        for flags in (0x04, 0x06):  # a plausible header in front
            with self.assertRaises(TokenRejected):
                acceptor.unwrap(bytes((5, 4, flags, 0xFF)) + junk, stream=stream)

    @given(st.binary(max_size=100), st.booleans(), st.data())
    @settings(max_examples=300, deadline=None)
    def test_truncated_tokens(self, data, conf, draw):
        initiator, acceptor = pair()
        token = initiator.wrap(data, conf)
        cut = draw.draw(st.integers(0, len(token) - 1))
        with self.assertRaises(TokenRejected):
            acceptor.unwrap(token[:cut])
        self.assertEqual(acceptor.unwrap(token), (data, conf))  # the whole one still verifies

    @given(st.binary(max_size=100), st.booleans(), st.data())
    @settings(max_examples=300, deadline=None)
    def test_altered_header_fields(self, data, conf, draw):
        """Flags, EC, RRC and the sequence number set to anything: rejected, or (an RRC that rotates by whole turns) the same plaintext."""
        initiator, acceptor = pair()
        token = bytearray(initiator.wrap(data, conf))
        field = draw.draw(st.sampled_from([(2, 3), (4, 6), (6, 8), (8, 16)]))
        width = field[1] - field[0]
        token[field[0]:field[1]] = draw.draw(st.binary(min_size=width, max_size=width))
        try:
            result = acceptor.unwrap(bytes(token))
        except TokenRejected:
            return
        self.assertEqual(result, (data, conf))

    @given(st.binary(min_size=1, max_size=100), st.booleans(), st.data())
    @settings(max_examples=300, deadline=None)
    def test_altered_bodies(self, data, conf, draw):
        initiator, acceptor = pair()
        token = bytearray(initiator.wrap(data, conf))
        position = draw.draw(st.integers(16, len(token) - 1))
        token[position] ^= draw.draw(st.integers(1, 255))
        with self.assertRaises(TokenRejected):
            acceptor.unwrap(bytes(token))

    @given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=40))
    @settings(max_examples=200, deadline=None)
    def test_any_order_of_delivery(self, deliveries):
        """Genuine tokens delivered in any order, any number of times: each accepted at most once."""
        initiator, acceptor = pair()
        tokens = [initiator.wrap(bytes([n]), True) for n in range(21)]
        accepted: list[int] = []
        for index, stream in deliveries:
            try:
                plaintext, _ = acceptor.unwrap(tokens[index], stream=stream)
            except TokenRejected:
                continue
            accepted.append(plaintext[0])
        self.assertEqual(len(accepted), len(set(accepted)))
