"""Tests for txsocksgss.wire.maf (draft-ietf-aft-socks-maf, as settled in docs/protocol.rst, MAF)."""

from __future__ import annotations

from functools import partial

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.codecs import (
    assert_codec,
    assert_parses_exactly,
    assert_stream,
    assert_total,
    cut_points,
    fuzz_bytes,
    mutated,
    trailing_bytes,
)
from txsocksgss.errors import InvalidField, MessageTooLong, UnsupportedVersion
from txsocksgss.wire.maf import (
    DEFAULT_MAX_DATA,
    GENERAL_FIRST,
    MAF_VERSION,
    PROPRIETARY_FIRST,
    PROPRIETARY_LAST,
    Acknowledge,
    Instruction,
    MethodMessage,
    RequestMore,
    RequestMoreFlags,
    SubMethod,
    SubMethodsSupported,
    WhatNext,
    parse_maf_message,
)
from txsocksgss.wire.reader import MessageBuffer, Reader

ids = st.integers(0, 0xFFFFFFFF)
flag_values = st.integers(0, 0xFFFF)
method_messages = st.one_of(
    st.builds(
        MethodMessage,
        st.sampled_from([Instruction.DO, Instruction.PROCESS]),
        ids,
        st.binary(max_size=200),
        flag_values,
    ),
    st.builds(
        MethodMessage, st.just(Instruction.SUCCESS), st.just(SubMethod.SUCCESS), st.binary(max_size=50), flag_values
    ),
    st.builds(
        MethodMessage, st.just(Instruction.FAILURE), st.just(SubMethod.FAILURE), st.binary(max_size=50), flag_values
    ),
)
messages = st.one_of(
    st.builds(SubMethodsSupported, st.lists(ids, min_size=1, max_size=255).map(tuple), flag_values),
    st.builds(RequestMore, st.sampled_from(RequestMoreFlags)),
    method_messages,
    st.builds(WhatNext, flag_values),
    st.builds(Acknowledge, flag_values),
)


