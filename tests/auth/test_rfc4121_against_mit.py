"""
The pure RFC 4121 codec (txsocksgss.wire.rfc4121) against MIT's own
gss_wrap/gss_unwrap, over real contexts from the test KDC exported by
txsocksgss.auth.krb5_lucid: tokens both ways, in both roles, at both
levels, and everything a forged, replayed, reordered or reflected token
must run into; then which codec a context gets (gssapi_wrap.token_codec).
The building blocks' published vectors are in test_rfc4121_vectors, the
codec on its own in test_rfc4121_codec.
"""

from __future__ import annotations

import os

import gssapi
import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.kerberos import SERVICE_HOST, test_realm
from txsocksgss.auth import krb5_lucid
from txsocksgss.auth.gssapi_wrap import (
    UNCOUNTED,
    GSSAPIStreamProtection,
    LibraryTokenCodec,
    ProtectionFailed,
    token_codec,
)
from txsocksgss.auth.krb5_lucid import codec_from_context, session_enctype
from txsocksgss.wire.gssapi import GSSAPIFrame, MessageType, ProtectionLevel
from txsocksgss.wire.rfc4121 import KerberosWrapCodec, TokenRejected, wrap_token_sequence

KRB5 = "1.2.840.113554.1.2.2"
SPNEGO = "1.3.6.1.5.5.2"


def context_pair(mech: str = KRB5, mutual: bool = True) -> tuple[object, object]:
    """An established (initiator, acceptor) pair of MIT contexts."""
    realm = test_realm()
    name = gssapi.Name(f"rcmd@{SERVICE_HOST}", gssapi.NameType.hostbased_service)
    flags = (gssapi.RequirementFlag.integrity | gssapi.RequirementFlag.confidentiality
             | gssapi.RequirementFlag.replay_detection | gssapi.RequirementFlag.out_of_sequence_detection)
    if mutual:
        flags |= gssapi.RequirementFlag.mutual_authentication
    initiator = gssapi.SecurityContext(name=name, usage="initiate", flags=flags, mech=gssapi.OID.from_int_seq(mech))
    credentials = gssapi.Credentials(usage="accept", store={"keytab": realm.service_keytab})
    acceptor = gssapi.SecurityContext(usage="accept", creds=credentials)
    token = initiator.step()
    while not (initiator.complete and acceptor.complete):
        token = acceptor.step(token)
        if token is not None and not initiator.complete:
            token = initiator.step(token)
    return initiator, acceptor


def ours_and_theirs(our_role: str) -> tuple[KerberosWrapCodec, object]:
    initiator, acceptor = context_pair()
    mine, theirs = (initiator, acceptor) if our_role == "initiator" else (acceptor, initiator)
    codec = codec_from_context(mine, None)
    assert codec is not None
    return codec, theirs


def flip(token: bytes, position: int, bit: int = 0) -> bytes:
    changed = bytearray(token)
    changed[position] ^= 1 << bit
    return bytes(changed)


SIZES = (0, 1, 15, 16, 17, 31, 32, 33, 1000, 65475)


