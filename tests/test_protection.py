"""ProtectedTransport: what is written is protected; a write that cannot be protected never reaches the wire."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txsocksgss.errors import ProtocolError
from txsocksgss.interfaces import IStreamProtection
from txsocksgss.protection import ProtectedTransport


@implementer(IStreamProtection)
class Brackets:
    """Protection that frames data in brackets, and fails once ``expired`` is set."""

    name = "brackets"

    def __init__(self) -> None:
        self.expired = False

    def protect(self, data: bytes) -> bytes:
        if self.expired:
            raise ProtocolError("the security context has expired")
        return b"[" + data + b"]"

    def unprotect(self, data: bytes) -> bytes:
        return data.strip(b"[]")

    def protectDatagram(self, data: bytes) -> bytes:
        return self.protect(data)

    def unprotectDatagram(self, data: bytes) -> bytes:
        return self.unprotect(data)


class ProtectedTransportTests(SynchronousTestCase):
    def test_writes_are_protected(self):
        wire = StringTransport()
        transport = ProtectedTransport(wire, Brackets())
        transport.write(b"abc")
        transport.writeSequence([b"d", b"e"])
        transport.write(b"")
        self.assertEqual(wire.value(), b"[abc][de]")

    def test_a_failed_protection_is_reported_and_nothing_is_sent(self):
        wire = StringTransport()
        protection = Brackets()
        errors: list[ProtocolError] = []
        transport = ProtectedTransport(wire, protection, errors.append)
        protection.expired = True
        transport.write(b"secret")
        self.assertEqual(wire.value(), b"")
        [error] = errors
        self.assertIn("expired", str(error))
        self.assertFalse(wire.disconnecting)  # closing is the owner's decision

    def test_without_a_callback_the_connection_is_aborted(self):
        wire = StringTransport()
        protection = Brackets()
        transport = ProtectedTransport(wire, protection)
        protection.expired = True
        transport.write(b"secret")
        self.assertEqual(wire.value(), b"")
        self.assertTrue(wire.disconnecting)