class MAFRoundTripTests(SynchronousTestCase):
    @given(messages, trailing_bytes)
    def test_round_trip(self, message, trailing: bytes) -> None:
        assert_codec(self, parse_maf_message, message, trailing=trailing)

    @given(st.lists(messages, min_size=1, max_size=4), cut_points)
    def test_back_to_back_in_any_chunks(self, stream, cuts) -> None:
        assert_stream(self, parse_maf_message, stream, cuts)

    @given(fuzz_bytes(b"\x01\x00\x00\x00", b"\x03\x00\x00\x00", b"\x05\x00", b"\x02\x00"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_maf_message, data)

    @given(mutated(messages))
    def test_mutated_messages(self, data: bytes) -> None:
        assert_total(self, parse_maf_message, data)


class MAFVectorTests(SynchronousTestCase):
    def test_submethods_supported(self) -> None:
        assert_codec(
            self,
            parse_maf_message,
            SubMethodsSupported((SubMethod.TEST,)),
            b"\x01\x00\x00\x00\x01\x00\x00\x00\x01",
        )
        message = SubMethodsSupported((0x00010000, PROPRIETARY_FIRST, SubMethod.MORE_METHODS_AVAILABLE))
        assert_codec(
            self,
            parse_maf_message,
            message,
            b"\x01\x00\x00\x00\x03\x00\x01\x00\x00\x00\x00\x00\x03\x00\x00\x00\x02",
        )
        self.assertTrue(message.more_available)
        self.assertFalse(SubMethodsSupported((1,)).more_available)

    def test_request_more(self) -> None:
        assert_codec(self, parse_maf_message, RequestMore(RequestMoreFlags.RELATIVE), b"\x02\x00\x00\x00")
        assert_codec(self, parse_maf_message, RequestMore(RequestMoreFlags.ABSOLUTE), b"\x02\x00\x00\x01")

    def test_do_and_process(self) -> None:
        assert_codec(
            self,
            parse_maf_message,
            MethodMessage(Instruction.DO, SubMethod.TEST, b"hi"),
            b"\x03\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02hi",
        )
        assert_codec(
            self,
            parse_maf_message,
            MethodMessage(Instruction.PROCESS, 0x00012345, b""),
            b"\x05\x00\x00\x00\x00\x01\x23\x45\x00\x00\x00\x00",
        )

    def test_success_and_failure(self) -> None:
        assert_codec(
            self,
            parse_maf_message,
            MethodMessage(Instruction.SUCCESS, SubMethod.SUCCESS, b""),
            b"\x00\x00\x00\x00" + b"\x00" * 8,
        )
        assert_codec(
            self,
            parse_maf_message,
            MethodMessage(Instruction.FAILURE, SubMethod.FAILURE, b"why"),
            b"\xff\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x03why",
        )

    def test_what_next_and_acknowledge(self) -> None:
        assert_codec(self, parse_maf_message, WhatNext(), b"\x04\x00\x00\x00")
        assert_codec(self, parse_maf_message, Acknowledge(), b"\x06\x00\x00\x00")

    def test_flags_are_kept(self) -> None:
        assert_codec(self, parse_maf_message, WhatNext(0xABCD), b"\x04\x00\xab\xcd")

    def test_code_tables(self) -> None:
        self.assertEqual(
            {i.name: int(i) for i in Instruction},
            {
                "SUCCESS": 0x00,
                "SUBMETHODS_SUPPORTED": 0x01,
                "REQUEST_MORE": 0x02,
                "DO": 0x03,
                "WHAT_NEXT": 0x04,
                "PROCESS": 0x05,
                "ACKNOWLEDGE": 0x06,
                "FAILURE": 0xFF,
            },
        )
        # The draft's reserved ids, and this project's userpass (3) and gssapi (4) from the proprietary range.
        self.assertEqual([int(m) for m in SubMethod], [0, 1, 2, 3, 4, 0xFFFFFFFF])
        self.assertEqual((PROPRIETARY_FIRST, PROPRIETARY_LAST, GENERAL_FIRST), (3, 0xFFFF, 0x10000))
        self.assertEqual(MAF_VERSION, 0)


class MAFErrorTests(SynchronousTestCase):
    def test_wrong_version(self) -> None:
        for data in (b"\x04\x01\x00\x00", b"\x01\xff\x00\x00\x01\x00\x00\x00\x01"):
            error = self.assertRaises(UnsupportedVersion, parse_maf_message, Reader(data))
            self.assertEqual(error.expected, MAF_VERSION)

    def test_unknown_instruction(self) -> None:
        for instruction in (0x07, 0x80, 0xFE):
            buffer = MessageBuffer()
            buffer.feed(bytes([instruction, 0]))
            self.assertRaises(InvalidField, buffer.next, parse_maf_message)

    def test_no_submethods_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_maf_message, Reader(b"\x01\x00\x00\x00\x00"))

    def test_request_more_flags_must_be_relative_or_absolute(self) -> None:
        self.assertRaises(InvalidField, parse_maf_message, Reader(b"\x02\x00\x00\x02"))
        self.assertRaises(InvalidField, RequestMore, 2)

    def test_success_must_name_submethod_success(self) -> None:
        self.assertRaises(
            InvalidField,
            parse_maf_message,
            Reader(b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"),
        )

    def test_failure_must_name_submethod_failure(self) -> None:
        self.assertRaises(
            InvalidField,
            parse_maf_message,
            Reader(b"\xff\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"),
        )

    def test_data_over_the_cap_is_refused_before_it_arrives(self) -> None:
        header = b"\x05\x00\x00\x00\x00\x00\x00\x01"
        buffer = MessageBuffer()
        buffer.feed(header + (DEFAULT_MAX_DATA + 1).to_bytes(4, "big"))
        self.assertRaises(MessageTooLong, buffer.next, parse_maf_message)
        buffer = MessageBuffer()
        buffer.feed(header + b"\xff\xff\xff\xff")
        self.assertRaises(MessageTooLong, buffer.next, parse_maf_message)

    def test_data_at_the_cap_is_accepted(self) -> None:
        message = MethodMessage(Instruction.PROCESS, 7, bytes(DEFAULT_MAX_DATA))
        assert_parses_exactly(self, parse_maf_message, message.serialize(), message)
        buffer = MessageBuffer()  # the default buffer limit holds it
        buffer.feed(message.serialize())
        self.assertEqual(buffer.next(parse_maf_message), message)

    def test_cap_is_configurable(self) -> None:
        parse = partial(parse_maf_message, max_data=4)
        message = MethodMessage(Instruction.DO, 7, b"abcd")
        assert_codec(self, parse, message)
        too_long = MethodMessage(Instruction.DO, 7, b"abcde").serialize()
        buffer = MessageBuffer()
        buffer.feed(too_long[:12])
        self.assertRaises(MessageTooLong, buffer.next, parse)

    def test_construction_limits(self) -> None:
        self.assertRaises(InvalidField, SubMethodsSupported, ())
        self.assertRaises(InvalidField, SubMethodsSupported, (1,) * 256)
        self.assertRaises(InvalidField, SubMethodsSupported, (0x1_0000_0000,))
        self.assertRaises(InvalidField, SubMethodsSupported, (1,), 0x10000)
        self.assertRaises(InvalidField, MethodMessage, Instruction.WHAT_NEXT, 1, b"")
        self.assertRaises(InvalidField, MethodMessage, Instruction.DO, -1, b"")
        self.assertRaises(InvalidField, MethodMessage, Instruction.SUCCESS, 1, b"")
        self.assertRaises(InvalidField, MethodMessage, Instruction.FAILURE, 0, b"")
        self.assertRaises(InvalidField, WhatNext, -1)
        self.assertRaises(InvalidField, Acknowledge, 0x10000)

    def test_maximal_submethod_list(self) -> None:
        message = SubMethodsSupported(tuple(range(0x10000, 0x10000 + 255)))
        data = message.serialize()
        self.assertEqual(len(data), 5 + 4 * 255)
        assert_codec(self, parse_maf_message, message)
