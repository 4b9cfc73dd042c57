"""Tests for txsocksgss.auth.passwordfile: hashing, the file, and the twisted.cred checker."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txsocksgss.auth import passwordfile
from txsocksgss.auth.passwordfile import (
    PasswordFileChecker,
    check_password,
    check_user_name,
    delete_user,
    hash_password,
    read_password_file,
    run_synchronously,
    set_password,
    verify_password,
)
from txsocksgss.errors import ConfigError

FAST = {"n": 2**4, "r": 1, "p": 1}


class HashTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        encoded = hash_password(b"s3cret", **FAST)
        self.assertTrue(verify_password(encoded, b"s3cret"))

    def test_wrong_password(self) -> None:
        encoded = hash_password(b"s3cret", **FAST)
        self.assertFalse(verify_password(encoded, b"s3cret!"))
        self.assertFalse(verify_password(encoded, b"S3cret"))

    def test_format_and_fresh_salt(self) -> None:
        first = hash_password(b"pw", **FAST)
        second = hash_password(b"pw", **FAST)
        self.assertNotEqual(first, second)
        scheme, n, r, p, salt, key = first.split("$")
        self.assertEqual((scheme, n, r, p), ("scrypt", "16", "1", "1"))
        import base64

        self.assertEqual(len(base64.b64decode(salt)), 16)
        self.assertEqual(len(base64.b64decode(key)), 32)

    def test_default_parameters(self) -> None:
        self.assertTrue(hash_password(b"pw").startswith("scrypt$16384$8$1$"))

    def test_malformed_encoded_is_false(self) -> None:
        good = hash_password(b"pw", **FAST)
        fields = good.split("$")
        for bad in (
            "",
            "pw",
            "bcrypt$16$1$1$AAAA$AAAA",
            "$".join(fields[:5]),
            "$".join(["scrypt", "15", *fields[2:]]),  # N not a power of two
            "$".join(["scrypt", "x", *fields[2:]]),
            "$".join(["scrypt", str(2**30), *fields[2:]]),  # too costly
            "$".join([*fields[:4], "not base64!", fields[5]]),
            "$".join([*fields[:5], "AAAA"]),  # key too short
        ):
            self.assertFalse(verify_password(bad, b"pw"), bad)

    def test_password_limits(self) -> None:
        self.assertRaises(ValueError, hash_password, b"", **FAST)
        self.assertRaises(ValueError, hash_password, b"x" * 256, **FAST)
        self.assertTrue(verify_password(hash_password(b"x" * 255, **FAST), b"x" * 255))

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, hash_password, b"pw", n=15)
        self.assertRaises(ValueError, hash_password, b"pw", n=16, r=0)
        self.assertRaises(ValueError, hash_password, b"pw", n=16, p=99)

    @settings(max_examples=25, deadline=None)
    @given(st.binary(min_size=1, max_size=255), st.binary(min_size=1, max_size=255))
    def test_verify_accepts_exactly_the_password(self, password: bytes, other: bytes) -> None:
        password = password.rstrip(b"\0") or b"x"  # see test_trailing_nul_bytes_are_refused
        encoded = hash_password(password, **FAST)
        self.assertTrue(verify_password(encoded, password))
        self.assertEqual(verify_password(encoded, other), other == password)

    def test_trailing_nul_bytes_are_refused(self) -> None:
        """HMAC pads short keys with zeros, so scrypt sees b"pw" and b"pw\\0" as one password."""
        self.assertRaises(ValueError, hash_password, b"pw\0", **FAST)
        encoded = hash_password(b"pw", **FAST)
        self.assertFalse(verify_password(encoded, b"pw\0"))
        self.assertFalse(verify_password(encoded, b"pw\0\0"))
        self.assertTrue(verify_password(encoded, b"pw"))
        self.assertTrue(verify_password(hash_password(b"p\0w", **FAST), b"p\0w"))


class NameTests(SynchronousTestCase):
    def test_good_names(self) -> None:
        for name in ("alice", "alice@EXAMPLE.COM", "Zoë Smith", "x" * 255, "é" * 127):
            check_user_name(name)

    def test_bad_names(self) -> None:
        for name, fragment in (
            ("", "empty"),
            ("x" * 256, "255"),
            ("é" * 128, "255"),
            ("a:b", "':'"),
            ("a\nb", "control"),
            ("a\tb", "control"),
            ("#alice", "comment"),
            (" alice", "white space"),
            ("alice ", "white space"),
            ("\udcff", "Unicode"),
        ):
            with self.assertRaises(ValueError) as cm:
                check_user_name(name)
            self.assertIn(fragment, str(cm.exception), name)

    def test_password_check(self) -> None:
        check_password(b"x")
        check_password(b"\x00\xff" * 127)
        self.assertRaises(ValueError, check_password, b"")
        self.assertRaises(ValueError, check_password, b"x" * 256)


class FileTestsMixin:
    """For trial test cases: a fresh password-file path in a private directory."""

    def path(self) -> str:
        directory = tempfile.mkdtemp(prefix="txsocksgss-test-")
        self.addCleanup(shutil.rmtree, directory)  # type: ignore[attr-defined]
        return os.path.join(directory, "passwords")

    def write(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)


class PasswordFileTests(FileTestsMixin, SynchronousTestCase):
    def test_set_creates_file_with_mode_0600(self) -> None:
        path = self.path()
        self.addCleanup(os.umask, os.umask(0))  # 0600 must not depend on the umask
        self.assertFalse(set_password(path, "alice", b"pw1", **FAST))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        users = read_password_file(path)
        self.assertEqual(list(users), ["alice"])
        self.assertTrue(verify_password(users["alice"], b"pw1"))

    def test_set_replaces_user_and_keeps_other_lines(self) -> None:
        path = self.path()
        set_password(path, "alice", b"pw1", **FAST)
        with open(path, "a") as f:
            f.write("# the admins\n\n")
        set_password(path, "bob", b"bobpw", **FAST)
        old_bob = read_password_file(path)["bob"]
        self.assertTrue(set_password(path, "alice", b"pw2", **FAST))
        users = read_password_file(path)
        self.assertTrue(verify_password(users["alice"], b"pw2"))
        self.assertFalse(verify_password(users["alice"], b"pw1"))
        self.assertEqual(users["bob"], old_bob)
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0].split(":")[0], "alice")
        self.assertEqual(lines[1:3], ["# the admins", ""])
        self.assertEqual(lines[3].split(":")[0], "bob")

    def test_replace_is_atomic_rename_and_fixes_mode(self) -> None:
        path = self.path()
        set_password(path, "alice", b"pw1", **FAST)
        os.chmod(path, 0o644)
        before = os.stat(path).st_ino
        set_password(path, "alice", b"pw2", **FAST)
        after = os.stat(path)
        self.assertNotEqual(after.st_ino, before)  # a new file was renamed over the old
        self.assertEqual(stat.S_IMODE(after.st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["passwords"])  # no temp left

    def test_failed_write_leaves_old_file_and_no_temp(self) -> None:
        path = self.path()
        set_password(path, "alice", b"pw1", **FAST)
        with open(path, "rb") as f:
            original = f.read()

        def failing_replace(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(passwordfile.os, "replace", failing_replace)
        self.assertRaises(OSError, set_password, path, "alice", b"pw2", **FAST)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), original)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["passwords"])

    def test_symlinked_file_stays_a_symlink(self) -> None:
        path = self.path()
        set_password(path, "alice", b"pw1", **FAST)
        link = path + ".link"
        os.symlink(path, link)
        set_password(link, "bob", b"pw2", **FAST)
        self.assertTrue(os.path.islink(link))
        self.assertEqual(sorted(read_password_file(path)), ["alice", "bob"])

    def test_delete_user(self) -> None:
        path = self.path()
        set_password(path, "alice", b"pw1", **FAST)
        set_password(path, "bob", b"pw2", **FAST)
        self.assertTrue(delete_user(path, "alice"))
        self.assertEqual(list(read_password_file(path)), ["bob"])
        self.assertFalse(delete_user(path, "alice"))
        self.assertFalse(delete_user(path + ".missing", "alice"))

    def test_set_rejects_bad_input(self) -> None:
        path = self.path()
        self.assertRaises(ValueError, set_password, path, "a:b", b"pw", **FAST)
        self.assertRaises(ValueError, set_password, path, "alice", b"", **FAST)
        self.assertFalse(os.path.exists(path))

    def test_set_refuses_to_rewrite_malformed_file(self) -> None:
        path = self.path()
        self.write(path, b"garbage\n")
        self.assertRaises(ConfigError, set_password, path, "alice", b"pw", **FAST)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"garbage\n")

    def test_comments_blank_lines_and_crlf(self) -> None:
        path = self.path()
        encoded = hash_password(b"pw", **FAST)
        self.write(path, f"# comment\n\n   \nalice:{encoded}\r\n  # indented\nbob:{encoded}".encode())
        self.assertEqual(read_password_file(path), {"alice": encoded, "bob": encoded})

    def test_malformed_lines_report_line_numbers(self) -> None:
        path = self.path()
        encoded = hash_password(b"pw", **FAST)
        for body, fragments in (
            (f"# c\nalice:{encoded}\nbob\n", ("line 3", "':'")),
            (f"alice:{encoded}\nbob:scrypt$1$2\n", ("line 2", "'bob'", "socksgss passwd")),
            (f"alice:{encoded}\nalice:{encoded}\n", ("line 2", "second time")),
            (f"#ali:{encoded}\n:{encoded}\n", ("line 2", "empty")),
        ):
            self.write(path, body.encode())
            with self.assertRaises(ConfigError) as cm:
                read_password_file(path)
            for fragment in fragments:
                self.assertIn(fragment, str(cm.exception))
            self.assertIn(path, str(cm.exception))

    def test_not_utf8(self) -> None:
        path = self.path()
        self.write(path, b"\xffalice:x\n")
        with self.assertRaises(ConfigError) as cm:
            read_password_file(path)
        self.assertIn("line 1", str(cm.exception))
        self.assertIn("UTF-8", str(cm.exception))

    def test_missing_file(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            read_password_file(self.path())
        self.assertIn("cannot read", str(cm.exception))


class ListRunner:
    """A threadpool_runner that runs synchronously and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        self.calls.append(args)
        return run_synchronously(f, *args)


