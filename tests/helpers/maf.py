"""
Authentication conversations driven against each other, without a
network: the session both sides see, a username/password server for
alice, and `converse`, which relays the bytes until both are done.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred

from txsocksgss.auth.conversation import SessionInfo
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassServerFactory

__all__ = ["SESSION", "converse", "settle", "userpass_server"]

SESSION = SessionInfo(client=("127.0.0.1", 4000), server=("127.0.0.1", 1080))


def userpass_server() -> UserPassServerFactory:
    """A username/password (RFC 1929) server factory that knows alice, password ``secret``."""
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    return UserPassServerFactory(Portal(SOCKSUserRealm(), [checker]))


def settle(value: Any) -> Any:
    """The step of a synchronous-or-already-fired Deferred."""
    if isinstance(value, Deferred):
        results: list[Any] = []
        value.addBoth(results.append)
        assert results, "the conversation is waiting on something that never fires"
        return results[0]
    return value


def converse(client: Any, server_side: Any, limit: int = 50) -> tuple[Any, Any, list[tuple[str, bytes]]]:
    """
    Run both conversations against each other; return (client result,
    server result, transcript), the transcript a list of ("c", bytes sent
    by the client) and ("s", bytes sent by the server).
    """
    transcript: list[tuple[str, bytes]] = []
    step = settle(client.begin())
    settle(server_side.begin())
    to_server = step.send
    client_result = server_result = None
    for _ in range(limit):
        if to_server:
            transcript.append(("c", to_server))
            sstep = settle(server_side.receive(to_server))
            if sstep.result is not None:
                server_result = sstep.result
            to_client = sstep.send
        else:
            to_client = b""
        if to_client:
            transcript.append(("s", to_client))
            cstep = settle(client.receive(to_client))
            if cstep.result is not None:
                client_result = cstep.result
            to_server = cstep.send
        else:
            to_server = b""
        if not to_server and not to_client:
            break
    return client_result, server_result, transcript
