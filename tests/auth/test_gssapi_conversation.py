"""
The GSS-API conversations (RFC 1961 s3-4) byte by byte, with a real KDC for
the tokens but no sockets: every stage's bad input ends in the abort frame
and a failed result, never an exception or a hang.
"""

from __future__ import annotations

import gssapi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.kerberos import SERVICE_HOST, test_realm
from txsocksgss.auth.conversation import SessionInfo
from txsocksgss.auth.gssapi import GSSAPIClientFactory, GSSAPIServerFactory, token_mechanism
from txsocksgss.errors import ConfigError
from txsocksgss.wire.gssapi import GSSAPIFrame, MessageType, ProtectionLevel

pytestmark = pytest.mark.kerberos

ABORT = b"\x01\xff"
SESSION = SessionInfo(client=("127.0.0.1", 5000), server=("127.0.0.1", 1080))


def synchronous(f, *args):
    return maybeDeferred(f, *args)


def frame(kind: MessageType, token: bytes) -> bytes:
    return GSSAPIFrame(kind, token).serialize()


class Pair:
    """A server conversation and a real initiator context for feeding it."""

    def __init__(self, mech="krb5", **server):
        realm = test_realm()
        server.setdefault("keytab", realm.service_keytab)
        self.server = GSSAPIServerFactory(**server).buildAuthenticator(SESSION)
        name = gssapi.Name(f"rcmd@{SERVICE_HOST}", gssapi.NameType.hostbased_service)
        flags = (gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.integrity
                 | gssapi.RequirementFlag.confidentiality)
        oid = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2" if mech == "krb5" else "1.3.6.1.5.5.2")
        self.client = gssapi.SecurityContext(name=name, mech=oid, flags=flags, usage="initiate")

    def establish(self):
        step = self.server.receive(frame(MessageType.AUTHENTICATION, self.client.step()))
        assert step.result is None, step.result
        token = step.send[4:]
        self.client.step(token)
        assert self.client.complete
        return step

    def level(self, level: int, wrapped=True):
        octet = bytes([level])
        token = self.client.wrap(octet, False).message if wrapped else octet
        return self.server.receive(frame(MessageType.PROTECTION, token))


