"""
`twistd -n socksgss` as a subprocess: started, used through curl, stopped
with SIGTERM cleanly; and refused when it would be an open proxy.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol

from tests.support import IntegrationTestCase, require_program, run_program

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwistdProcess(ProcessProtocol):
    """Collects output; ``ready`` fires when the service logs that it listens."""

    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"txsocksgss listening on" in self.output:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError("twistd exited before listening:\n" + self.output.decode()))
        self.ended.callback((reason.value.exitCode, getattr(reason.value, "signal", None)))


class TwistdTests(IntegrationTestCase):
    def spawn(self, *args: str) -> TwistdProcess:
        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process, TWISTD, [TWISTD, "-n", "--pidfile=", "--logfile=-", "socksgss", *args],
            env=dict(os.environ),
        )
        self.addCleanup(lambda: None if process.ended.called else (transport.signalProcess("KILL"), process.ended)[1])
        process.transport = transport
        return process

    @pytest.mark.interop
    @inlineCallbacks
    def test_start_use_and_stop_with_sigterm(self):
        port = free_port()
        process = self.spawn("--listen", f"tcp:{port}:interface=127.0.0.1")
        yield process.ready
        web_port, _web = self.byteServer(b"through twistd")
        out, err, code = yield run_program(
            require_program("curl"),
            ["--silent", "--show-error", "--socks5-hostname", f"127.0.0.1:{port}", f"http://localhost:{web_port}/"],
        )
        self.assertEqual((code, out), (0, b"through twistd"), err)
        process.transport.signalProcess(signal.SIGTERM)
        exit_code, exit_signal = yield process.ended
        # twistd re-raises the signal that stopped it once it has shut down.
        self.assertIn((exit_code, exit_signal), [(0, None), (None, signal.SIGTERM)], process.output.decode())
        self.assertNotIn(b"Traceback", process.output)
        self.assertIn(b"outcome=closed", process.output)
        self.assertIn(b"Server Shut Down", process.output)

    @inlineCallbacks
    def test_refuses_open_proxy_on_public_address(self):
        process = TwistdProcess()
        reactor.spawnProcess(
            process, TWISTD, [TWISTD, "-n", "--pidfile=", "socksgss", "--listen", "tcp:0:interface=0.0.0.0"],
            env=dict(os.environ),
        )
        try:
            yield process.ready
        except AssertionError:
            pass
        exit_code, _signal = yield process.ended
        self.assertNotEqual(exit_code, 0)
        self.assertIn(b"refusing to start an unauthenticated proxy", process.output)
        self.assertIn(b"--allow-open", process.output)
