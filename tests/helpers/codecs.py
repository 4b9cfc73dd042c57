"""
Checks every codec test runs: round trip, partial input, trailing bytes, fuzzing.

Each helper takes the running test case first and fails it through its
assertions, so a failure points at the property that broke.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from hypothesis import strategies as st

from txsocksgss.errors import ProtocolError
from txsocksgss.wire.reader import MessageBuffer, Reader, parse_exactly
from txsocksgss.wire.socks5 import Address, AddressType

Parse = Callable[[Reader], Any]

# Large enough for any message these tests build (a 64 KiB token, a MAF cap).
_BUFFER_LIMIT = 1 << 20


def assert_parses_exactly(case: Any, parse: Parse, data: bytes, expected: Any) -> None:
    """``data`` parses to ``expected`` and the parse reads every byte of it, no more."""
    reader = Reader(data)
    case.assertEqual(parse(reader), expected)
    case.assertEqual(reader.offset, len(data))
    case.assertEqual(parse_exactly(parse, data), expected)


def assert_prefixes_need_more(case: Any, parse: Parse, data: bytes) -> None:
    """Every proper prefix of ``data`` is "not yet" (``None``), never an error."""
    for end in range(len(data)):
        buffer = MessageBuffer(limit=_BUFFER_LIMIT)
        buffer.feed(data[:end])
        case.assertIsNone(buffer.next(parse), f"prefix of {end} bytes")
        case.assertEqual(len(buffer), end)


def assert_byte_by_byte(case: Any, parse: Parse, data: bytes, expected: Any) -> None:
    """Fed one byte at a time, one buffer yields nothing until the last byte, then ``expected``."""
    buffer = MessageBuffer(limit=_BUFFER_LIMIT)
    for index in range(len(data) - 1):
        buffer.feed(data[index:index + 1])
        case.assertIsNone(buffer.next(parse), f"after {index + 1} bytes")
    buffer.feed(data[-1:])
    case.assertEqual(buffer.next(parse), expected)
    case.assertEqual(len(buffer), 0)


def assert_leaves_trailing(case: Any, parse: Parse, data: bytes, expected: Any, trailing: bytes) -> None:
    """With ``trailing`` bytes after it, the message parses and the trailing bytes stay buffered."""
    buffer = MessageBuffer(limit=_BUFFER_LIMIT)
    buffer.feed(data + trailing)
    case.assertEqual(buffer.next(parse), expected)
    case.assertEqual(len(buffer), len(trailing))
    case.assertEqual(buffer.take_all(), trailing)


def assert_codec(case: Any, parse: Parse, message: Any, wire: bytes | None = None, trailing: bytes = b"\x00\xffrest") -> None:
    """
    The whole contract for one message: it serializes (to ``wire`` when
    given), parses back equal from the whole bytes, with trailing bytes,
    byte by byte, and every proper prefix is "need more".
    """
    data = message.serialize()
    if wire is not None:
        case.assertEqual(data, wire)
    assert_parses_exactly(case, parse, data, message)
    assert_leaves_trailing(case, parse, data, message, trailing)
    assert_prefixes_need_more(case, parse, data)
    assert_byte_by_byte(case, parse, data, message)


def assert_stream(case: Any, parse: Parse, messages: Sequence[Any], cuts: Sequence[int]) -> None:
    """
    Several messages back to back, delivered in chunks split at ``cuts``
    (offsets into the concatenation), come out in order, each exactly once.
    """
    data = b"".join(message.serialize() for message in messages)
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    buffer = MessageBuffer(limit=_BUFFER_LIMIT)
    received = []
    for start, end in zip(points, points[1:]):
        buffer.feed(data[start:end])
        while (message := buffer.next(parse)) is not None:
            received.append(message)
    case.assertEqual(received, list(messages))
    case.assertEqual(len(buffer), 0)


def assert_total(case: Any, parse: Parse, data: bytes) -> None:
    """
    Arbitrary bytes parse, are "need more", or raise a `ProtocolError`;
    any other exception fails the test.  A message that does parse
    serializes to bytes that parse back to the same message.
    """
    buffer = MessageBuffer(limit=_BUFFER_LIMIT)
    buffer.feed(data)
    try:
        message = buffer.next(parse)
    except ProtocolError:
        case.assertEqual(len(buffer), len(data), "a failed parse consumed bytes")
        return
    if message is None:
        case.assertEqual(len(buffer), len(data))
        return
    case.assertEqual(parse_exactly(parse, message.serialize()), message)


def fuzz_bytes(*prefixes: bytes, tokens: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """
    Byte strings for `assert_total`: random bytes, random bytes after one of
    ``prefixes`` (so the parser gets past its version octet), and, when
    given, strings assembled from ``tokens`` (for the text protocols).
    """
    options = [st.binary(max_size=300)]
    if prefixes:
        options.append(
            st.tuples(st.sampled_from(prefixes), st.binary(max_size=300)).map(b"".join)
        )
    if tokens:
        options.append(st.lists(st.sampled_from(tokens), max_size=40).map(b"".join))
    return st.one_of(options)


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[Any]) -> bytes:
    """A valid message's bytes with a few bytes replaced, then perhaps cut short."""
    data = bytearray(draw(messages).serialize())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data[index] = draw(st.integers(min_value=0, max_value=255))
    end = draw(st.integers(min_value=0, max_value=len(data)))
    return bytes(data[:end] if draw(st.booleans()) else data)


trailing_bytes = st.binary(min_size=1, max_size=40)
cut_points = st.lists(st.integers(min_value=0, max_value=10_000), max_size=10)

_ports = st.integers(min_value=0, max_value=0xFFFF)
_domain_names = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=255
)
addresses = st.one_of(
    st.builds(lambda ip, port: Address(AddressType.IPV4, str(ip), port), st.ip_addresses(v=4), _ports),
    st.builds(lambda ip, port: Address(AddressType.IPV6, str(ip), port), st.ip_addresses(v=6), _ports),
    st.builds(lambda name, port: Address(AddressType.DOMAIN, name, port), _domain_names, _ports),
)
"""SOCKS 5 addresses of every type, in the canonical text form a parse yields."""
