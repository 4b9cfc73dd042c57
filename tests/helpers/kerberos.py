"""
A throwaway MIT Kerberos realm for the tests (k5test over Debian's krb5-kdc).

`test_realm()` starts one realm per test process, on the first call: a KDC
on 127.0.0.1, the user principal ``user@KRBTEST.COM`` with a ticket in the
realm's credential cache, and the service principal ``rcmd/localhost`` in
`TestRealm.service_keytab`.  The process environment points the GSS-API
library at the realm (KRB5_CONFIG, KRB5CCNAME, KRB5_KTNAME), so both our
client and our server use it.  The realm is destroyed when the process exits.

krb5.conf turns off reverse DNS and host name canonicalisation, so
``rcmd@localhost`` always means ``rcmd/localhost@KRBTEST.COM``.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

from tests.helpers.ports import free_portbase

__all__ = ["TestRealm", "test_realm", "SERVICE_HOST"]

SERVICE_HOST = "localhost"
_realm: "TestRealm | None" = None


@dataclass
class TestRealm:
    """The running realm and the paths the tests need."""

    realm: Any  # k5test.K5Realm
    service_principal: str
    service_keytab: str
    user_principal: str
    user_password: str
    ccache: str

    @property
    def name(self) -> str:
        return str(self.realm.realm)

    def env(self) -> dict[str, str]:
        """The environment for a child process that should use this realm."""
        return {**os.environ, **self.realm.env}

    def addUser(self, name: str, password: str) -> str:
        """Add a user principal (kadmin.local splits its query on spaces: no spaces in ``password``)."""
        if " " in password:
            raise ValueError("k5test passes the password through a kadmin query: no spaces")
        principal = f"{name}@{self.name}"
        self.realm.addprinc(principal, password)
        return principal

    def addService(self, principal: str, keytab: str) -> None:
        self.realm.addprinc(f"{principal}@{self.name}")
        self.realm.extract_keytab(f"{principal}@{self.name}", keytab)

    def kinit(self, principal: str, password: str, ccache: str, flags: list[str] | None = None) -> None:
        self.realm.kinit(principal, password, flags=["-c", ccache, *(flags or [])])


def test_realm() -> TestRealm:
    """The realm of this test process, started on first use."""
    global _realm
    if _realm is not None:
        return _realm
    from k5test import K5Realm

    portbase = free_portbase()
    realm = K5Realm(
        portbase=portbase,
        krb5_conf={
            "libdefaults": {
                "rdns": "false",
                "dns_canonicalize_hostname": "false",
                "ignore_acceptor_hostname": "true",
                "udp_preference_limit": "1",
            },
            "realms": {"$realm": {"kdc": f"127.0.0.1:{portbase}"}},
        },
        kdc_conf={"realms": {"$realm": {"kdc_listen": f"{portbase}", "kdc_tcp_listen": f"{portbase}"}}},
    )
    atexit.register(realm.stop)
    os.environ.update(realm.env)
    service = f"rcmd/{SERVICE_HOST}"
    keytab = os.path.join(realm.tmpdir, "rcmd.keytab")
    realm.addprinc(f"{service}@{realm.realm}")
    realm.extract_keytab(f"{service}@{realm.realm}", keytab)
    _realm = TestRealm(
        realm=realm,
        service_principal=f"{service}@{realm.realm}",
        service_keytab=keytab,
        user_principal=realm.user_princ,
        user_password=realm.password("user"),
        ccache=realm.ccache,
    )
    return _realm


test_realm.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
TestRealm.__test__ = False  # type: ignore[attr-defined]
