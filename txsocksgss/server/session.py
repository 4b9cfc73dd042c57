"""
The record of one SOCKS session, written to the log once when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger

__all__ = ["SessionRecord"]

_log = Logger(namespace="txsocksgss.session")


@dataclass
class SessionRecord:
    """
    What the session log line says: who, how, where to, how much, how long,
    and how it ended.  Mutable: the protocol fills it in as the session
    advances and calls `finish` once.
    """

    client: str
    started: float
    version: int = 5
    user: str | None = None
    method: str = "-"
    protection: str = "-"
    command: str = "-"
    destination: str = "-"
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    outcome: str = ""
    finished: bool = False

    def finish(self, now: float, outcome: str) -> bool:
        """Log the session line once; return False if it was already logged."""
        if self.finished:
            return False
        self.finished = True
        self.outcome = outcome
        _log.info(
            "session client={client} socks{version} user={user} method={method} protection={protection} "
            "command={command} destination={destination} up={up} down={down} "
            "duration={duration:.3f}s outcome={outcome}",
            client=self.client,
            version=self.version,
            user=self.user if self.user is not None else "-",
            method=self.method,
            protection=self.protection,
            command=self.command,
            destination=self.destination,
            up=self.bytes_from_client,
            down=self.bytes_to_client,
            duration=max(0.0, now - self.started),
            outcome=outcome,
        )
        return True