class ServerConversationTests(SynchronousTestCase):
    def test_happy_path_sends_mutual_token_then_agrees(self):
        pair = Pair()
        step = pair.establish()
        self.assertEqual(step.send[:2], b"\x01\x01")
        step = pair.level(ProtectionLevel.CONFIDENTIALITY)
        self.assertTrue(step.result.succeeded)
        self.assertEqual(step.result.identity.user, test_realm().user_principal)
        self.assertEqual(step.result.protection.name, "confidentiality")
        answer = pair.client.unwrap(step.send[4:]).message
        self.assertEqual(answer, b"\x02")

    def test_request_for_a_forbidden_level_gets_the_server_preference(self):
        pair = Pair(protection=(ProtectionLevel.CONFIDENTIALITY,))
        pair.establish()
        step = pair.level(ProtectionLevel.INTEGRITY)
        self.assertEqual(pair.client.unwrap(step.send[4:]).message, b"\x02")

    def test_selective_level_3_is_never_agreed(self):
        pair = Pair()
        pair.establish()
        step = pair.level(3)
        self.assertEqual(pair.client.unwrap(step.send[4:]).message, b"\x02")

    def test_clear_only_when_allowed(self):
        pair = Pair(protection=(ProtectionLevel.INTEGRITY, ProtectionLevel.CLEAR))
        pair.establish()
        step = pair.level(ProtectionLevel.CLEAR)
        self.assertTrue(step.result.succeeded)
        self.assertIsNone(step.result.protection)
        self.assertEqual(pair.client.unwrap(step.send[4:]).message, b"\x00")

    def test_nec_raw_octet_refused_by_default(self):
        pair = Pair()
        pair.establish()
        step = pair.level(ProtectionLevel.INTEGRITY, wrapped=False)
        self.assertTrue(step.send.endswith(ABORT))
        self.assertFalse(step.result.succeeded)

    def test_nec_raw_octet_accepted_and_answered_raw(self):
        pair = Pair(nec=True)
        pair.establish()
        step = pair.level(ProtectionLevel.INTEGRITY, wrapped=False)
        self.assertTrue(step.result.succeeded)
        self.assertEqual(step.send, frame(MessageType.PROTECTION, b"\x01"))
        self.assertTrue(step.result.identity.attributes["nec"])

    def test_protection_engine_and_first_sequence_after_each_kind_of_level_message(self):
        """
        The OpenSSL codec starts from the level message's sequence number
        (wrapped) or the context's first (NEC with Kerberos); NEC under
        SPNEGO, where mechListMIC tokens may have used numbers, stays with
        the library.  Each time the client's next token is accepted.
        """
        for mech, nec, engine in (("krb5", False, "openssl"), ("spnego", False, "openssl"),
                                  ("krb5", True, "openssl"), ("spnego", True, "library")):
            pair = Pair(mech=mech, nec=nec, protection=(ProtectionLevel.INTEGRITY,))
            pair.establish()
            step = pair.level(ProtectionLevel.INTEGRITY, wrapped=not nec)
            protection = step.result.protection
            self.assertEqual(protection.engine, engine, (mech, nec))
            data = frame(MessageType.ENCAPSULATION, pair.client.wrap(b"first", False).message)
            self.assertEqual(protection.unprotect(data), b"first", (mech, nec))
            answer = protection.protect(b"answer")[4:]
            self.assertEqual(pair.client.unwrap(answer).message, b"answer", (mech, nec))

    def test_garbage_context_token_aborts(self):
        pair = Pair()
        step = pair.server.receive(frame(MessageType.AUTHENTICATION, b"\x60\x03\x06\x01\x00"))
        self.assertEqual(step.send, ABORT)
        self.assertFalse(step.result.succeeded)

    def test_valid_krb5_token_refused_when_only_spnego_allowed(self):
        pair = Pair(mechanisms=("spnego",))
        step = pair.server.receive(frame(MessageType.AUTHENTICATION, pair.client.step()))
        self.assertEqual(step.send, ABORT)
        self.assertIn("krb5 is not allowed", step.result.reason)

    def test_spnego_token_refused_when_only_krb5_allowed(self):
        pair = Pair(mech="spnego", mechanisms=("krb5",))
        step = pair.server.receive(frame(MessageType.AUTHENTICATION, pair.client.step()))
        self.assertIn("spnego is not allowed", step.result.reason)

    def test_wrong_message_type_first(self):
        pair = Pair()
        step = pair.server.receive(frame(MessageType.PROTECTION, b"\x01"))
        self.assertEqual(step.send, ABORT)
        self.assertIn("MTYP 01", step.result.reason)

    def test_bad_version(self):
        pair = Pair()
        step = pair.server.receive(b"\x02\x01\x00\x01x")
        self.assertEqual(step.send, ABORT)
        self.assertIn("malformed", step.result.reason)

    def test_client_abort(self):
        pair = Pair()
        step = pair.server.receive(ABORT)
        self.assertFalse(step.result.succeeded)
        self.assertIn("client aborted", step.result.reason)

    def test_replayed_context_token_is_refused(self):
        pair = Pair()
        token = pair.client.step()
        first = pair.server.receive(frame(MessageType.AUTHENTICATION, token))
        self.assertIsNone(first.result)
        replay = Pair()
        step = replay.server.receive(frame(MessageType.AUTHENTICATION, token))
        self.assertEqual(step.send, ABORT)
        self.assertIn("GSS-API error", step.result.reason)

    def test_tampered_level_message_aborts(self):
        pair = Pair()
        pair.establish()
        token = bytearray(pair.client.wrap(b"\x02", False).message)
        token[-1] ^= 1
        step = pair.server.receive(frame(MessageType.PROTECTION, bytes(token)))
        self.assertEqual(step.send[-2:], ABORT)

    def test_every_truncation_waits(self):
        pair = Pair()
        whole = frame(MessageType.AUTHENTICATION, pair.client.step())
        for cut in range(len(whole)):
            fresh = Pair()
            step = fresh.server.receive(whole[:cut])
            self.assertIsNone(step.result)
            self.assertEqual(step.send, b"")

    def test_unusable_keytab_is_a_config_error(self):
        error = self.assertRaises(ConfigError, GSSAPIServerFactory, keytab="/nonexistent/keytab")
        self.assertIn("/nonexistent/keytab", str(error))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_end_in_a_step_never_an_exception(self, data):
        pair = Pair()
        step = pair.server.receive(data)
        if step.result is not None:
            self.assertFalse(step.result.succeeded)


