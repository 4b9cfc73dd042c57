"""
A salted-hash password file, and a twisted.cred checker that reads it.

Theory of operation.  The file holds one ``user:scrypt$N$r$p$SALT$KEY`` per
line (SALT and KEY in standard base64); ``#`` starts a comment line and
blank lines are ignored.  ``N``, ``r`` and ``p`` are scrypt's cost
parameters, kept per line so they can be raised later without invalidating
old entries.  Writers (`set_password`, `delete_user`) replace the file
atomically, so a reader sees the old file or the new one, never half of
either; `PasswordFileChecker` notices the replacement (the file's identity,
size or modification time changed) and re-reads it on the next login, so
password changes apply without a restart.

User names and passwords follow the RFC 1929 limits: 1 to 255 bytes each
(user names as UTF-8).  A user name may not hold ``:`` (the separator) or
control characters, start with ``#`` (it would read as a comment) or start
or end with white space (it would be ambiguous in the file).

Scrypt is slow on purpose, so the checker runs it off the reactor thread,
and it spends the same work on an unknown user as on a known one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.errors import ConfigError

__all__ = [
    "MAX_USER_LENGTH",
    "MAX_PASSWORD_LENGTH",
    "check_user_name",
    "check_password",
    "hash_password",
    "verify_password",
    "read_password_file",
    "set_password",
    "delete_user",
    "run_synchronously",
    "PasswordFileChecker",
]

#: The longest user name, in UTF-8 bytes (RFC 1929: ULEN is one octet).
MAX_USER_LENGTH = 255
#: The longest password, in bytes (RFC 1929: PLEN is one octet).
MAX_PASSWORD_LENGTH = 255

_SCHEME = "scrypt"
_SALT_LENGTH = 16
_KEY_LENGTH = 32
# Bounds on what a file may ask of scrypt, so a garbled or hostile line
# cannot make a login allocate gigabytes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEMORY = 2**28
_MIN_STORED_KEY = 16
_MAX_STORED_KEY = 64
_MAX_SALT = 64


def check_user_name(user: str) -> None:
    """
    Check that ``user`` may appear in a password file.

    :raise ValueError: when it is empty or longer than 255 bytes as UTF-8,
        holds ``:`` or a control character (newline, tab, NUL, ...), starts
        with ``#``, or starts or ends with white space; the text says which.
    """
    try:
        length = len(user.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("the user name is not valid Unicode text") from None
    if length == 0:
        raise ValueError("the user name is empty")
    if length > MAX_USER_LENGTH:
        raise ValueError(
            f"the user name is {length} bytes long as UTF-8; the limit is {MAX_USER_LENGTH}"
        )
    if ":" in user:
        raise ValueError("the user name contains ':', which separates it from the hash")
    if any(unicodedata.category(c) == "Cc" for c in user):
        raise ValueError("the user name contains a control character (newline, tab, ...)")
    if user.startswith("#"):
        raise ValueError("the user name starts with '#', which would make its line a comment")
    if user != user.strip():
        raise ValueError("the user name starts or ends with white space")


def check_password(password: bytes) -> None:
    """
    Check that ``password`` fits RFC 1929 and can be told apart by scrypt.

    scrypt keys HMAC-SHA256 with the password, and HMAC pads a short key
    with zero bytes: ``pw`` and ``pw\\0`` would be the same password.  So a
    password may not end in a NUL byte (`verify_password` refuses one too).

    :raise ValueError: when it is empty, longer than 255 bytes, or ends in NUL.
    """
    if len(password) == 0:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(
            f"the password is {len(password)} bytes long; the limit is {MAX_PASSWORD_LENGTH}"
        )
    if password.endswith(b"\0"):
        raise ValueError("the password ends in a NUL byte, which scrypt cannot tell from no byte")


@dataclass(frozen=True)
class _ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _check_parameters(n: int, r: int, p: int) -> None:
    if n < 2 or n > _MAX_N or n & (n - 1):
        raise ValueError(f"N={n} must be a power of two from 2 to {_MAX_N}")
    if not 1 <= r <= _MAX_R:
        raise ValueError(f"r={r} must be from 1 to {_MAX_R}")
    if not 1 <= p <= _MAX_P:
        raise ValueError(f"p={p} must be from 1 to {_MAX_P}")
    if 128 * r * n > _MAX_MEMORY:
        raise ValueError(f"N={n} and r={r} need more than {_MAX_MEMORY >> 20} MiB")


def _decimal(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 8:
        raise ValueError(f"{what} {text!r} is not a decimal number")
    return int(text)


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"the {what} is not valid base64") from None


def _decode(encoded: str) -> _ScryptHash:
    """
    Parse ``scrypt$N$r$p$SALT$KEY``.

    :raise ValueError: saying what is wrong with it.
    """
    fields = encoded.split("$")
    if len(fields) != 6 or fields[0] != _SCHEME:
        raise ValueError("it is not of the form scrypt$N$r$p$SALT$KEY")
    n = _decimal(fields[1], "N")
    r = _decimal(fields[2], "r")
    p = _decimal(fields[3], "p")
    _check_parameters(n, r, p)
    salt = _base64(fields[4], "salt")
    key = _base64(fields[5], "key")
    if not 1 <= len(salt) <= _MAX_SALT:
        raise ValueError(f"the salt must be 1 to {_MAX_SALT} bytes")
    if not _MIN_STORED_KEY <= len(key) <= _MAX_STORED_KEY:
        raise ValueError(f"the key must be {_MIN_STORED_KEY} to {_MAX_STORED_KEY} bytes")
    return _ScryptHash(n, r, p, salt, key)


def _encode(h: _ScryptHash) -> str:
    salt = base64.b64encode(h.salt).decode("ascii")
    key = base64.b64encode(h.key).decode("ascii")
    return f"{_SCHEME}${h.n}${h.r}${h.p}${salt}${key}"


def _scrypt(password: bytes, h: _ScryptHash, length: int) -> bytes:
    # OpenSSL needs 128*r*(N+p+2) bytes; give it that plus slack.
    maxmem = 128 * h.r * (h.n + h.p + 2) + (1 << 20)
    return hashlib.scrypt(password, salt=h.salt, n=h.n, r=h.r, p=h.p, maxmem=maxmem, dklen=length)


def hash_password(password: bytes, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """
    Hash ``password`` with scrypt and a fresh 16-byte random salt.

    :return: ``scrypt$N$r$p$SALT$KEY``, the part of a password-file line
        after ``user:``; the key is 32 bytes.
    :raise ValueError: for a password outside RFC 1929's 1..255 bytes, or
        cost parameters out of bounds (N a power of two up to 2**20, r up
        to 32, p up to 16, at most 256 MiB of memory).
    """
    check_password(password)
    _check_parameters(n, r, p)
    unkeyed = _ScryptHash(n, r, p, os.urandom(_SALT_LENGTH), b"")
    key = _scrypt(password, unkeyed, _KEY_LENGTH)
    return _encode(_ScryptHash(n, r, p, unkeyed.salt, key))


def verify_password(encoded: str, password: bytes) -> bool:
    """
    Whether ``password`` is the one ``encoded`` (from `hash_password`) was
    made from.  Compares in constant time.

    :return: ``False`` for a wrong password and for a malformed ``encoded``
        (never raises for bad input).
    """
    try:
        h = _decode(encoded)
    except ValueError:
        return False
    if not isinstance(password, bytes) or password.endswith(b"\0"):
        return False  # see check_password: it would match the password without the NULs
    return hmac.compare_digest(_scrypt(password, h, len(h.key)), h.key)


def _parse_file(data: bytes, source: str) -> dict[str, str]:
    """Parse a whole password file; ConfigError names the line of the first mistake."""
    users: dict[str, str] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{source} line {number}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not valid UTF-8; the file must be UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        user, colon, encoded = line.partition(":")
        if not colon:
            raise ConfigError(
                f"{where}: no ':' between user name and hash; "
                "lines read user:scrypt$N$r$p$SALT$KEY "
                f"(write them with `socksgss passwd {source} USER`)"
            )
        try:
            check_user_name(user)
        except ValueError as e:
            raise ConfigError(f"{where}: bad user name: {e}") from None
        try:
            _decode(encoded)
        except ValueError as e:
            raise ConfigError(
                f"{where}: user {user!r}: bad password hash: {e}; "
                f"set a new password with `socksgss passwd {source} {user}`"
            ) from None
        if user in users:
            raise ConfigError(
                f"{where}: user {user!r} appears a second time; delete one of the two lines"
            )
        users[user] = encoded
    return users


def read_password_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """
    Read a password file.

    :return: user name -> ``scrypt$...`` hash, for every user in the file.
    :raise ConfigError: when the file cannot be read or a line is malformed
        (the message gives the line number and how to fix it).
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(
            f"{source}: cannot read the password file ({e.strerror}); "
            f"create it with `socksgss passwd {source} USER`"
        ) from None
    return _parse_file(data, source)