class CheckerTests(FileTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.file = self.path()
        set_password(self.file, "alice", b"wonderland", **FAST)
        set_password(self.file, "Zoë", b"pw\xff", **FAST)
        self.runner = ListRunner()
        self.checker = PasswordFileChecker(self.file, threadpool_runner=self.runner)
        self.events: list[dict[str, Any]] = []
        self.checker.log = Logger(observer=self.events.append)  # type: ignore[arg-type]

    def login(self, user: Any, password: Any) -> Any:
        return self.checker.requestAvatarId(UsernamePassword(user, password))

    def assertRejected(self, d: Deferred[str]) -> UnauthorizedLogin:
        failure = self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(failure.getErrorMessage(), "invalid user name or password")
        return failure.value

    def test_provides_checker(self) -> None:
        verifyObject(ICredentialsChecker, self.checker)

    def test_accepts_good_password_as_bytes(self) -> None:
        self.assertEqual(self.successResultOf(self.login(b"alice", b"wonderland")), "alice")

    def test_accepts_str_credentials(self) -> None:
        self.assertEqual(self.successResultOf(self.login("alice", "wonderland")), "alice")

    def test_user_name_decoded_as_utf8(self) -> None:
        result = self.successResultOf(self.login("Zoë".encode(), b"pw\xff"))
        self.assertEqual(result, "Zoë")
        self.assertIsInstance(result, str)

    def test_undecodable_user_is_unauthorized(self) -> None:
        self.assertRejected(self.login(b"\xffalice", b"wonderland"))
        self.assertEqual(len(self.runner.calls), 1)

    def test_wrong_password_and_unknown_user_look_alike(self) -> None:
        wrong = self.assertRejected(self.login(b"alice", b"rabbit"))
        unknown = self.assertRejected(self.login(b"mallory", b"wonderland"))
        self.assertEqual(str(wrong), str(unknown))

    def test_unknown_user_costs_one_verify_with_real_parameters(self) -> None:
        self.assertRejected(self.login(b"mallory", b"wonderland"))
        self.assertEqual(len(self.runner.calls), 1)
        encoded, password = self.runner.calls[0]
        self.assertTrue(encoded.startswith("scrypt$16$1$1$"))
        self.assertEqual(password, b"wonderland")

    def test_logs_user_and_outcome_never_password(self) -> None:
        self.successResultOf(self.login(b"alice", b"wonderland"))
        self.assertRejected(self.login(b"alice", b"rabbit-hole"))
        self.assertRejected(self.login(b"mallory", b"rabbit-hole"))
        texts = [formatEvent(e) for e in self.events]
        self.assertEqual(len(texts), 3)
        self.assertIn("'alice': accepted", texts[0])
        self.assertIn("'alice': rejected (wrong password)", texts[1])
        self.assertIn("'mallory': rejected (unknown user)", texts[2])
        for event in self.events:
            self.assertNotIn("wonderland", repr(event))
            self.assertNotIn("rabbit-hole", repr(event))

    def test_reload_on_change(self) -> None:
        self.successResultOf(self.login(b"alice", b"wonderland"))
        set_password(self.file, "alice", b"looking-glass", **FAST)
        set_password(self.file, "bob", b"builder", **FAST)
        self.assertRejected(self.login(b"alice", b"wonderland"))
        self.assertEqual(self.successResultOf(self.login(b"alice", b"looking-glass")), "alice")
        self.assertEqual(self.successResultOf(self.login(b"bob", b"builder")), "bob")
        delete_user(self.file, "bob")
        self.assertRejected(self.login(b"bob", b"builder"))

    def test_reload_on_in_place_edit(self) -> None:
        encoded = hash_password(b"new", **FAST)
        with open(self.file, "a") as f:
            f.write(f"carol:{encoded}\n")
        self.assertEqual(self.successResultOf(self.login(b"carol", b"new")), "carol")

    def test_no_reread_when_unchanged(self) -> None:
        reads = []
        original = passwordfile._parse_file

        def counting(data: bytes, source: str) -> dict[str, str]:
            reads.append(source)
            return original(data, source)

        self.patch(passwordfile, "_parse_file", counting)
        self.successResultOf(self.login(b"alice", b"wonderland"))
        self.successResultOf(self.login(b"alice", b"wonderland"))
        self.assertEqual(reads, [])

    def test_broken_file_fails_closed_then_recovers(self) -> None:
        with open(self.file, "rb") as f:
            good = f.read()
        self.write(self.file, good + b"garbage\n")
        self.assertRejected(self.login(b"alice", b"wonderland"))
        self.assertRejected(self.login(b"alice", b"wonderland"))
        errors = [formatEvent(e) for e in self.events if e["log_level"] is LogLevel.error]
        self.assertEqual(len(errors), 1)  # logged once, not per login
        self.assertIn("line 3", errors[0])
        self.write(self.file, good)
        os.utime(self.file, ns=(0, 0))  # a different mtime even on coarse clocks
        self.assertEqual(self.successResultOf(self.login(b"alice", b"wonderland")), "alice")

    def test_missing_file_fails_closed(self) -> None:
        os.unlink(self.file)
        self.assertRejected(self.login(b"alice", b"wonderland"))
        self.assertRejected(self.login(b"alice", b"wonderland"))
        set_password(self.file, "alice", b"back", **FAST)
        self.assertEqual(self.successResultOf(self.login(b"alice", b"back")), "alice")

    def test_construction_reports_broken_file(self) -> None:
        self.write(self.file, b"alice\n")
        self.assertRaises(ConfigError, PasswordFileChecker, self.file, run_synchronously)
        self.assertRaises(ConfigError, PasswordFileChecker, self.file + ".missing", run_synchronously)

    def test_runner_failure_is_unauthorized(self) -> None:
        def broken(f: Any, *args: Any) -> Deferred[Any]:
            raise MemoryError("scrypt")

        checker = PasswordFileChecker(self.file, threadpool_runner=broken)
        checker.log = Logger(observer=self.events.append)  # type: ignore[arg-type]
        self.assertRejected(checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland")))
        self.assertIn("failed", formatEvent(self.events[-1]))


class ThreadedCheckerTests(FileTestsMixin, TestCase):
    def test_default_runner_uses_a_thread(self) -> Deferred[Any]:
        path = self.path()
        set_password(path, "alice", b"wonderland", **FAST)
        checker = PasswordFileChecker(path)
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland"))
        d.addCallback(self.assertEqual, "alice")

        def wrong(_: object) -> Deferred[str]:
            return self.assertFailure(
                checker.requestAvatarId(UsernamePassword(b"alice", b"nope")), UnauthorizedLogin
            )

        d.addCallback(wrong)
        return d