class ClientConversationTests(SynchronousTestCase):
    def client(self, **options):
        options.setdefault("host", SERVICE_HOST)
        return GSSAPIClientFactory(runner=synchronous, **options).buildAuthenticator(SESSION)

    def test_server_abort_fails_with_reason(self):
        conversation = self.client()
        first = self.successResultOf(conversation.begin())
        self.assertEqual(first.send[:2], b"\x01\x01")
        step = conversation.receive(ABORT)
        self.assertFalse(step.result.succeeded)
        self.assertIn("refused", step.result.reason)

    def test_unacceptable_answer_fails(self):
        conversation = self.client(level=ProtectionLevel.INTEGRITY)
        first = self.successResultOf(conversation.begin())
        realm = test_realm()
        server = GSSAPIServerFactory(keytab=realm.service_keytab, protection=(ProtectionLevel.CONFIDENTIALITY,))
        server_side = server.buildAuthenticator(SESSION)
        reply = server_side.receive(first.send)
        level_request = self.successResultOf(maybeDeferred(conversation.receive, reply.send))
        answer = server_side.receive(level_request.send)
        step = conversation.receive(answer.send)
        self.assertFalse(step.result.succeeded)
        self.assertIn("not acceptable", step.result.reason)

    def test_garbage_from_server_fails(self):
        conversation = self.client()
        self.successResultOf(conversation.begin())
        step = self.successResultOf(maybeDeferred(conversation.receive, frame(MessageType.AUTHENTICATION, b"junk")))
        self.assertFalse(step.result.succeeded)
        self.assertIn("GSS-API error", step.result.reason)


class TokenMechanismTests(SynchronousTestCase):
    def test_krb5_and_spnego_headers(self):
        self.assertEqual(token_mechanism(b"\x60\x0b\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02"), "1.2.840.113554.1.2.2")
        self.assertEqual(token_mechanism(b"\x60\x08\x06\x06\x2b\x06\x01\x05\x05\x02"), "1.3.6.1.5.5.2")

    def test_no_header(self):
        self.assertIsNone(token_mechanism(b"NTLMSSP\x00"))
        self.assertIsNone(token_mechanism(b""))
        self.assertIsNone(token_mechanism(b"\x60"))

    @given(st.binary(max_size=40))
    def test_never_raises(self, data):
        result = token_mechanism(data)
        self.assertTrue(result is None or isinstance(result, str))


class OversizedTokenTests(SynchronousTestCase):
    def test_largest_possible_junk_token_is_refused_with_abort(self):
        pair = Pair()
        # LEN is two octets: 65535 is the most a client can claim; junk of that size is refused.
        step = pair.server.receive(frame(MessageType.AUTHENTICATION, b"\x60" + b"\xff" * 65534))
        self.assertEqual(step.send, ABORT)
        self.assertFalse(step.result.succeeded)

    def test_token_cut_short_by_the_connection_waits_without_buffering_more(self):
        pair = Pair()
        header = b"\x01\x01\xff\xff"
        step = pair.server.receive(header + b"x" * 1000)
        self.assertIsNone(step.result)
        self.assertEqual(step.send, b"")