def _write_atomically(target: str, data: bytes) -> None:
    """Replace ``target`` with ``data``: a 0600 temp file beside it, fsync, rename."""
    directory = os.path.dirname(target) or "."
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable.
    directory_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _rewrite(path: str | os.PathLike[str], user: str, new_line: str | None) -> bool:
    """
    Replace (or, with ``new_line`` None, drop) ``user``'s line, keeping every
    other line as it was; append ``new_line`` when the user is not there.

    :return: whether the user was in the file.
    """
    source = os.fspath(path)
    # Write beside the real file, so a symlinked password file stays a symlink.
    target = os.path.realpath(source)
    try:
        with open(target, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the password file ({e.strerror})") from None
    # Refuse to rewrite a file we could not read back.
    _parse_file(data, source)
    lines = data.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    found = False
    kept = []
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped.partition(":")[0] == user:
            found = True
            if new_line is not None:
                kept.append(new_line)
        else:
            kept.append(line)
    if not found:
        if new_line is None:
            return False
        kept.append(new_line)
    _write_atomically(target, "".join(line + "\n" for line in kept).encode("utf-8"))
    return found


def set_password(
    path: str | os.PathLike[str], user: str, password: bytes, **params: int
) -> bool:
    """
    Add ``user`` to the password file at ``path``, or replace their
    password, creating the file when it is missing.  Other lines (comments
    included) are kept.  The file is replaced atomically and ends up with
    mode 0600.  Concurrent writers are not serialized: the last one wins.

    :param params: scrypt cost parameters for `hash_password` (``n``, ``r``, ``p``).
    :return: ``True`` when the user was already there (password replaced),
        ``False`` when added.
    :raise ValueError: for a bad user name or password (see
        `check_user_name`, `check_password`) or bad parameters.
    :raise ConfigError: when the existing file cannot be read or is malformed.
    :raise OSError: when the new file cannot be written.
    """
    check_user_name(user)
    encoded = hash_password(password, **params)
    return _rewrite(path, user, f"{user}:{encoded}")


def delete_user(path: str | os.PathLike[str], user: str) -> bool:
    """
    Remove ``user`` from the password file at ``path`` (atomically, mode 0600).

    :return: whether the user was there (the file is untouched when not).
    :raise ConfigError: when the file cannot be read or is malformed.
    :raise OSError: when the new file cannot be written.
    """
    return _rewrite(path, user, None)


def run_synchronously(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    A ``threadpool_runner`` for `PasswordFileChecker` that runs ``f`` on the
    calling thread (for tests, and for callers without a reactor).
    """
    return defer.maybeDeferred(f, *args, **kwargs)


_Signature = tuple[int, int, int, int]


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _dummy_hash(users: dict[str, str]) -> str:
    """
    A hash no password matches, with the cost of a real entry, so that
    checking an unknown user costs what checking a known one does.
    """
    h = None
    for encoded in users.values():
        h = _decode(encoded)
        break
    n, r, p = (h.n, h.r, h.p) if h is not None else (2**14, 8, 1)
    return _encode(_ScryptHash(n, r, p, os.urandom(_SALT_LENGTH), os.urandom(_KEY_LENGTH)))


def _user_text(username: object) -> str | None:
    if isinstance(username, bytes):
        try:
            return username.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return username if isinstance(username, str) else None


def _password_bytes(password: object) -> bytes | None:
    if isinstance(password, bytes):
        return password
    if isinstance(password, str):
        try:
            return password.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return None


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """
    Checks `IUsernamePassword` credentials against a password file.

    The file is read at construction (so a broken file is found at
    start-up) and again whenever it has changed (its identity, size or
    modification time) when a login comes; while a changed file cannot be
    read or is malformed, every login fails (and the error is logged once).

    :param path: the password file.
    :param threadpool_runner: called as ``runner(f, *args)`` to run the
        scrypt computation and returning a Deferred with its result;
        `twisted.internet.threads.deferToThread` by default, so the reactor
        thread never runs scrypt.  Tests pass `run_synchronously`.
    :raise ConfigError: at construction, when the file cannot be read or
        is malformed.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        path: str | os.PathLike[str],
        threadpool_runner: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        if threadpool_runner is None:
            from twisted.internet.threads import deferToThread

            threadpool_runner = deferToThread
        self._path = os.fspath(path)
        self._run: Callable[..., Deferred[Any]] = threadpool_runner
        self._users: dict[str, str] | None = None
        self._signature: _Signature | None = None
        self._dummy = _dummy_hash({})
        self._load()

    def _load(self) -> None:
        """Read the file and remember which version of it was read; raises ConfigError."""
        try:
            with open(self._path, "rb") as f:
                signature = _signature(os.fstat(f.fileno()))
                data = f.read()
        except OSError as e:
            raise ConfigError(
                f"{self._path}: cannot read the password file ({e.strerror}); "
                f"create it with `socksgss passwd {self._path} USER`"
            ) from None
        self._signature = signature
        users = _parse_file(data, self._path)
        self._users = users
        self._dummy = _dummy_hash(users)

    def _refresh(self) -> None:
        """Re-read the file if it changed since the last read."""
        try:
            current: _Signature | None = _signature(os.stat(self._path))
        except OSError:
            current = None
        if current is not None and current == self._signature:
            return
        if current is None and self._signature is None and self._users is None:
            return  # still missing; already reported
        try:
            self._load()
        except ConfigError as e:
            self._users = None
            self._signature = current
            self.log.error(
                "password file unusable, refusing every login until it is fixed: {error}",
                error=str(e),
            )
        else:
            self.log.info(
                "password file {path} re-read: {count} users",
                path=self._path,
                count=len(self._users or {}),
            )

    # twisted.cred types avatar IDs as bytes; txsocksgss identities are text.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: IUsernamePassword
    ) -> Deferred[str]:
        """
        Check ``credentials`` (user name and password as bytes or str;
        bytes user names are decoded as UTF-8).

        :return: a Deferred firing with the user name (str), or failing with
            `UnauthorizedLogin` whose text is the same for an unknown user,
            a wrong password, an undecodable name and an unusable file.
        """
        self._refresh()
        user = _user_text(credentials.username)
        password = _password_bytes(credentials.password)
        users = self._users or {}
        encoded = users.get(user) if user is not None else None
        known = encoded is not None and password is not None
        # An unknown user costs one scrypt too, so timing does not tell.
        d: Deferred[Any] = defer.maybeDeferred(
            self._run,
            verify_password,
            encoded if known else self._dummy,
            password if password is not None else b"",
        )
        shown = user if user is not None else credentials.username
        d.addCallbacks(
            self._verified,
            self._crashed,
            callbackArgs=(user, shown, known),
            errbackArgs=(shown,),
        )
        checked: Deferred[str] = d
        return checked

    def _verified(self, ok: bool, user: str | None, shown: object, known: bool) -> str:
        if ok and known and user is not None:
            self.log.info("password login for {user!r}: accepted", user=shown)
            return user
        if self._users is None:
            reason = "password file unusable"
        elif user is None:
            reason = "user name not UTF-8"
        elif user not in self._users:
            reason = "unknown user"
        elif not known:
            reason = "password not text"
        else:
            reason = "wrong password"
        self.log.info("password login for {user!r}: rejected ({reason})", user=shown, reason=reason)
        raise UnauthorizedLogin("invalid user name or password")

    def _crashed(self, failure: Failure, shown: object) -> str:
        self.log.error(
            "password check for {user!r} failed: {error}",
            user=shown,
            error=failure.getErrorMessage(),
        )
        raise UnauthorizedLogin("invalid user name or password")
