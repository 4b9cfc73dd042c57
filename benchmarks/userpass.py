"""
Connection rate with username/password (RFC 1929): the load of
`benchmarks.connrate` (handshake, CONNECT to the echo port, a 1-byte
echo, the close, a fixed number in flight for a fixed time), except that
the client offers method 02 and sends the username/password request
before the CONNECT.  The proxy runs ``--method userpass --passwd FILE``
with FILE written by `txsocksgss.auth.passwordfile.set_password` at one
of two scrypt costs:

- ``scrypt-default``: set_password's default (N=2**14, r=8, p=1, 16 MiB
  and tens of milliseconds per login, run off the reactor in Twisted's
  thread pool).  This rate is bound by the hash: it says what a real
  password file allows, not what the proxy's own code costs;
- ``scrypt-cheap``: N=2**4 (r=8, p=1), microseconds per login, so that the
  rest of the session, the proxy's own work, shows.

Before the measured run, an unrecorded warm-up of at most a second, and a
wait until the proxy is quiet again: hashes queued for the warm-up's
clients go on after those clients are gone, and must not fall into the
measured run.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.connrate import measure_connection_rate
from benchmarks.processes import wait_until_quiet
from benchmarks.proxies import Proxy
from benchmarks.settings import Settings

__all__ = ["USER", "PASSWORD", "COSTS", "DEFAULT_COST_SECONDS", "password_file", "userpass_method_args", "measure_userpass_rate"]

USER = b"bench"
PASSWORD = b"bench-password"
# The scrypt cost of each password file: set_password's keyword arguments (hash_password's n, r, p).
# The default cost's rate runs for at least DEFAULT_COST_SECONDS (see measure_userpass_rate).
COSTS: dict[str, dict[str, int]] = {
    "scrypt-default": {},
    "scrypt-cheap": {"n": 2**4},
}
DEFAULT_COST_SECONDS = 3.0


def password_file(workdir: str, cost: str) -> str:
    """The password file of ``cost`` (a key of `COSTS`) in ``workdir``, written on the first call."""
    from txsocksgss.auth.passwordfile import set_password

    path = os.path.join(workdir, f"passwd-{cost}")
    if not os.path.exists(path):
        set_password(path, USER.decode("ascii"), PASSWORD, **COSTS[cost])
    return path


def userpass_method_args(passwd: str) -> list[str]:
    """txsocksgss's method arguments for username/password with the file ``passwd``."""
    return ["--method", "userpass", "--passwd", passwd]


def measure_userpass_rate(proxy: Proxy, echo_port: int, settings: Settings, min_seconds: float = 0.0
                          ) -> dict[str, Any]:
    """
    `measure_connection_rate` with method 02 against ``proxy`` (a warm-up
    first, see the module's docstring) for ``settings.rate_seconds``, or
    ``min_seconds`` if longer (a slow hash completes few sessions: a short
    run may see none), its keys prefixed ``userpass_``.
    """
    measure_connection_rate(proxy.port, echo_port, settings.rate_concurrency, settings.rate_processes,
                            min(1.0, settings.rate_seconds), proxy.pid, (USER, PASSWORD))
    wait_until_quiet(proxy.pid)
    result = measure_connection_rate(proxy.port, echo_port, settings.rate_concurrency, settings.rate_processes,
                                     max(min_seconds, settings.rate_seconds), proxy.pid, (USER, PASSWORD))
    return {f"userpass_{key}": value for key, value in result.items()}
