"""
The idle timeout of a tunnel or an association.

Traffic only sets `IdleTimer.active` (one attribute store on the hot path);
the timer wakes once per period and ends the session if nothing moved
during the whole period.  So a tunnel is closed between one and two periods
after its last byte.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["IdleTimer"]


class IdleTimer:
    """
    Calls ``onIdle()`` once no traffic marked `active` for ``timeout``
    seconds; ``timeout`` None or 0 means never.
    """

    def __init__(self, clock: Any, timeout: float | None, onIdle: Callable[[], None]) -> None:
        self.active = False
        self._clock = clock
        self._timeout = timeout
        self._onIdle = onIdle
        self._call: Any = None

    def start(self) -> None:
        if self._timeout:
            self._call = self._clock.callLater(self._timeout, self._check)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        self._call = None
        if self.active:
            self.active = False
            self._call = self._clock.callLater(self._timeout, self._check)
            return
        self._onIdle()
