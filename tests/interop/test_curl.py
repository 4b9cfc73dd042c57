"""
curl (Debian's 7.88) as the SOCKS 5 client of our server, on 127.0.0.1:
--socks5, --socks5-hostname, --proxy-user (good and bad password), and a
denying rule.  The body fetched through the proxy is compared byte for byte.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import inlineCallbacks

from tests.helpers.integration import IntegrationTestCase
from tests.helpers.processes import require_program, run_program
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.server.rules import rules_from_table

pytestmark = pytest.mark.interop

# curl's exit code when the SOCKS proxy refuses the handshake or the request.
CURL_PROXY_HANDSHAKE_ERROR = 97


class CurlSOCKS5Tests(IntegrationTestCase):
    def curl(self, *args: str):
        return run_program(require_program("curl"), ["--silent", "--show-error", "--max-time", "60", *args])

    @inlineCallbacks
    def test_socks5_local_resolution(self):
        body = os.urandom(2_000_000)
        web_port, _web = self.byteServer(body)
        socks_port, _factory = self.startSOCKS()
        out, err, code = yield self.curl("--socks5", f"127.0.0.1:{socks_port}", f"http://127.0.0.1:{web_port}/")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, body)

    @inlineCallbacks
    def test_socks5_hostname_resolved_by_the_proxy(self):
        body = b"resolved on the proxy\n" * 1000
        web_port, _web = self.byteServer(body)
        socks_port, factory = self.startSOCKS()
        out, err, code = yield self.curl(
            "--socks5-hostname", f"127.0.0.1:{socks_port}", f"http://localhost:{web_port}/"
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out, body)

    @inlineCallbacks
    def test_proxy_user_good_password(self):
        path = self.mktemp()
        set_password(path, "alice", b"correct horse", n=2**10)
        web_port, _web = self.byteServer(b"welcome, alice")
        socks_port, _factory = self.startSOCKS(methods=["userpass"], passwd=path)
        out, err, code = yield self.curl(
            "--socks5-hostname", f"127.0.0.1:{socks_port}", "--proxy-user", "alice:correct horse",
            f"http://localhost:{web_port}/",
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"welcome, alice")

    @inlineCallbacks
    def test_proxy_user_bad_password_is_refused(self):
        path = self.mktemp()
        set_password(path, "alice", b"correct horse", n=2**10)
        web_port, web = self.byteServer(b"nothing for you")
        socks_port, _factory = self.startSOCKS(methods=["userpass"], passwd=path)
        out, err, code = yield self.curl(
            "--socks5", f"127.0.0.1:{socks_port}", "--proxy-user", "alice:battery staple",
            f"http://127.0.0.1:{web_port}/",
        )
        self.assertEqual(code, CURL_PROXY_HANDSHAKE_ERROR, err)
        self.assertEqual(out, b"")
        self.assertEqual(web.closed, 0)

    @inlineCallbacks
    def test_no_credentials_when_password_required(self):
        path = self.mktemp()
        set_password(path, "alice", b"correct horse", n=2**10)
        web_port, _web = self.byteServer(b"nothing")
        socks_port, _factory = self.startSOCKS(methods=["userpass"], passwd=path)
        _out, err, code = yield self.curl("--socks5", f"127.0.0.1:{socks_port}", f"http://127.0.0.1:{web_port}/")
        self.assertEqual(code, CURL_PROXY_HANDSHAKE_ERROR, err)

    @inlineCallbacks
    def test_denying_rule(self):
        web_port, web = self.byteServer(b"forbidden")
        rules = rules_from_table({"rule": [{"action": "deny", "to": ["localhost"]}], "default": "allow"})
        socks_port, _factory = self.startSOCKS(rules=rules)
        _out, err, code = yield self.curl(
            "--socks5-hostname", f"127.0.0.1:{socks_port}", f"http://localhost:{web_port}/"
        )
        self.assertEqual(code, CURL_PROXY_HANDSHAKE_ERROR, err)
        # curl 7.88 prints the SOCKS reply code: "Can't complete SOCKS5 connection to localhost. (2)"
        self.assertIn(b"(2)", err)
        self.assertEqual(web.closed, 0)


class CurlSOCKS4Tests(IntegrationTestCase):
    def curl(self, *args: str):
        return run_program(require_program("curl"), ["--silent", "--show-error", "--max-time", "60", *args])

    @inlineCallbacks
    def test_socks4(self):
        body = os.urandom(500_000)
        web_port, _ = self.byteServer(body)
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], )
        out, err, code = yield self.curl("--socks4", f"127.0.0.1:{socks_port}", f"http://127.0.0.1:{web_port}/")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, body)

    @inlineCallbacks
    def test_socks4a_name_resolved_by_the_proxy(self):
        web_port, _ = self.byteServer(b"four-a")
        socks_port, factory = self.startSOCKS(methods=["none", "socks4"], )
        logs = self.captureLogs()
        out, err, code = yield self.curl("--socks4a", f"127.0.0.1:{socks_port}", f"http://localhost:{web_port}/")
        self.assertEqual((code, out), (0, b"four-a"), err)
        self.assertTrue([line for line in logs if "socks4" in line and f"destination=localhost:{web_port}" in line])

    @inlineCallbacks
    def test_socks4_denied_by_rule(self):
        web_port, web = self.byteServer(b"no")
        rules = rules_from_table({"rule": [{"action": "deny", "versions": [4]}], "default": "allow"})
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], rules=rules)
        _out, err, code = yield self.curl("--socks4", f"127.0.0.1:{socks_port}", f"http://127.0.0.1:{web_port}/")
        self.assertEqual(code, CURL_PROXY_HANDSHAKE_ERROR, err)
        self.assertEqual(web.closed, 0)
