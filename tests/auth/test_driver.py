"""
The conversation driver (txsocksgss.auth.driver): steps now and later,
the backlog and its cap, unused bytes, crashes, abort.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.auth.conversation import ANONYMOUS, AuthResult, AuthStep
from txsocksgss.auth.driver import (
    CRASH_REASON,
    OVERFLOW_REASON,
    ConversationDriver,
    ConversationEnd,
    EndKind,
)

DONE = AuthResult.success(ANONYMOUS)


class _Scripted:
    """An authenticator answering each call with the next of ``answers`` (a step, a Deferred or an exception)."""

    method = 0x80

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.received: list[bytes] = []
        self.aborted = 0

    def _next(self) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def begin(self) -> Any:
        return self._next()

    def receive(self, data: bytes) -> Any:
        self.received.append(data)
        return self._next()

    def abort(self) -> None:
        self.aborted += 1


class DriverTests(SynchronousTestCase):
    def drive(self, authenticator: _Scripted, limit: int | None = 16) -> ConversationDriver:
        self.sent: list[bytes] = []
        self.ends: list[ConversationEnd] = []
        return ConversationDriver(authenticator, self.sent.append, self.ends.append, method="scripted",
                                  backlog_limit=limit)

    def test_steps_now_send_and_end_with_the_result_and_unused_bytes(self) -> None:
        auth = _Scripted(AuthStep(b"hello"), AuthStep(b"ok", DONE, unused=b"REQ"))
        driver = self.drive(auth)
        driver.start()
        driver.feed(b"answer")
        self.assertEqual(self.sent, [b"hello", b"ok"])
        self.assertEqual(auth.received, [b"answer"])
        self.assertEqual(self.ends, [ConversationEnd(EndKind.FINISHED, DONE, b"REQ")])
        self.assertTrue(driver.ended)
        self.assertEqual(auth.aborted, 0)

    def test_bytes_received_before_the_start_are_fed_after_the_first_step(self) -> None:
        auth = _Scripted(AuthStep(b"first"), AuthStep(result=DONE))
        driver = self.drive(auth)
        driver.start(b"early")
        self.assertEqual(self.sent, [b"first"])
        self.assertEqual(auth.received, [b"early"])
        self.assertEqual(self.ends[0].kind, EndKind.FINISHED)

    def test_bytes_received_before_an_end_at_once_are_unused(self) -> None:
        driver = self.drive(_Scripted(AuthStep(result=DONE)))
        driver.start(b"REQUEST")
        self.assertEqual(self.ends, [ConversationEnd(EndKind.FINISHED, DONE, b"REQUEST")])

    def test_bytes_arriving_during_a_pending_step_are_kept_and_fed_in_one_piece(self) -> None:
        pending: Deferred[AuthStep] = Deferred()
        auth = _Scripted(AuthStep(), pending, AuthStep(result=DONE))
        driver = self.drive(auth)
        driver.start()
        driver.feed(b"a")
        self.assertTrue(driver.waiting)
        driver.feed(b"b")
        driver.feed(b"c")
        self.assertEqual(auth.received, [b"a"])
        pending.callback(AuthStep(b"checked"))
        self.assertEqual(self.sent, [b"checked"])
        self.assertEqual(auth.received, [b"a", b"bc"])
        self.assertEqual(self.ends[0].result, DONE)

    def test_the_backlog_joins_the_unused_bytes_when_a_pending_step_ends(self) -> None:
        pending: Deferred[AuthStep] = Deferred()
        driver = self.drive(_Scripted(AuthStep(), pending))
        driver.start()
        driver.feed(b"creds")
        driver.feed(b"REQ")
        pending.callback(AuthStep(b"\x01\x00", DONE, unused=b"X"))
        self.assertEqual(self.ends, [ConversationEnd(EndKind.FINISHED, DONE, b"XREQ")])

    def test_a_backlog_over_the_limit_ends_the_conversation(self) -> None:
        cancelled = []
        pending: Deferred[AuthStep] = Deferred(lambda d: cancelled.append(True))
        auth = _Scripted(AuthStep(), pending)
        driver = self.drive(auth, limit=4)
        driver.start()
        driver.feed(b"creds")
        driver.feed(b"1234")
        self.assertEqual(self.ends, [])
        driver.feed(b"5")
        [end] = self.ends
        self.assertEqual((end.kind, end.result.succeeded, end.result.reason),
                         (EndKind.OVERFLOW, False, OVERFLOW_REASON))
        self.assertEqual(auth.aborted, 1)
        self.assertEqual(cancelled, [True])
        self.assertEqual(self.sent, [])
        self.assertEqual(len(self.ends), 1)

    def test_no_limit_keeps_everything(self) -> None:
        pending: Deferred[AuthStep] = Deferred()
        driver = self.drive(_Scripted(AuthStep(), pending), limit=None)
        driver.start()
        driver.feed(b"x")
        driver.feed(b"y" * 100000)
        self.assertEqual(self.ends, [])

    def test_an_exception_is_a_crash_logged_with_its_traceback(self) -> None:
        auth = _Scripted(AuthStep(), ZeroDivisionError("bug"))
        driver = self.drive(auth)
        driver.start()
        driver.feed(b"x")
        [end] = self.ends
        self.assertEqual((end.kind, end.result.reason), (EndKind.CRASHED, CRASH_REASON))
        assert end.failure is not None
        self.assertEqual(end.failure.getErrorMessage(), "bug")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(auth.aborted, 1)

    def test_an_exception_in_begin_is_a_crash(self) -> None:
        driver = self.drive(_Scripted(KeyError("k")))
        driver.start()
        self.assertEqual(self.ends[0].kind, EndKind.CRASHED)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_a_failed_deferred_step_is_a_crash(self) -> None:
        pending: Deferred[AuthStep] = Deferred()
        driver = self.drive(_Scripted(pending))
        driver.start()
        pending.errback(ValueError("checker broke"))
        self.assertEqual(self.ends[0].kind, EndKind.CRASHED)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_abort_cancels_the_pending_step_and_reports_nothing(self) -> None:
        cancelled = []
        pending: Deferred[AuthStep] = Deferred(lambda d: cancelled.append(True))
        auth = _Scripted(AuthStep(), pending)
        driver = self.drive(auth)
        driver.start()
        driver.feed(b"x")
        driver.abort()
        driver.abort()  # twice is harmless
        self.assertEqual(cancelled, [True])
        self.assertEqual(auth.aborted, 1)
        self.assertEqual(self.ends, [])
        self.assertTrue(driver.ended)
        self.assertRaises(RuntimeError, driver.feed, b"more")

    def test_abort_after_the_end_does_not_abort_the_authenticator(self) -> None:
        auth = _Scripted(AuthStep(result=DONE))
        driver = self.drive(auth)
        driver.start()
        driver.abort()
        self.assertEqual(auth.aborted, 0)

    def test_a_caller_that_aborts_while_sending_stops_the_conversation(self) -> None:
        auth = _Scripted(AuthStep(b"one"), AuthStep(result=DONE))
        ends: list[ConversationEnd] = []
        driver = ConversationDriver(auth, lambda data: driver.abort(), ends.append)
        driver.start(b"queued")
        self.assertEqual((auth.received, ends), ([], []))

    def test_when_settled_fires_once_no_step_is_pending(self) -> None:
        first: Deferred[AuthStep] = Deferred()
        second: Deferred[AuthStep] = Deferred()
        driver = self.drive(_Scripted(AuthStep(), first, second))
        driver.start()
        self.assertTrue(driver.whenSettled().called)
        driver.feed(b"a")
        settled = driver.whenSettled()
        driver.feed(b"b")  # kept: fed when the first step is taken, and waits again
        first.callback(AuthStep(b"1"))
        self.assertFalse(settled.called)
        second.callback(AuthStep(b"2", DONE))
        self.assertTrue(settled.called)
        self.assertEqual(self.sent, [b"1", b"2"])

    def test_start_twice_and_feed_before_start_are_errors(self) -> None:
        driver = self.drive(_Scripted(AuthStep(), AuthStep()))
        self.assertRaises(RuntimeError, driver.feed, b"x")
        driver.start()
        self.assertRaises(RuntimeError, driver.start)
