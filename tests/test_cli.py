"""Tests for the socksgss console script (txsocksgss.cli) and socksgss passwd (txsocksgss.cli.passwd)."""

from __future__ import annotations

import getpass
import io
import os
import shutil
import stat
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from txsocksgss import cli
from txsocksgss.auth import passwordfile
from txsocksgss.auth.passwordfile import read_password_file, verify_password

FAST = {"n": 2**4, "r": 1, "p": 1}


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class BinaryStdin(io.TextIOWrapper):
    """A text stdin with a .buffer, like the real one."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")


class PasswdTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="txsocksgss-test-")
        self.addCleanup(shutil.rmtree, directory)
        self.file = os.path.join(directory, "passwords")
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        # Keep the tests fast: the CLI itself always uses the default costs.
        real_hash = passwordfile.hash_password
        self.hash_params: list[dict[str, int]] = []

        def fast_hash(password: bytes, **params: int) -> str:
            self.hash_params.append(params)
            return real_hash(password, **FAST)

        self.patch(passwordfile, "hash_password", fast_hash)

    def stdin(self, text: str) -> None:
        self.patch(sys, "stdin", io.StringIO(text))

    def test_sets_password_from_stdin_first_line(self) -> None:
        self.stdin("s3cret \nsecond line\n")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 0)
        users = read_password_file(self.file)
        self.assertTrue(verify_password(users["alice"], b"s3cret "))
        self.assertEqual(stat.S_IMODE(os.stat(self.file).st_mode), 0o600)
        self.assertIn("added alice", self.stdout.getvalue())
        self.assertEqual(self.hash_params, [{}])  # default cost parameters

    def test_stdin_without_newline_and_crlf(self) -> None:
        self.stdin("abc")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 0)
        self.assertTrue(verify_password(read_password_file(self.file)["alice"], b"abc"))
        self.stdin("xyz\r\n")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 0)
        self.assertTrue(verify_password(read_password_file(self.file)["alice"], b"xyz"))
        self.assertIn("changed the password of alice", self.stdout.getvalue())

    def test_binary_stdin_passes_bytes_through(self) -> None:
        self.patch(sys, "stdin", BinaryStdin("pä\n".encode() + b"\n"))
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 0)
        self.assertTrue(verify_password(read_password_file(self.file)["alice"], "pä".encode()))

    def test_tty_asks_twice(self) -> None:
        self.patch(sys, "stdin", FakeTTY())
        answers = iter(["typed", "typed"])
        prompts: list[str] = []

        def fake_getpass(prompt: str = "") -> str:
            prompts.append(prompt)
            return next(answers)

        self.patch(getpass, "getpass", fake_getpass)
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 0)
        self.assertEqual(len(prompts), 2)
        self.assertTrue(verify_password(read_password_file(self.file)["alice"], b"typed"))

    def test_tty_mismatch_is_refused(self) -> None:
        self.patch(sys, "stdin", FakeTTY())
        answers = iter(["one", "two"])
        self.patch(getpass, "getpass", lambda prompt="": next(answers))
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 2)
        self.assertIn("differ", self.stderr.getvalue())
        self.assertFalse(os.path.exists(self.file))

    def test_empty_password_refused(self) -> None:
        self.stdin("\n")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 2)
        self.assertIn("password is empty", self.stderr.getvalue())
        self.assertFalse(os.path.exists(self.file))

    def test_empty_stdin_refused(self) -> None:
        self.stdin("")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 2)

    def test_long_password_refused(self) -> None:
        self.stdin("x" * 256 + "\n")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 2)
        self.assertIn("255", self.stderr.getvalue())

    def test_255_byte_password_accepted(self) -> None:
        self.stdin("x" * 255 + "\n")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 0)

    def test_bad_user_names_refused(self) -> None:
        for user in ("a:b", "", "#x", "x" * 256):
            self.stdin("pw\n")
            self.assertEqual(cli.main(["passwd", self.file, user]), 2, user)
            self.assertIn("bad user name", self.stderr.getvalue())
        self.assertFalse(os.path.exists(self.file))

    def test_delete(self) -> None:
        self.stdin("pw\n")
        cli.main(["passwd", self.file, "alice"])
        self.stdin("pw\n")
        cli.main(["passwd", self.file, "bob"])
        self.assertEqual(cli.main(["passwd", "--delete", self.file, "alice"]), 0)
        self.assertEqual(list(read_password_file(self.file)), ["bob"])
        self.assertIn("removed alice", self.stdout.getvalue())

    def test_delete_unknown_user_fails(self) -> None:
        self.assertEqual(cli.main(["passwd", self.file, "alice", "--delete"]), 1)
        self.assertIn("no user 'alice'", self.stderr.getvalue())

    def test_malformed_file_reported(self) -> None:
        with open(self.file, "w") as f:
            f.write("garbage\n")
        self.stdin("pw\n")
        self.assertEqual(cli.main(["passwd", self.file, "alice"]), 1)
        self.assertIn("line 1", self.stderr.getvalue())
        self.assertIn("nothing was changed", self.stderr.getvalue())

    def test_unwritable_directory_reported(self) -> None:
        self.stdin("pw\n")
        self.assertEqual(cli.main(["passwd", "/nonexistent-dir/passwords", "alice"]), 1)
        self.assertIn("cannot write", self.stderr.getvalue())


class ParserTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(sys, "stdout", io.StringIO())
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_no_subcommand_is_usage_error(self) -> None:
        self.assertEqual(cli.main([]), 2)
        self.assertIn("usage: socksgss", self.stderr.getvalue())

    def test_unknown_subcommand_is_usage_error(self) -> None:
        self.assertEqual(cli.main(["frobnicate"]), 2)

    def test_missing_arguments_is_usage_error(self) -> None:
        self.assertEqual(cli.main(["passwd", "file-only"]), 2)

    def test_help_returns_zero(self) -> None:
        self.assertEqual(cli.main(["--help"]), 0)
        self.assertEqual(cli.main(["passwd", "--help"]), 0)

    def test_parser_lists_passwd(self) -> None:
        self.assertIn("passwd", cli.build_parser().format_help())
