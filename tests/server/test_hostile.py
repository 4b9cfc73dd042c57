"""
Hostile input against the running server, over real sockets on 127.0.0.1.

A seeded generator makes malformed, truncated, oversized and random input
for every stage of the protocol: the SOCKS 5 greeting and request, SOCKS 4
and 4a, the RFC 1929 subnegotiation, the MAF messages (before, inside and
after a sub-method) and, with a Kerberos realm, RFC 1961 frames (context
establishment, protection-level negotiation, and the protected stream).
Each case is one connection; it sends its bytes whole or cut into pieces, then
half-closes, closes, aborts, or falls silent (truncated input only: the
negotiation timeout must end those).

While the cases run, a well-behaved client fetches a body through the same
server again and again, byte-exact.  Afterwards:

- nothing was logged as unhandled, and no traceback (bad input from the
  network is never a crash);
- every hostile connection was closed by the server in bounded time, and
  each was logged as exactly one session;
- every session drained and the process's file descriptors are back to
  their baseline;
- targeted cases got the answer docs/protocol.rst promises (REP 07 for an unknown
  command, 08 for an unknown address type, the RFC 1961 abort message, a
  MAF FAILURE, SOCKS 4 code 91, ...).

No case can reach the network: a default-deny rule lets requests reach only
127.0.0.0/8 and ::1, names resolve from a table, and the server's reactor
refuses outgoing connections to any other address.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from tests.helpers.clients import Fetcher, HostileClient
from tests.helpers.fakes import FakeResolver
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.stress import open_fds, waitUntil
from txsocksgss.auth.maf import MAFClientFactory, TestSubMethodClientFactory
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.server.rules import rules_from_table
from txsocksgss.wire.maf import (
    Instruction,
    MethodMessage,
    SubMethod,
    SubMethodsSupported,
    WhatNext,
)
from txsocksgss.wire.socks4 import SOCKS4Command, SOCKS4Request
from txsocksgss.wire.socks5 import Address, Command, Request
from txsocksgss.wire.userpass import UserPassRequest

NEGOTIATION_TIMEOUT = 3.0
# A case that half-closes, closes or aborts must be closed by the server within this.
_PROMPT = 5.0
_IN_FLIGHT = 32
_USER, _PASSWORD = "alice", "wonderland"
_LEGIT_NAME = "legit.test"
_DENIED = "127.0.0.99"
_BODY = random.Random(99).randbytes(256 * 1024)
_ENDINGS = ("halfclose", "halfclose", "halfclose", "close", "abort")


# -- cases ----------------------------------------------------------------------

Step = tuple[str, Any]  # ("send", bytes) | ("until", predicate on what was received) | ("call", script(client))


@dataclass
class Case:
    """One hostile connection: what to send, how to end, and what the answer must be (targeted cases)."""

    stage: str
    kind: str
    steps: list[Step]
    end: str = "halfclose"
    pieces: int = 1
    check: Callable[[bytes], bool] | None = None
    seed: int = 0


@dataclass
class Outcome:
    case: Case
    port: int
    received: bytes
    held_open: bool
    error: str | None = None


def _junk(rng: random.Random, low: int, high: int) -> bytes:
    return rng.randbytes(rng.randint(low, high))


def _mutants(rng: random.Random, valid: bytes) -> tuple[str, bytes]:
    """One hostile variant of a well-formed message, and what kind of variant it is."""
    kind = rng.choice(["truncated", "flipped", "boundary", "trailing", "random", "repeated", "oversized"])
    if kind == "truncated":
        return kind, valid[: rng.randrange(len(valid))]
    if kind == "flipped":
        data = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return kind, bytes(data)
    if kind == "boundary":
        data = bytearray(valid)
        data[rng.randrange(len(data))] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF])
        return kind, bytes(data)
    if kind == "trailing":
        return kind, valid + _junk(rng, 1, 3000)
    if kind == "random":
        data = _junk(rng, 1, 2048)
        return kind, (valid[:1] + data[1:]) if rng.random() < 0.5 else data
    if kind == "repeated":
        return kind, valid * rng.randint(2, 40)
    return kind, valid + _junk(rng, 1025, 70_000)


def _ending(rng: random.Random, kind: str) -> str:
    if kind == "truncated" and rng.random() < 0.25:
        return "silent"
    return rng.choice(_ENDINGS)


def _reply_code(data: bytes, offset: int) -> int | None:
    """REP of a SOCKS 5 reply starting at ``offset``, if one is there."""
    return data[offset + 1] if len(data) >= offset + 2 and data[offset] == 5 else None


def _socks5_cases(rng: random.Random, count: int, legit_port: int) -> list[Case]:
    """The greeting, then the request after method 00."""
    greetings = [b"\x05\x01\x00", b"\x05\x02\x00\x02", b"\x05\x03\x00\x02\x08", bytes([5, 255, *range(255)])]
    requests = [
        Request(Command.CONNECT, Address.of("127.0.0.1", legit_port)).serialize(),
        Request(Command.CONNECT, Address.of(_LEGIT_NAME, legit_port)).serialize(),
        Request(Command.CONNECT, Address.of("::1", legit_port)).serialize(),
        Request(Command.CONNECT, Address.of("unknown.test", 80)).serialize(),
        Request(Command.BIND, Address.of("127.0.0.1", 0)).serialize(),
        Request(Command.UDP_ASSOCIATE, Address.of("0.0.0.0", 0)).serialize(),
        Request(Command.CONNECT, Address.of("a" * 255, 80)).serialize(),
    ]
    cases = []
    for _ in range(count):
        seed = rng.getrandbits(32)
        if rng.random() < 0.4:
            kind, data = _mutants(rng, rng.choice(greetings))
            cases.append(Case("socks5-greeting", kind, [("send", data)], _ending(rng, kind), rng.randint(1, 6),
                              seed=seed))
        else:
            kind, data = _mutants(rng, rng.choice(requests))
            steps: list[Step] = [("send", b"\x05\x01\x00")]
            if rng.random() < 0.5:
                steps.append(("until", lambda r: len(r) >= 2))
            steps.append(("send", data))
            cases.append(Case("socks5-request", kind, steps, _ending(rng, kind), rng.randint(1, 6), seed=seed))
    # Targeted: what docs/protocol.rst promises for each kind of bad request.
    for command in (0x00, 0x04, 0x7F, 0xFF):
        cases.append(Case("socks5-request", "bad command",
                          [("send", b"\x05\x01\x00\x05" + bytes([command]) + b"\x00\x01\x7f\x00\x00\x01\x00\x50")],
                          check=lambda r: _reply_code(r, 2) == 0x07))
    for atyp in (0x00, 0x02, 0x05, 0xFF):
        cases.append(Case("socks5-request", "bad address type",
                          [("send", b"\x05\x01\x00\x05\x01\x00" + bytes([atyp]) + b"\x7f\x00\x00\x01\x00\x50")],
                          check=lambda r: _reply_code(r, 2) == 0x08))
    for bad in (b"\x05\x01\x00\x03\x00\x00\x50", b"\x05\x01\x00\x03\x03a\x00b\x00\x50",
                b"\x05\x01\x00\x03\x02\xc3\xa9\x00\x50", b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50"):
        cases.append(Case("socks5-request", "bad field", [("send", b"\x05\x01\x00" + bad)],
                          check=lambda r: _reply_code(r, 2) == 0x01))
    cases.append(Case("socks5-request", "denied", [("send", b"\x05\x01\x00" + Request(
        Command.CONNECT, Address.of(_DENIED, legit_port)).serialize())], check=lambda r: _reply_code(r, 2) == 0x02))
    cases.append(Case("socks5-request", "unresolved", [("send", b"\x05\x01\x00" + Request(
        Command.CONNECT, Address.of("unknown.test", 80)).serialize())], check=lambda r: _reply_code(r, 2) == 0x04))
    cases.append(Case("socks5-greeting", "no acceptable method", [("send", b"\x05\x02\x01\x80")],
                      check=lambda r: r == b"\x05\xff"))
    cases.append(Case("socks5-greeting", "no method", [("send", b"\x05\x00")], check=lambda r: r == b""))
    cases.append(Case("socks5-greeting", "over the buffer", [("send", b"\x05\xff" + b"\x00" * 2000)],
                      check=lambda r: r[:2] == b"\x05\x00"))
    cases.append(Case("socks5-greeting", "nothing", [], "silent"))
    return cases


def _socks4_cases(rng: random.Random, count: int, legit_port: int) -> list[Case]:
    valid = [
        SOCKS4Request(SOCKS4Command.CONNECT, legit_port, "127.0.0.1", b"user").serialize(),
        SOCKS4Request(SOCKS4Command.CONNECT, legit_port, "0.0.0.1", b"", _LEGIT_NAME).serialize(),
        SOCKS4Request(SOCKS4Command.BIND, 0, "127.0.0.1", b"u" * 255).serialize(),
        SOCKS4Request(SOCKS4Command.CONNECT, 80, "0.0.0.9", b"x" * 255, "h" * 255).serialize(),
    ]
    cases = []
    for _ in range(count):
        kind, data = _mutants(rng, rng.choice(valid))
        cases.append(Case("socks4", kind, [("send", data)], _ending(rng, kind), rng.randint(1, 6),
                          seed=rng.getrandbits(32)))
    rejected = lambda r: len(r) == 8 and r[:2] == b"\x00\x5b"  # noqa: E731
    for bad in (b"\x04\x03\x00\x50\x7f\x00\x00\x01\x00",  # unknown command
                b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300,  # user id past 255 bytes
                b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00",  # 4a with an empty host name
                b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\xc3\xa9\x00",  # 4a host name not ASCII
                b"\x04\x01\x00\x50" + ipaddress.IPv4Address(_DENIED).packed + b"\x00"):  # denied
        cases.append(Case("socks4", "targeted", [("send", bad)], check=rejected))
    return cases


def _userpass_cases(rng: random.Random, count: int, legit_port: int) -> list[Case]:
    good = UserPassRequest(_USER.encode(), _PASSWORD.encode()).serialize()
    valid = [good, UserPassRequest(b"mallory", b"x").serialize(), UserPassRequest(b"\xff" * 255, b"p" * 255).serialize()]
    request = Request(Command.CONNECT, Address.of("127.0.0.1", legit_port)).serialize()
    cases = []
    for _ in range(count):
        steps: list[Step] = [("send", b"\x05\x01\x02")]
        if rng.random() < 0.5:
            steps.append(("until", lambda r: len(r) >= 2))
        if rng.random() < 0.25:
            # Past the subnegotiation: a hostile request after good credentials.
            kind, data = _mutants(rng, request)
            steps.append(("send", good))
            steps.append(("until", lambda r: len(r) >= 4))
        else:
            kind, data = _mutants(rng, rng.choice(valid))
        steps.append(("send", data))
        cases.append(Case("userpass", kind, steps, _ending(rng, kind), rng.randint(1, 6), seed=rng.getrandbits(32)))
    refused = lambda r: r[:3] == b"\x05\x02\x01" and len(r) == 4 and r[3] != 0  # noqa: E731
    for bad in (UserPassRequest(_USER.encode(), b"wrong").serialize(), b"\x02\x01a\x01b", b"\x01\x00\x01b",
                b"\x01\x01a\x00"):
        cases.append(Case("userpass", "targeted", [("send", b"\x05\x01\x02" + bad)], check=refused))
    # Credentials, then far more than the server keeps while it checks them.
    cases.append(Case("userpass", "flood while checking", [("send", b"\x05\x01\x02" + good + b"\x00" * 300_000)]))
    for _ in range(8):
        # Credentials, then gone before the answer.
        cases.append(Case("userpass", "gone while checking", [("send", b"\x05\x01\x02" + good)], end="abort"))
    return cases


def _maf(instruction: Instruction, method: int, data: bytes = b"") -> bytes:
    return MethodMessage(instruction, method, data).serialize()


def _maf_cases(rng: random.Random, count: int, legit_port: int) -> list[Case]:
    test, userpass = SubMethod.TEST, 3
    offer_test = SubMethodsSupported((test,)).serialize()
    process_test = _maf(Instruction.PROCESS, test, b"TEST")
    what_next = WhatNext().serialize()
    credentials = UserPassRequest(_USER.encode(), _PASSWORD.encode()).serialize()
    request = Request(Command.CONNECT, Address.of("127.0.0.1", legit_port)).serialize()
    # The well-behaved conversation, message by message, with how much the server has said after each.
    script = [(offer_test, 2 + 12), (process_test, 2 + 12 + 16), (what_next, 2 + 12 + 16 + 19), (request, None)]
    offers = [offer_test, SubMethodsSupported((userpass, test)).serialize(),
              SubMethodsSupported(tuple(range(1, 256))).serialize(),
              SubMethodsSupported((0x10000, SubMethod.MORE_METHODS_AVAILABLE)).serialize()]
    in_method = [process_test, _maf(Instruction.PROCESS, test, b"NOPE"), _maf(Instruction.PROCESS, 7, b"TEST"),
                 what_next, _maf(Instruction.DO, test), b"\x06\x00\x00\x00",
                 _maf(Instruction.PROCESS, test, b"T" * 65536)]
    after_method = [what_next, process_test, b"\x06\x00\x00\x00", offer_test, _maf(Instruction.SUCCESS, 0)]
    cases = []
    for _ in range(count):
        depth = rng.randrange(4)
        steps: list[Step] = [("send", b"\x05\x01\x08")]
        wait = rng.random() < 0.5
        if wait:
            steps.append(("until", lambda r: len(r) >= 2))
        for message, answered in script[:depth]:
            steps.append(("send", message))
            if wait and answered:
                steps.append(("until", lambda r, n=answered: len(r) >= n))
        pool = [offers, in_method, after_method, [request]][depth]
        kind, data = _mutants(rng, rng.choice(pool))
        steps.append(("send", data))
        cases.append(Case(f"maf-{['offers', 'in-method', 'after-method', 'request'][depth]}", kind, steps,
                          _ending(rng, kind), rng.randint(1, 6), seed=rng.getrandbits(32)))
    # The userpass sub-method inside MAF, with hostile sub-method data.
    for _ in range(count // 4):
        kind, data = _mutants(rng, credentials)
        steps = [("send", b"\x05\x01\x08" + SubMethodsSupported((userpass, test)).serialize()),
                 ("until", lambda r: len(r) >= 14), ("send", _maf(Instruction.PROCESS, userpass, data))]
        cases.append(Case("maf-userpass", kind, steps, _ending(rng, kind), rng.randint(1, 3), seed=rng.getrandbits(32)))

    def failure_after(offset: int) -> Callable[[bytes], bool]:
        return lambda r: len(r) >= offset + 12 and r[offset] == Instruction.FAILURE

    for bad in (b"\x01\x01\x00\x00\x01\x00\x00\x00\x01",  # VER 01
                b"\x01\x00\x00\x00\x00",  # no sub-method
                b"\x09\x00\x00\x00",  # unknown instruction
                _maf(Instruction.PROCESS, test, b"TEST"),  # PROCESS before any DO
                SubMethodsSupported((0x10000,)).serialize(),  # nothing acceptable
                b"\x05\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff"):  # LEN 4 GiB
        cases.append(Case("maf-offers", "targeted", [("send", b"\x05\x01\x08" + bad)], check=failure_after(2)))
    # Inside the test sub-method (after DO, 12 bytes): a wrong id or an ACKNOWLEDGE is a protocol
    # error (FAILURE at once); wrong data makes the sub-method answer FAIL (16 bytes) and the
    # final FAILURE follows the client's WHAT NEXT?.
    for bad, offset in ((_maf(Instruction.PROCESS, 7, b"TEST"), 14), (b"\x06\x00\x00\x00", 14),
                        (_maf(Instruction.PROCESS, test, b"NOPE") + what_next, 30)):
        cases.append(Case("maf-in-method", "targeted", [("send", b"\x05\x01\x08" + offer_test + bad)],
                          check=failure_after(offset)))
    return cases


# -- GSS-API (RFC 1961) ----------------------------------------------------------


def _gss_frame(mtyp: int, token: bytes) -> bytes:
    return bytes([1, mtyp]) + struct.pack("!H", len(token)) + token


def _frame_at(data: bytes, offset: int) -> tuple[int, bytes, int] | None:
    """(MTYP, token, end offset) of the whole frame at ``offset``, if it is all there."""
    if len(data) < offset + 2:
        return None
    if data[offset + 1] == 0xFF:
        return 0xFF, b"", offset + 2
    if len(data) < offset + 4:
        return None
    length = struct.unpack("!H", data[offset + 2:offset + 4])[0]
    if len(data) < offset + 4 + length:
        return None
    return data[offset + 1], data[offset + 4:offset + 4 + length], offset + 4 + length


def _krb5_context() -> Any:
    import gssapi

    flags = (gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.replay_detection
             | gssapi.RequirementFlag.out_of_sequence_detection | gssapi.RequirementFlag.integrity
             | gssapi.RequirementFlag.confidentiality)
    return gssapi.SecurityContext(
        name=gssapi.Name("rcmd@localhost", gssapi.NameType.hostbased_service),
        mech=gssapi.OID.from_int_seq("1.2.840.113554.1.2.2"), flags=flags, usage="initiate")


_KRB5_HEADER = b"\x60\x82\x02\x00\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02"
_SPNEGO_HEADER = b"\x60\x82\x02\x00\x06\x06\x2b\x06\x01\x05\x05\x02"


def _gss_cases(rng: random.Random, count: int, legit_port: int) -> list[Case]:
    """Context tokens, protection-level messages and protected frames, over real Kerberos contexts."""
    request = Request(Command.CONNECT, Address.of("127.0.0.1", legit_port)).serialize()
    cases: list[Case] = []

    def first_tokens(rng: random.Random) -> tuple[str, bytes]:
        choice = rng.randrange(6)
        if choice == 0:
            return _mutants(rng, _gss_frame(1, bytes(_krb5_context().step())))
        if choice == 1:
            return "junk krb5 token", _gss_frame(1, _KRB5_HEADER + _junk(rng, 0, 2000))
        if choice == 2:
            return "junk spnego token", _gss_frame(1, _SPNEGO_HEADER + _junk(rng, 0, 2000))
        if choice == 3:
            return "frame header", bytes([rng.choice([0, 1, 2, 0xFF]), rng.choice([0, 1, 2, 3, 4, 0x7F, 0xFF])]) + \
                struct.pack("!H", rng.choice([0, 1, 0xFFFF])) + _junk(rng, 0, 300)
        if choice == 4:
            return "junk krb5 token", _gss_frame(1, _KRB5_HEADER + _junk(rng, 65535 - len(_KRB5_HEADER),
                                                                         65535 - len(_KRB5_HEADER)))
        return _mutants(rng, _gss_frame(1, _KRB5_HEADER + _junk(rng, 10, 100)))

    def context_case(rng: random.Random) -> Case:
        kind, data = first_tokens(rng)
        return Case("gssapi-context", kind, [("send", b"\x05\x01\x01"), ("send", data)], _ending(rng, kind),
                    rng.randint(1, 6), seed=rng.getrandbits(32))

    def establish(client: HostileClient) -> Deferred[Any]:
        """Greeting and a real context; fires with the context (or None if the server said no)."""
        context = _krb5_context()
        client.send(b"\x05\x01\x01" + _gss_frame(1, bytes(context.step())))

        def answered(ok: bool) -> Any:
            frame = _frame_at(client.received, 2)
            if not ok or frame is None or frame[0] != 1:
                return None
            context.step(frame[1])
            return context if context.complete else None

        return client.until(lambda r: _frame_at(r, 2) is not None).addCallback(answered)

    def level_message(rng: random.Random, context: Any) -> tuple[str, bytes]:
        choice = rng.randrange(7)
        if choice == 0:
            return "wrapped level", _gss_frame(2, bytes(context.wrap(bytes([rng.randrange(256)]), False).message))
        if choice == 1:
            return "wrapped sealed level", _gss_frame(2, bytes(context.wrap(bytes([rng.randrange(4)]), True).message))
        if choice == 2:
            return "wrapped octets", _gss_frame(2, bytes(context.wrap(_junk(rng, 0, 40), False).message))
        if choice == 3:
            return "raw octet", _gss_frame(2, bytes([rng.randrange(4)]))
        if choice == 4:
            return "foreign wrap", _gss_frame(2, bytes(_krb5_context().step())[-60:])
        if choice == 5:
            return "wrong type", _gss_frame(rng.choice([1, 3]), bytes(context.wrap(b"\x02", False).message))
        return _mutants(rng, _gss_frame(2, bytes(context.wrap(b"\x02", False).message)))

    def level_case(rng: random.Random) -> Case:
        case_rng = random.Random(rng.getrandbits(32))

        @inlineCallbacks
        def script(client: HostileClient) -> Any:
            context = yield establish(client)
            if context is None:
                raise AssertionError(f"no GSS-API context: {client.received.hex()}")
            kind, data = level_message(case_rng, context)
            case.kind = kind
            client.send(data)

        case = Case("gssapi-level", "level", [("call", script)], case_rng.choice(_ENDINGS))
        return case

    def protected_case(rng: random.Random) -> Case:
        case_rng = random.Random(rng.getrandbits(32))
        level = case_rng.choice([0, 1, 2])

        @inlineCallbacks
        def script(client: HostileClient) -> Any:
            context = yield establish(client)
            if context is None:
                raise AssertionError(f"no GSS-API context: {client.received.hex()}")
            start = _frame_at(client.received, 2)[2]  # type: ignore[index]
            client.send(_gss_frame(2, bytes(context.wrap(bytes([level]), False).message)))
            ok = yield client.until(lambda r: _frame_at(r, start) is not None)
            answer = _frame_at(client.received, start)
            if not ok or answer is None or answer[0] != 2:
                raise AssertionError(f"no protection-level answer: {client.received.hex()}")
            agreed = bytes(context.unwrap(answer[1]).message)[0]
            if agreed == 0:
                kind, data = _mutants(case_rng, request)
                case.kind = f"clear: {kind}"
                client.send(data)
                return
            seal = agreed == 2
            choice = case_rng.randrange(6)
            if choice == 0:
                kind, inner = _mutants(case_rng, request)
                case.kind, data = f"wrapped {kind}", _gss_frame(3, bytes(context.wrap(inner, seal).message))
            elif choice == 1:
                case.kind, data = "garbage token", _gss_frame(3, _junk(case_rng, 0, 3000))
            elif choice == 2:
                token = bytes(context.wrap(request, seal).message)
                case.kind, data = "replayed token", _gss_frame(3, token) * 2
            elif choice == 3:
                case.kind, data = "unsealed token", _gss_frame(3, bytes(context.wrap(request, False).message))
            elif choice == 4:
                token = bytes(context.wrap(request, seal).message)
                case.kind, data = "tunnel then garbage", _gss_frame(3, token) + _mutants(
                    case_rng, _gss_frame(3, bytes(context.wrap(b"GET / HTTP/1.0\r\n\r\n", seal).message)))[1]
            else:
                kind, data = _mutants(case_rng, _gss_frame(3, bytes(context.wrap(request, seal).message)))
                case.kind = f"frame {kind}"
            client.send(data)

        case = Case(f"gssapi-protected-{level}", "protected", [("call", script)], case_rng.choice(_ENDINGS))
        return case

    for _ in range(count):
        cases.append(context_case(rng))
    for _ in range(count * 3 // 4):
        cases.append(level_case(rng))
        cases.append(protected_case(rng))
    aborted = lambda r: r == b"\x05\x01\x01\xff"  # noqa: E731
    for bad in (_gss_frame(2, b"\x02"), _gss_frame(3, b"x"), b"\x01\xff", b"\x02\x01\x00\x01x",
                _gss_frame(1, b""), _gss_frame(1, _KRB5_HEADER + b"\x00" * 64)):
        cases.append(Case("gssapi-context", "targeted", [("send", b"\x05\x01\x01" + bad)], check=aborted))
    return cases


# -- the test ---------------------------------------------------------------------


class _LoopbackOnlyReactor:
    """The reactor, except that it refuses outgoing TCP connections to anything but loopback."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def connectTCP(self, host: str, port: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"the server tried to connect to {host}:{port}")
        return self._real.connectTCP(host, port, factory, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class HostileInputTests(IntegrationTestCase):
    timeout = 240

    def hostileServer(self, **config: Any) -> tuple[int, Any, int]:
        """The server under attack (and the body server it may reach); returns (socks port, factory, web port)."""
        web_port, _web = self.byteServer(_BODY)
        rules = rules_from_table({
            "rule": [{"action": "deny", "name": "denied-destination", "to": [f"{_DENIED}/32"]},
                     {"action": "allow", "name": "loopback", "to": ["127.0.0.0/8", "::1/128"]}],
            "default": "deny"})
        config.setdefault("negotiation_timeout", NEGOTIATION_TIMEOUT)
        # Bad credentials are the point here: no cool-down for the addresses sending them.
        config.setdefault("auth_fail_limit", 0)
        socks_port, factory = self.startSOCKS(rules=rules, **config)
        factory.context.resolver = FakeResolver({_LEGIT_NAME: ["127.0.0.1"]})
        factory.context.reactor = _LoopbackOnlyReactor(reactor)
        return socks_port, factory, web_port

    @inlineCallbacks
    def fetch(self, socks_port: int, web_port: int, methods: list[Any] | None) -> Any:
        endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), "127.0.0.1",
                                        web_port, methods)
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        port = connection.handshake.transport.getHost().port
        data = yield connection.protocol.done
        header, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(header.startswith(b"HTTP/1.0 200"), header[:100])
        self.assertEqual(body, _BODY, "the well-behaved client's body was not byte-exact")
        return port

    @inlineCallbacks
    def runCase(self, socks_port: int, case: Case) -> Any:
        rng = random.Random(case.seed)
        client = HostileClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port)
        yield connectProtocol(endpoint, client)
        client.transport.setTcpNoDelay(True)
        port = client.transport.getHost().port
        error = None
        try:
            for kind, argument in case.steps:
                if client.ended:
                    break
                if kind == "send":
                    yield self.sendInPieces(client, argument, case.pieces, rng)
                elif kind == "until":
                    yield client.until(argument)
                else:
                    yield argument(client)
        except Exception as e:  # a broken script is reported with its case, below
            error = f"{type(e).__name__}: {e}"
        if not client.ended:
            if case.end == "halfclose":
                client.transport.loseWriteConnection()
            elif case.end == "close":
                client.transport.loseConnection()
            elif case.end == "abort":
                client.transport.abortConnection()
        held_open = []

        def too_long() -> None:
            held_open.append(True)
            client.transport.abortConnection()

        limit = NEGOTIATION_TIMEOUT + _PROMPT if case.end == "silent" else _PROMPT
        timer = reactor.callLater(limit, too_long)
        yield client.lost
        if timer.active():
            timer.cancel()
        return Outcome(case, port, client.received, bool(held_open), error)

    @inlineCallbacks
    def sendInPieces(self, client: HostileClient, data: bytes, pieces: int, rng: random.Random) -> Any:
        if pieces <= 1 or len(data) < 2:
            client.send(data)
            return
        cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
        for start, end in zip([0, *cuts], [*cuts, len(data)]):
            client.send(data[start:end])
            # One reactor turn, so that the server reads this piece on its own.
            yield deferLater(reactor, 0, lambda: None)

    def drained(self, factory: Any, within: float = 10.0) -> Deferred[None]:
        """``whenDrained``, failing with the sessions' states if they are not all closed ``within`` seconds."""
        drained = factory.context.whenDrained()

        def stuck() -> None:
            states = sorted(str(s.state) for s in factory.context.sessions)
            drained.errback(AssertionError(f"{len(states)} sessions still open after {within}s: {states[:20]}"))

        timer = reactor.callLater(within, stuck)
        return drained.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])

    @inlineCallbacks
    def attack(self, socks_port: int, factory: Any, web_port: int, cases: list[Case],
               legit_methods: list[Any] | None = None) -> Any:
        logs = self.captureLogs()
        warm_up = yield self.fetch(socks_port, web_port, legit_methods)  # before the baseline
        yield self.drained(factory)
        fds_before = open_fds()

        semaphore = DeferredSemaphore(_IN_FLIGHT)
        done: list[bool] = []
        fetched: list[int] = [warm_up]  # the well-behaved client's source ports

        @inlineCallbacks
        def legit_loop() -> Any:
            while not done:
                port = yield self.fetch(socks_port, web_port, legit_methods)
                fetched.append(port)

        legit = legit_loop()
        # Silent cases only wait for the negotiation timeout: they need no place in the queue.
        runs = [self.runCase(socks_port, case) if case.end == "silent"
                else semaphore.run(self.runCase, socks_port, case) for case in cases]
        results = yield DeferredList(runs, consumeErrors=True)
        done.append(True)
        yield legit

        problems = []
        outcomes = []
        for case, (ok, result) in zip(cases, results):
            if not ok:
                problems.append(f"{case.stage}/{case.kind}: {result.getErrorMessage()}")
                continue
            outcomes.append(result)
            if result.error:
                problems.append(f"{case.stage}/{case.kind}: script failed: {result.error}")
            if result.held_open:
                problems.append(f"{case.stage}/{case.kind} (end {case.end}): the server kept the connection open")
            if case.check is not None and not case.check(result.received):
                problems.append(f"{case.stage}/{case.kind}: unexpected answer {result.received[:64].hex()}")
        yield self.drained(factory)
        yield waitUntil(lambda: open_fds() <= fds_before, 10,
                        f"the descriptors to come back to {fds_before} (now {open_fds()})")

        # One session line per connection.  The kernel may give a later
        # connection a source port an earlier one used, so lines and
        # connections (hostile and well-behaved) are counted per port.
        hostile_lines = [line for line in logs if line.startswith("session client=127.0.0.1:")]
        session_lines = Counter(int(line.split(" ", 2)[1].rsplit(":", 1)[1]) for line in hostile_lines)
        connections = Counter([outcome.port for outcome in outcomes] + fetched)
        for outcome in outcomes:
            if session_lines[outcome.port] != connections[outcome.port]:
                problems.append(f"{outcome.case.stage}/{outcome.case.kind}: {session_lines[outcome.port]} session "
                                f"lines for {connections[outcome.port]} connections from port {outcome.port}")
        crashes = [line for line in logs if "Unhandled" in line or "Traceback" in line]

        stages: dict[str, int] = {}
        for case in cases:
            stages[case.stage] = stages.get(case.stage, 0) + 1
        legit_ports = set(fetched)
        endings = Counter(" ".join(line.split(" outcome=", 1)[1].split(":")[0].split()[:4])
                          for line in hostile_lines
                          if int(line.split(" ", 2)[1].rsplit(":", 1)[1]) not in legit_ports)
        print(f"\nhostile: {len(cases)} cases {stages}; {len(fetched) - 1} well-behaved fetches meanwhile; "
              f"{len(problems)} problems; {len(crashes)} crashes; how the server ended the hostile sessions: "
              f"{dict(endings.most_common(25))}")
        self.assertEqual(crashes[:3], [], f"{len(crashes)} unhandled errors or tracebacks logged")
        self.assertEqual(problems[:30], [], f"{len(problems)} problems:\n" + "\n".join(problems[:30]))
        self.assertGreater(len(fetched), 1, "the well-behaved client fetched nothing while the cases ran")

    @inlineCallbacks
    def test_socks5_socks4_userpass_and_maf(self):
        passwd = self.mktemp()
        set_password(passwd, _USER, _PASSWORD.encode(), n=2**4, r=1, p=1)
        socks_port, factory, web_port = self.hostileServer(
            methods=["userpass", "maf", "none", "socks4"], passwd=passwd,
            maf_chains=["userpass+test=2", "test=1"])
        rng = random.Random(20240603)
        cases = (_socks5_cases(rng, 600, web_port) + _socks4_cases(rng, 300, web_port)
                 + _userpass_cases(rng, 300, web_port) + _maf_cases(rng, 800, web_port))
        yield self.attack(socks_port, factory, web_port, cases)

    @pytest.mark.kerberos
    @inlineCallbacks
    def test_gssapi_frames(self):
        from tests.helpers.kerberos import SERVICE_HOST, test_realm
        from txsocksgss.auth.gssapi import GSSAPIClientFactory
        from txsocksgss.wire.gssapi import ProtectionLevel

        realm = test_realm()
        socks_port, factory, web_port = self.hostileServer(
            methods=["gssapi"], gssapi_keytab=realm.service_keytab,
            gssapi_protection=["confidentiality", "integrity", "clear"])
        cases = _gss_cases(random.Random(20240604), 200, web_port)
        legit = [GSSAPIClientFactory(host=SERVICE_HOST, level=ProtectionLevel.CONFIDENTIALITY)]
        yield self.attack(socks_port, factory, web_port, cases, legit)

    @inlineCallbacks
    def test_maf_and_userpass_clients_meanwhile(self):
        """The well-behaved client authenticates too (MAF: userpass then test) while the attack runs."""
        passwd = self.mktemp()
        set_password(passwd, _USER, _PASSWORD.encode(), n=2**4, r=1, p=1)
        socks_port, factory, web_port = self.hostileServer(
            methods=["maf", "userpass"], passwd=passwd, maf_chains=["userpass+test=2", "test=1"])
        rng = random.Random(20240605)
        cases = _userpass_cases(rng, 150, web_port) + _maf_cases(rng, 150, web_port)
        legit = [MAFClientFactory([(3, UserPassClientFactory(_USER, _PASSWORD)), (SubMethod.TEST,
                                                                                    TestSubMethodClientFactory())])]
        yield self.attack(socks_port, factory, web_port, cases, legit)


