"""Tests for txsocksgss.wire.reader: the cursor, the buffer and their limits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.errors import InvalidField, MessageTooLong, TruncatedMessage
from txsocksgss.wire.reader import MessageBuffer, NeedMore, Reader, parse_exactly


def _two_shorts(reader: Reader) -> tuple[int, int]:
    return reader.u16(), reader.u16()


def _nul_terminated(reader: Reader) -> bytes:
    value = reader.until(b"\x00", 5)
    if value is None:
        raise MessageTooLong("too long")
    return value


def _reject_x(reader: Reader) -> bytes:
    value = reader.take(1)
    if value == b"x":
        raise InvalidField("x")
    return value


class ReaderTests(SynchronousTestCase):
    def test_fixed_width_fields_are_network_byte_order(self) -> None:
        reader = Reader(b"\x01\x02\x03\x04\x05\x06\x07abc")
        self.assertEqual(reader.u8(), 0x01)
        self.assertEqual(reader.u16(), 0x0203)
        self.assertEqual(reader.u32(), 0x04050607)
        self.assertEqual(reader.take(3), b"abc")
        self.assertEqual(reader.remaining, 0)

    def test_each_read_past_the_end_needs_more_and_does_not_move(self) -> None:
        for read in (lambda r: r.u8(), lambda r: r.u16(), lambda r: r.u32(), lambda r: r.take(2)):
            reader = Reader(b"")
            self.assertRaises(NeedMore, read, reader)
            self.assertEqual(reader.offset, 0)
        reader = Reader(b"\x01")
        self.assertRaises(NeedMore, reader.u16)
        self.assertRaises(NeedMore, reader.take, 2)
        self.assertEqual(reader.offset, 0)

    def test_take_zero_bytes_is_empty(self) -> None:
        self.assertEqual(Reader(b"").take(0), b"")

    def test_reads_from_an_offset_and_from_any_buffer_type(self) -> None:
        for data in (b"\xffab\x00c", bytearray(b"\xffab\x00c"), memoryview(b"\xffab\x00c")):
            reader = Reader(data, offset=1)
            self.assertEqual(reader.until(b"\x00", 10), b"ab")
            self.assertEqual(reader.take(1), b"c")

    def test_take_returns_bytes_not_a_view(self) -> None:
        buffer = bytearray(b"abc")
        chunk = Reader(buffer).take(3)
        buffer[0] = ord("z")
        self.assertEqual(chunk, b"abc")
        self.assertIsInstance(chunk, bytes)

    def test_until_reads_up_to_the_limit(self) -> None:
        reader = Reader(b"abcde\x00rest")
        self.assertEqual(reader.until(b"\x00", 5), b"abcde")
        self.assertEqual(reader.offset, 6)

    def test_until_without_terminator_needs_more_up_to_the_limit(self) -> None:
        self.assertRaises(NeedMore, Reader(b"abcde").until, b"\x00", 5)

    def test_until_past_the_limit_is_none_before_the_terminator_arrives(self) -> None:
        self.assertIsNone(Reader(b"abcdef").until(b"\x00", 5))
        self.assertIsNone(Reader(b"abcdef\x00").until(b"\x00", 5))

    def test_until_multibyte_terminator_split_at_the_limit_needs_more(self) -> None:
        """
        Regression: with limit 3, b"abc\\r" may still become b"abc\\r\\n";
        it used to be reported as over the limit.
        """
        self.assertRaises(NeedMore, Reader(b"abc\r").until, b"\r\n", 3)
        self.assertEqual(Reader(b"abc\r\n").until(b"\r\n", 3), b"abc")
        self.assertIsNone(Reader(b"abcd\r").until(b"\r\n", 3))
        self.assertIsNone(Reader(b"abc\rx").until(b"\r\n", 3))

    @given(st.binary(max_size=20), st.integers(min_value=0, max_value=20))
    def test_until_agrees_with_find(self, data: bytes, limit: int) -> None:
        index = data.find(b"\r\n")
        reader = Reader(data)
        if 0 <= index <= limit:
            self.assertEqual(reader.until(b"\r\n", limit), data[:index])
            self.assertEqual(reader.offset, index + 2)
            return
        try:
            result = reader.until(b"\r\n", limit)
        except NeedMore:
            # Only while the terminator could still end within the limit.
            self.assertLess(len(data), limit + 2)
        else:
            self.assertIsNone(result)
            self.assertGreater(len(data), limit)
        self.assertEqual(reader.offset, 0)


class MessageBufferTests(SynchronousTestCase):
    def test_whole_message_is_returned_and_consumed(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(b"\x00\x01\x00\x02\x00\x03")
        self.assertEqual(buffer.next(_two_shorts), (1, 2))
        self.assertEqual(len(buffer), 2)
        self.assertEqual(buffer.take_all(), b"\x00\x03")
        self.assertEqual(len(buffer), 0)

    def test_partial_message_is_none_and_kept(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(b"\x00\x01\x00")
        self.assertIsNone(buffer.next(_two_shorts))
        self.assertEqual(len(buffer), 3)
        buffer.feed(b"\x02")
        self.assertEqual(buffer.next(_two_shorts), (1, 2))

    def test_error_propagates_and_leaves_the_buffer_as_it_was(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(b"xy")
        self.assertRaises(InvalidField, buffer.next, _reject_x)
        self.assertEqual(len(buffer), 2)
        self.assertEqual(buffer.take_all(), b"xy")

    def test_more_than_limit_bytes_without_a_message_is_too_long(self) -> None:
        buffer = MessageBuffer(limit=3)
        buffer.feed(b"\x00\x01\x00")
        self.assertIsNone(buffer.next(_two_shorts))
        buffer = MessageBuffer(limit=3)
        buffer.feed(b"\x00\x01\x00\x02")
        # A complete message is fine even if it is longer than the limit...
        self.assertEqual(buffer.next(_two_shorts), (1, 2))
        # ...but an incomplete one past the limit is not.
        buffer = MessageBuffer(limit=3)
        buffer.feed(b"abcd")
        self.assertRaises(MessageTooLong, buffer.next, _nul_terminated)

    def test_default_limit_holds_a_maximal_frame(self) -> None:
        self.assertGreaterEqual(MessageBuffer().limit, 65536 + 12)

    @given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=10),
           st.lists(st.integers(min_value=0, max_value=50), max_size=8))
    def test_messages_come_out_in_order_whatever_the_chunking(self, pairs, cuts) -> None:
        data = b"".join(a.to_bytes(2, "big") + b.to_bytes(2, "big") for a, b in pairs)
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        buffer = MessageBuffer()
        out = []
        for start, end in zip(points, points[1:]):
            buffer.feed(data[start:end])
            while (message := buffer.next(_two_shorts)) is not None:
                out.append(message)
        self.assertEqual(out, pairs)


class ParseExactlyTests(SynchronousTestCase):
    def test_whole_message(self) -> None:
        self.assertEqual(parse_exactly(_two_shorts, b"\x00\x01\x00\x02"), (1, 2))

    def test_incomplete_message_is_truncated(self) -> None:
        self.assertRaises(TruncatedMessage, parse_exactly, _two_shorts, b"\x00\x01\x00")

    def test_leftover_bytes_are_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_exactly, _two_shorts, b"\x00\x01\x00\x02\x00")
