"""
Starting and stopping the proxies under test, each a subprocess on a free
port of 127.0.0.1 with no authentication ("none"), logging one line per
session to a file in the work directory:

- txsocksgss: ``twistd -n --pidfile= --logfile=FILE --logger
  txsocksgss.logs.fastTextObserver socksgss --listen
  tcp:PORT:interface=127.0.0.1 --method none --max-sessions-per-client 0``
  (the project's text log observer, as ``make run``)
  plus `Settings.proxy_args` (every client of the harness is 127.0.0.1, and
  the idle-tunnel test opens thousands: Dante's configuration has no such
  cap either);
- Dante: Debian's ``danted -N 1`` with a generated configuration
  (``log: disconnect`` on the session rule: one line per session, as ours);
- microsocks: ``microsocks -i 127.0.0.1 -p PORT`` (it logs each CONNECT).

The same functions start txsocksgss and the GSS-API build of Dante with
method gssapi for `benchmarks.gss`.  A proxy is ready once it accepts TCP
connections; a proxy that exits first (its port was taken meanwhile) is
started again on another port.  They inherit the harness's raised
RLIMIT_NOFILE.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from benchmarks.processes import descendants, die_with_parent
from benchmarks.socks import LOOPBACK

__all__ = ["Proxy", "ProxyStartError", "require_program", "start_txsocksgss", "start_dante", "start_microsocks",
           "start_proxy", "dante_config"]

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
# twistd's --logger for txsocksgss: the same text log as twistd's own, less CPU per line.
TEXT_LOGGER = "txsocksgss.logs.fastTextObserver"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_ATTEMPTS = 3


class ProxyStartError(RuntimeError):
    """A proxy could not be started; the message carries the end of its log."""


def require_program(name: str) -> str:
    """The path of ``name``; a missing peer is an error (never a skip)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/bin")
    if path is None:
        raise ProxyStartError(f"{name} is not installed; `make bench` installs it (scripts/bootstrap.sh test)")
    return path


@dataclass
class Proxy:
    """A running proxy: where it listens, its process, its log file."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: str
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, size: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, SIGKILL after `STOP_TIMEOUT`, then SIGKILL to any descendant left behind."""
        if self.process.poll() is not None:
            return
        family = descendants(self.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _wait_listening(proxy: Proxy) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proxy.process.poll() is not None:
            raise ProxyStartError(f"{proxy.name} exited (status {proxy.process.returncode}) before it listened; "
                                  f"its log:\n{proxy.log_tail()}")
        try:
            socket.create_connection((LOOPBACK, proxy.port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                proxy.stop()
                raise ProxyStartError(f"{proxy.name} not listening on {proxy.port} within {READY_TIMEOUT} s; "
                                      f"its log:\n{proxy.log_tail()}") from None
            time.sleep(0.02)


def _start(name: str, workdir: str, command: Callable[[int, str], list[str]],
           env: dict[str, str] | None = None) -> Proxy:
    """Run ``command(port, log_path)`` until one attempt listens (a port taken meanwhile: another port)."""
    for attempt in range(_ATTEMPTS):
        port = _free_port()
        log_path = os.path.join(workdir, f"{name}-{port}.log")
        argv = command(port, log_path)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=workdir, env=dict(os.environ if env is None else env),
                                       preexec_fn=die_with_parent)
        proxy = Proxy(name, port, process, log_path, argv)
        try:
            _wait_listening(proxy)
        except ProxyStartError:
            if "Address already in use" in proxy.log_tail() and attempt + 1 < _ATTEMPTS:
                continue
            raise
        return proxy
    raise AssertionError("unreachable")


def start_txsocksgss(workdir: str, extra_args: Sequence[str] = (), method_args: Sequence[str] = ("--method", "none"),
                     env: dict[str, str] | None = None, name: str = "txsocksgss",
                     logger: str | None = TEXT_LOGGER) -> Proxy:
    """
    ``twistd -n socksgss`` on 127.0.0.1 with ``method_args`` and then
    ``extra_args``; ``logger`` is twistd's ``--logger`` (None: twistd's
    default text log, as a tree without `TEXT_LOGGER` needs).
    """
    def command(port: int, log_path: str) -> list[str]:
        return [TWISTD, "-n", "--pidfile=", f"--logfile={log_path}", *(("--logger", logger) if logger else ()),
                "socksgss", "--listen", f"tcp:{port}:interface={LOOPBACK}", "--max-sessions-per-client", "0",
                *method_args, *extra_args]

    return _start(name, workdir, command, env)


def dante_config(port: int, method: str = "none", keytab: str | None = None,
                 levels: str = "integrity confidentiality") -> str:
    """
    A Dante 1.4 configuration: 127.0.0.1:``port``, CONNECT for clients of
    127.0.0.0/8, ``method`` none or gssapi (``rcmd`` from ``keytab`` at
    ``levels``; Dante reads the gssapi keywords of the client rule, so both
    rules carry them), one log line per session.
    """
    gssapi = ""
    if method == "gssapi":
        gssapi = f"  gssapi.servicename: rcmd\n  gssapi.keytab: {keytab}\n  gssapi.enctype: {levels}\n"
    return (
        "logoutput: stderr\n"
        f"internal: {LOOPBACK} port = {port}\n"
        f"external: {LOOPBACK}\n"
        f"socksmethod: {method}\n"
        "clientmethod: none\n"
        "user.privileged: root\n"
        "user.unprivileged: nobody\n"
        "client pass {\n"
        "  from: 127.0.0.0/8 to: 0.0.0.0/0\n"
        f"{gssapi}"
        "  log: error\n"
        "}\n"
        "socks pass {\n"
        "  from: 127.0.0.0/8 to: 0.0.0.0/0\n"
        "  command: connect\n"
        f"{gssapi}"
        "  log: error disconnect\n"
        "}\n"
    )


def start_dante(workdir: str, program: str | None = None, method: str = "none", keytab: str | None = None,
                env: dict[str, str] | None = None, name: str = "dante") -> Proxy:
    """Dante (Debian's danted unless ``program`` names another sockd) with `dante_config`."""
    executable = program or require_program("danted")

    def command(port: int, log_path: str) -> list[str]:
        config = os.path.join(workdir, f"{name}-{port}.conf")
        with open(config, "w") as f:
            f.write(dante_config(port, method, keytab))
        return [executable, "-N", "1", "-f", config, "-p", os.path.join(workdir, f"{name}-{port}.pid")]

    return _start(name, workdir, command, env)


def start_microsocks(workdir: str) -> Proxy:
    executable = require_program("microsocks")
    return _start("microsocks", workdir, lambda port, _log: [executable, "-i", LOOPBACK, "-p", str(port)])


def start_proxy(name: str, workdir: str, proxy_args: Sequence[str]) -> Proxy:
    """One of `benchmarks.settings.PROXIES` with method none."""
    if name == "txsocksgss":
        return start_txsocksgss(workdir, proxy_args)
    if name == "dante":
        return start_dante(workdir)
    if name == "microsocks":
        return start_microsocks(workdir)
    raise ValueError(f"unknown proxy {name!r}")