@implementer(IReadDescriptor)
class _CloseOnRead:
    """Reads one byte, then closes ``victim`` (a registered writer) there and then, mid-poll."""

    def __init__(self, sock: socket.socket, victim: "_Writable") -> None:
        self.sock, self.victim = sock, victim

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.sock.recv(1)
        reactor.removeReader(self)
        reactor.removeWriter(self.victim)
        self.victim.sock.close()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "closer"


@implementer(IWriteDescriptor)
class _Writable:
    """A writable socket whose write event the poll reports, even after its close."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def doWrite(self) -> None:
        reactor.removeWriter(self)

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "writable"


class ListenInsidePollTests(IntegrationTestCase):
    """
    Found by the hostile run: "doWrite called on a twisted.internet.tcp.Port",
    logged as an Unhandled Error, and the BIND port closed under the session.

    Twisted's epoll reactor looks each event's descriptor up when it
    dispatches the event (twisted/twisted#4759).  When, inside one poll, one
    handler closes a descriptor whose event is still queued in that poll
    (here the closer; in the hostile run a tunnel ending and closing its
    upstream socket) and a later handler's BIND listens on the freed number,
    the stale write event is handed to the new listening port.
    """

    @inlineCallbacks
    def requestWithinOnePoll(self, socks_port: int, request: Request) -> Any:
        """
        Send ``request`` (method 00) so that the server handles it in the same
        poll as a descriptor closed before it and a stale event after it.
        """
        client = HostileClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), client)

        def close() -> Deferred[None]:
            client.transport.loseConnection()
            return client.lost

        self.addCleanup(close)
        client.send(b"\x05\x01\x00")
        yield client.until(lambda r: len(r) >= 2)
        closer_end, closer_peer = socket.socketpair()
        self.addCleanup(closer_end.close)
        self.addCleanup(closer_peer.close)
        victim_end, victim_peer = socket.socketpair()  # the lowest free descriptor numbers
        self.addCleanup(victim_peer.close)
        victim = _Writable(victim_end)
        reactor.addReader(_CloseOnRead(closer_end, victim))
        # Within this one turn, in this order: the closer becomes readable, the
        # request arrives, the victim is writable.  The next poll returns the
        # three in that order: the closer frees the victim's number, the
        # request makes the server listen (on that number), then the victim's
        # write event is dispatched.
        closer_peer.send(b"x")
        client.send(request.serialize())
        reactor.addWriter(victim)
        yield client.until(lambda r: len(r) >= 12)
        self.assertEqual(client.received[2:4], b"\x05\x00", client.received.hex())
        return client, struct.unpack("!H", client.received[10:12])[0]

    @inlineCallbacks
    def test_bind_port_survives_a_descriptor_reused_within_one_poll(self):
        logs = self.captureLogs()
        socks_port, _factory = self.startSOCKS()
        client, bound_port = yield self.requestWithinOnePoll(socks_port, Request(Command.BIND, Address.of("127.0.0.1", 0)))
        remote = Protocol()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", bound_port), remote)
        yield client.until(lambda r: len(r) >= 22)
        self.assertEqual(client.received[12:14], b"\x05\x00", "no second BIND reply")
        remote.transport.loseConnection()
        yield client.lost
        self.assertEqual([line for line in logs if "Unhandled" in line or "Traceback" in line], [])

    @inlineCallbacks
    def test_udp_relay_port_survives_a_descriptor_reused_within_one_poll(self):
        from tests.helpers.servers import EchoUDP
        from txsocksgss.wire.udp import UDPDatagram, parse_udp_datagram

        logs = self.captureLogs()
        echo_port = self.listenUDP(EchoUDP())
        answers: list[Deferred[bytes]] = []

        class UDPClient(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: Any) -> None:
                answers.pop(0).callback(data)

        udp_client = UDPClient()
        client_udp_port = self.listenUDP(udp_client)
        socks_port, _factory = self.startSOCKS()
        client, relay_port = yield self.requestWithinOnePoll(
            socks_port, Request(Command.UDP_ASSOCIATE, Address.of("127.0.0.1", client_udp_port)))
        answer: Deferred[bytes] = Deferred()
        answers.append(answer)
        udp_client.transport.write(UDPDatagram(0, Address.of("127.0.0.1", echo_port), b"ping").serialize(),
                                   ("127.0.0.1", relay_port))
        timer = reactor.callLater(_PROMPT, lambda: answer.called or answer.errback(
            AssertionError("no answer through the UDP relay")))
        data = yield answer
        if timer.active():
            timer.cancel()
        self.assertEqual(parse_udp_datagram(data).data, b"echo:ping")
        client.transport.loseConnection()
        yield client.lost
        self.assertEqual([line for line in logs if "Unhandled" in line or "Traceback" in line], [])
