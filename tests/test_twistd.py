"""
`twistd -n socksgss` as a subprocess: started, used through curl, stopped
with SIGTERM cleanly; and refused when it would be an open proxy.
"""

from __future__ import annotations

import signal

import pytest
from twisted.internet.defer import inlineCallbacks

from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.processes import LISTENING, require_program, run_program, spawnTwistd


class TwistdTests(IntegrationTestCase):
    @pytest.mark.interop
    @inlineCallbacks
    def test_start_use_and_stop_with_sigterm(self):
        port = free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1")
        yield process.waitFor(LISTENING)
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
        process = spawnTwistd(self, "--listen", "tcp:0:interface=0.0.0.0", twistd_args=())
        try:
            yield process.waitFor(LISTENING)
        except AssertionError:
            pass
        exit_code, _signal = yield process.ended
        self.assertNotEqual(exit_code, 0)
        self.assertIn(b"refusing to start an unauthenticated proxy", process.output)
        self.assertIn(b"--allow-open", process.output)
