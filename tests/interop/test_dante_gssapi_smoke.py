"""
The GSS-API interop rig, proved with Dante on both ends (no txsocksgss code):

    client namespace                      root namespace                         destination namespace
    curl + libdsocks.so (Dante client) -> sockd (Dante, GSS-API) 10.200.X.1 -> http.server 10.201.X.2
    ticket for user@KRBTEST.COM           keytab rcmd/socks-proxy.test

curl runs socksified (LD_PRELOAD of the GSS-API build's libdsocks.so) in a
network namespace whose only link leads to the proxy, and fetches a random
body from an HTTP server in another namespace that only the proxy reaches;
the body must arrive byte for byte, at each protection level, and sockd's
log must show the level and the principal.  A level the server does not
offer is refused.

Needs root (namespaces), MIT Kerberos (tests/helpers/kerberos.py) and the GSS-API
build of Dante made by tests/interop/build_dante_gssapi.sh (which
``scripts/bootstrap.sh test`` runs); a missing build fails the test with a
message naming the script.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue

from tests.interop.dante import (
    GSSAPINamespaceRig,
    dante_client_config,
    dante_server_config,
    socksify_argv,
    Sockd,
)

pytestmark = [pytest.mark.interop, pytest.mark.kerberos]

PROXY_PORT = 1080  # on the topology's own address, so it cannot clash
BODY_SIZE = 3_000_000
# curl's exit code when libdsocks reports the proxy connection as refused.
CURL_COULDNT_CONNECT = 7


class DanteGSSAPISmokeTests(GSSAPINamespaceRig):
    body_size = BODY_SIZE

    @inlineCallbacks
    def startSockd(self, enctypes=("clear", "integrity", "confidentiality")):
        config = dante_server_config(
            self.topology.proxy_address, PROXY_PORT, self.topology.external_address,
            keytab=self.keytab, enctypes=enctypes)
        sockd = Sockd.start(self.build, config, os.path.join(self.workdir, "sockd"))
        self.addCleanup(sockd.stop)
        yield sockd.ready()
        return sockd

    def fetch(self, enctype: str):
        """Run socksified curl in the client namespace; fires with (stdout, stderr, exit code)."""
        conf = os.path.join(self.workdir, f"socks-{enctype}.conf")
        with open(conf, "w") as f:
            f.write(dante_client_config(self.topology.proxy_address, PROXY_PORT, enctype=enctype))
        argv = self.topology.client.argv(*socksify_argv(
            self.build,
            [self.curl, "--silent", "--show-error", "--max-time", "60", "--output", "-", self.url],
            conf,
            {"KRB5CCNAME": f"FILE:{self.ccache}", "KRB5_CONFIG": self.krb5_conf},
        ))
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        return getProcessOutputAndValue(argv[0], argv[1:], env=env, reactor=reactor)

    @inlineCallbacks
    def assertFetchedAt(self, enctype: str):
        sockd = yield self.startSockd()
        out, err, code = yield self.fetch(enctype)
        diagnostics = f"curl stderr:\n{err.decode(errors='replace')[-4000:]}\nsockd log:\n{sockd.log[-4000:]}"
        self.assertEqual(code, 0, diagnostics)
        self.assertEqual(len(out), len(self.body), diagnostics)
        self.assertTrue(out == self.body, "the body differs from what the server sent")
        yield sockd.waitForSession()
        sessions = sockd.sessions()
        self.assertEqual(len(sessions), 1, sockd.log)
        self.assertEqual(
            (sessions[0].method, sessions[0].level, sessions[0].principal),
            ("gssapi", enctype, self.realm.user_principal),
            sockd.log)
        self.assertEqual(sessions[0].destination, f"{self.topology.destination.address}.{self.http_port}")
        self.assertTrue(sessions[0].client.startswith(self.topology.client.address + "."), sessions[0])

    def test_confidentiality(self):
        return self.assertFetchedAt("confidentiality")

    def test_integrity(self):
        return self.assertFetchedAt("integrity")

    def test_clear(self):
        """Dante's level 0 extension: authentication only, then the plain stream."""
        return self.assertFetchedAt("clear")

    @inlineCallbacks
    def test_level_not_offered_is_refused(self):
        """Asked for confidentiality, a server offering only integrity closes; nothing reaches the destination."""
        sockd = yield self.startSockd(enctypes=("integrity",))
        out, err, code = yield self.fetch("confidentiality")
        self.assertEqual(code, CURL_COULDNT_CONNECT, err.decode(errors="replace"))
        self.assertEqual(out, b"")
        yield sockd.process.waitFor(r"Client requests confidentiality \(0x2\), but we offer")
        self.assertEqual(sockd.sessions(), [])
        self.assertNotIn("GET /body", self.http.text)