@pytest.mark.kerberos
class AgainstMITTests(SynchronousTestCase):
    """Our tokens against the Kerberos library's, over real contexts."""

    def test_tokens_interoperate_both_ways_in_both_roles(self):
        for role in ("initiator", "acceptor"):
            codec, theirs = ours_and_theirs(role)
            for conf in (True, False):
                for size in SIZES:
                    data = os.urandom(size)
                    result = theirs.unwrap(codec.wrap(data, conf))
                    self.assertEqual((result.message, result.encrypted), (data, conf), (role, conf, size))
                    self.assertEqual(codec.unwrap(theirs.wrap(data, conf).message), (data, conf), (role, conf, size))

    def test_without_mutual_authentication_the_context_key_protects(self):
        """No AP-REP, so no acceptor subkey: tokens carry no AcceptorSubkey flag."""
        initiator, acceptor = context_pair(mutual=False)
        codec = codec_from_context(acceptor, None)
        assert codec is not None
        token = codec.wrap(b"no subkey", True)
        self.assertEqual(token[2], 0x01 | 0x02)
        self.assertEqual(initiator.unwrap(token).message, b"no subkey")
        self.assertEqual(codec.unwrap(initiator.wrap(b"back", False).message), (b"back", False))

    def test_wrap_size_limit_is_the_library_s(self):
        initiator, acceptor = context_pair()
        for conf in (True, False):
            for limit in (65535, 1000, 100):
                self.assertEqual(KerberosWrapCodec.wrap_size_limit(limit, conf),
                                 initiator.get_wrap_size_limit(limit, conf), (limit, conf))

    def test_tokens_use_the_acceptor_subkey_and_mark_the_direction(self):
        codec, theirs = ours_and_theirs("acceptor")
        token = codec.wrap(b"x", True)
        self.assertEqual(token[:4], bytes([5, 4, 0x01 | 0x02 | 0x04, 0xFF]))
        self.assertEqual(codec.wrap(b"x", False)[:8], bytes([5, 4, 0x01 | 0x04, 0xFF, 0, 12, 0, 0]))
        self.assertEqual(codec.enctype, 18)

    def test_rotated_tokens_are_accepted(self):
        """RFC 4121 s4.2.5: a sender may rotate the token body right by RRC octets (Microsoft's SSPI does)."""
        codec, theirs = ours_and_theirs("acceptor")
        for conf, rotation in ((True, 28), (False, 12), (True, 1000)):
            token = theirs.wrap(b"rotated payload", conf).message
            header, body = token[:16], token[16:]
            shift = rotation % len(body)
            rotated = header[:6] + rotation.to_bytes(2, "big") + header[8:] + body[-shift:] + body[:-shift]
            self.assertEqual(codec.unwrap(rotated), (b"rotated payload", conf))

    def test_a_changed_bit_anywhere_is_rejected(self):
        codec, theirs = ours_and_theirs("acceptor")
        for conf in (True, False):
            token = theirs.wrap(b"some bytes worth protecting", conf).message
            for position in range(len(token)):
                if position in (6, 7):  # RRC: a changed rotation moves the body, which then fails
                    continue
                with self.assertRaises(TokenRejected, msg=(conf, position)):
                    codec.unwrap(flip(token, position, position % 8))
            self.assertEqual(codec.unwrap(token), (b"some bytes worth protecting", conf))

    def test_a_reflected_token_is_rejected(self):
        codec, _ = ours_and_theirs("initiator")
        for conf in (True, False):
            error = self.assertRaises(TokenRejected, codec.unwrap, codec.wrap(b"echo", conf))
            self.assertIn("direction", str(error))

    def test_stream_tokens_must_come_in_order(self):
        codec, theirs = ours_and_theirs("acceptor")
        first, second, third = (theirs.wrap(bytes([n]), True).message for n in range(3))
        self.assertIn("skips", str(self.assertRaises(TokenRejected, codec.unwrap, second)))
        codec.unwrap(first)
        self.assertIn("repeated", str(self.assertRaises(TokenRejected, codec.unwrap, first)))
        codec.unwrap(second)
        codec.unwrap(third)
        self.assertRaises(TokenRejected, codec.unwrap, second)

    def test_tokens_the_library_unwrapped_before_the_export_cannot_be_replayed(self):
        """The protection-level message is unwrapped by the library: replaying it later must fail."""
        initiator, acceptor = context_pair()
        level_message = initiator.wrap(b"\x02", False).message
        # (MIT's unwrap of a signed token zeroes EC and RRC in its input buffer: give it a copy.)
        self.assertEqual(acceptor.unwrap(bytes(bytearray(level_message))).message, b"\x02")
        codec = codec_from_context(acceptor, wrap_token_sequence(level_message) + 1)
        assert codec is not None
        following = initiator.wrap(b"GET /", True).message
        self.assertIn("before this session", str(self.assertRaises(TokenRejected, codec.unwrap, level_message)))
        self.assertEqual(codec.unwrap(following), (b"GET /", True))

    def test_sequence_numbers_used_by_mics_before_the_export_are_skipped(self):
        """
        SPNEGO's mechListMIC (gss_get_mic on the Kerberos context) uses a
        sequence number: the next one expected comes from the level
        message's header, not from counting Wrap tokens.
        """
        initiator, acceptor = context_pair()
        acceptor.verify_signature(b"mechList", initiator.get_signature(b"mechList"))
        initiator.verify_signature(b"mechList", acceptor.get_signature(b"mechList"))
        level_message = initiator.wrap(b"\x02", False).message
        sequence = wrap_token_sequence(level_message)
        self.assertEqual(acceptor.unwrap(bytes(bytearray(level_message))).message, b"\x02")
        codec = codec_from_context(acceptor, sequence + 1)
        assert codec is not None
        self.assertRaises(TokenRejected, codec.unwrap, level_message)
        self.assertEqual(codec.unwrap(initiator.wrap(b"first data", True).message), (b"first data", True))
        self.assertEqual(initiator.unwrap(codec.wrap(b"answer", True)).message, b"answer")

    def test_a_next_sequence_before_the_first_is_refused(self):
        initiator, acceptor = context_pair()
        first = wrap_token_sequence(initiator.wrap(b"x", True).message)
        self.assertRaises(TokenRejected, codec_from_context, acceptor, first - 1)

    def test_datagrams_may_be_late_but_not_repeated(self):
        codec, theirs = ours_and_theirs("acceptor")
        tokens = [theirs.wrap(bytes([n]), True).message for n in range(70)]
        self.assertEqual(codec.unwrap(tokens[5], stream=False), (b"\x05", True))
        self.assertEqual(codec.unwrap(tokens[2], stream=False), (b"\x02", True))
        self.assertIn("already", str(self.assertRaises(TokenRejected, codec.unwrap, tokens[2], stream=False)))
        self.assertEqual(codec.unwrap(tokens[69], stream=False), (b"E", True))
        self.assertIn("too old", str(self.assertRaises(TokenRejected, codec.unwrap, tokens[3], stream=False)))
        # Once datagrams share the numbers, the stream carries nothing more.
        error = self.assertRaises(TokenRejected, codec.unwrap, theirs.wrap(b"stream", True).message)
        self.assertIn("after datagrams", str(error))

    def test_an_expired_context_neither_wraps_nor_unwraps(self):
        initiator, acceptor = context_pair()
        now = [0.0]
        codec = codec_from_context(acceptor, None, clock=lambda: now[0])
        assert codec is not None
        token = initiator.wrap(b"late", True).message
        self.assertEqual(codec.unwrap(token), (b"late", True))
        now[0] = float(initiator.lifetime) + 2**33  # well after the ticket's end
        self.assertIn("expired", str(self.assertRaises(TokenRejected, codec.wrap, b"x", True)))
        self.assertRaises(TokenRejected, codec.unwrap, initiator.wrap(b"x", True).message)

    def test_a_signed_token_must_declare_its_checksum_length(self):
        codec, theirs = ours_and_theirs("acceptor")
        token = theirs.wrap(b"signed", False).message
        forged = token[:4] + (16).to_bytes(2, "big") + token[6:]
        self.assertIn("EC", str(self.assertRaises(TokenRejected, codec.unwrap, forged)))


