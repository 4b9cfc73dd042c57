"""
Reloading the rules and the password files of a running server, without
dropping a session.

Theory of operation.  The access policy is read per request from
``ServerContext.policy``, so swapping that attribute makes new requests
follow new rules while open tunnels go on untouched (they were allowed
when they were made).  A rules file that cannot be read or holds a mistake
is logged and the old rules stay: a typo must not open or close the proxy.
A `PasswordFileChecker` already re-reads its file when it changes; a reload
makes it re-read now, so the result (or the error) is logged at once.

`SignalReload` runs a reload on SIGHUP, the Unix convention for "re-read
your configuration".
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Sequence

from twisted.logger import Logger

from txsocksgss.auth.passwordfile import PasswordFileChecker
from txsocksgss.errors import ConfigError
from txsocksgss.server.rules import load_rules

__all__ = ["Reloader", "SignalReload"]

_log = Logger()


class Reloader:
    """
    Re-reads ``rules_file`` into ``context.policy`` and makes each
    ``password_checkers`` re-read its file.

    :param context: the `txsocksgss.server.protocol.ServerContext` to update.
    :param rules_file: the rules file the policy came from; ``None`` when
        the rules are inline or absent (then they are not reloaded).
    :param password_checkers: the password-file checkers in use.
    """

    def __init__(self, context: Any, rules_file: str | None,
                 password_checkers: Sequence[PasswordFileChecker] = ()) -> None:
        self.context = context
        self.rules_file = rules_file
        self.password_checkers = tuple(password_checkers)

    def reload(self) -> bool:
        """
        Reload everything; never raises for a bad file.

        :return: False when the rules file was unusable (the old rules stay).
        """
        ok = True
        if self.rules_file is not None:
            ok = self.reloadRules()
        for checker in self.password_checkers:
            _reread(checker)
        return ok

    def reloadRules(self) -> bool:
        """Swap in the rules of ``rules_file``; keep the old ones (and log why) if it is unusable."""
        assert self.rules_file is not None
        try:
            rules = load_rules(self.rules_file)
        except ConfigError as error:
            _log.error("rules not reloaded, the old rules stay: {error}", error=str(error))
            return False
        self.context.policy = rules
        _log.info("rules reloaded from {path}: {count} rules, default {default}",
                  path=self.rules_file, count=len(rules.rules),
                  default="allow" if rules.default_allow else "deny")
        return True


def _reread(checker: PasswordFileChecker) -> None:
    # The checker re-reads when its file's signature (identity, size, mtime)
    # changed; forgetting the signature forces that now.  An unusable file
    # is logged by the checker, which then refuses logins, as it does when
    # it notices a broken file on its own.
    checker._signature = None
    checker._refresh()


class SignalReload:
    """
    Calls ``reload`` in the reactor thread whenever the process gets
    ``signum`` (SIGHUP), between `install` and `uninstall`.
    """

    def __init__(self, reactor: Any, reload: Callable[[], Any], signum: int = signal.SIGHUP) -> None:
        self.reactor = reactor
        self.reload = reload
        self.signum = signum
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        """Handle the signal from now on (the main thread only, as Python requires)."""
        if self._installed:
            return
        self._previous = signal.signal(self.signum, self._received)
        self._installed = True

    def uninstall(self) -> None:
        """Put back the handler there was before `install`."""
        if not self._installed:
            return
        signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = False

    def _received(self, signum: int, frame: Any) -> None:
        # A signal handler may run between any two bytecodes of the reactor
        # thread: do the work from the reactor loop, not here.
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        _log.info("{signal} received: reloading", signal=signal.Signals(self.signum).name)
        try:
            self.reload()
        except Exception:
            _log.failure("reload failed")