@pytest.mark.kerberos
class SelectionTests(SynchronousTestCase):
    """Which codec a context gets, and what that means for the context."""

    def test_kerberos_gets_openssl_and_the_library_forgets_the_context(self):
        initiator, acceptor = context_pair()
        codec = token_codec(acceptor, None)
        self.assertEqual(codec.engine, "openssl")
        self.assertRaises(gssapi.exceptions.GSSError, acceptor.wrap, b"x", True)
        self.assertEqual(codec.unwrap(initiator.wrap(b"hi", True).message), (b"hi", True))

    def test_the_enctype_is_the_session_key_s(self):
        initiator, acceptor = context_pair()
        self.assertEqual((session_enctype(initiator), session_enctype(acceptor)), (18, 18))
        self.assertIsNone(session_enctype(object()))

    def test_without_the_extensions_the_library_keeps_the_context(self):
        """A python-gssapi built without the GGF or Kerberos extensions: nothing is exported."""
        initiator, acceptor = context_pair()
        self.patch(krb5_lucid, "_extensions", None)
        self.assertIsNone(session_enctype(acceptor))
        self.assertIsNone(codec_from_context(acceptor, None))
        codec = token_codec(acceptor, None)
        self.assertEqual(codec.engine, "library")
        self.assertEqual(codec.unwrap(initiator.wrap(b"still here", True).message), (b"still here", True))

    def test_an_uncounted_peer_sequence_stays_with_the_library(self):
        initiator, acceptor = context_pair()
        codec = token_codec(acceptor, UNCOUNTED)
        self.assertIsInstance(codec, LibraryTokenCodec)
        self.assertEqual(initiator.unwrap(codec.wrap(b"counted by MIT", True)).message, b"counted by MIT")

    def test_spnego_over_kerberos_gets_openssl(self):
        initiator, acceptor = context_pair(SPNEGO)
        self.assertEqual(acceptor.mech.dotted_form, KRB5)
        codec = token_codec(acceptor, None)
        self.assertEqual(codec.engine, "openssl")
        self.assertEqual(initiator.unwrap(codec.wrap(b"negotiated", True)).message, b"negotiated")

    def test_the_library_engine_leaves_the_context_to_the_library(self):
        initiator, acceptor = context_pair()
        codec = token_codec(acceptor, None, "library")
        self.assertIsInstance(codec, LibraryTokenCodec)
        self.assertEqual(codec.unwrap(initiator.wrap(b"hi", True).message), (b"hi", True))
        self.assertRaises(TokenRejected, codec.unwrap, b"\x05\x04junk")
        self.assertRaises(ValueError, token_codec, acceptor, None, "fastest")

    def test_level_2_refuses_a_signed_token_from_either_codec(self):
        for engine in ("auto", "library"):
            initiator, acceptor = context_pair()
            protection = GSSAPIStreamProtection(acceptor, ProtectionLevel.CONFIDENTIALITY, None, engine)
            frame = GSSAPIFrame(MessageType.ENCAPSULATION, initiator.wrap(b"plain", False).message).serialize()
            error = self.assertRaises(ProtectionFailed, protection.unprotect, frame)
            self.assertIn("without confidentiality", str(error))

    def test_stream_protection_round_trip_with_each_engine(self):
        for engine, expected in (("auto", "openssl"), ("library", "library")):
            initiator, acceptor = context_pair()
            server = GSSAPIStreamProtection(acceptor, ProtectionLevel.CONFIDENTIALITY, None, engine)
            client = GSSAPIStreamProtection(initiator, ProtectionLevel.CONFIDENTIALITY, None, engine)
            self.assertEqual((server.engine, client.engine), (expected, expected))
            data = os.urandom(200_000)
            wire = client.protect(data)
            self.assertEqual(server.unprotect(wire[:70_000]) + server.unprotect(wire[70_000:]), data)
            self.assertEqual(client.unprotectDatagram(server.protectDatagram(b"datagram")), b"datagram")
