"""
The demo's throwaway Kerberos realm: `DemoRealm` names every file in its
temporary directory (``krb5.conf``, ``kdc.conf``, the KDC database, the
keytab of the proxy's service principal, the demo user's ticket cache, the
proxy's password file) and writes the two configuration files' text.  No
DNS and no host name canonicalisation anywhere, so ``rcmd@localhost``
always means ``rcmd/localhost@SOCKSGSS.TEST``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["REALM_NAME", "USER_NAME", "SERVICE_NAME", "SERVICE_HOST", "DemoRealm"]

REALM_NAME = "SOCKSGSS.TEST"  # .test is reserved for testing (RFC 2606)
USER_NAME = "demo"
SERVICE_NAME = "rcmd"  # what Dante, curl and our client ask for by default
SERVICE_HOST = "localhost"  # the proxy's name in the printed proxy URL


@dataclass(frozen=True)
class DemoRealm:
    """
    The paths and names of the throwaway realm in ``directory``.

    :ivar kdc_port: the KDC's TCP and UDP port on 127.0.0.1.
    :ivar password: the demo user's, for Kerberos and the proxy's password file alike.
    """

    directory: str
    kdc_port: int
    password: str = field(repr=False)
    name: str = REALM_NAME
    user: str = USER_NAME

    @property
    def krb5_conf(self) -> str:
        return os.path.join(self.directory, "krb5.conf")

    @property
    def kdc_conf(self) -> str:
        return os.path.join(self.directory, "kdc.conf")

    @property
    def keytab(self) -> str:
        return os.path.join(self.directory, "proxy.keytab")

    @property
    def ccache(self) -> str:
        return os.path.join(self.directory, "ccache")

    @property
    def passwd(self) -> str:
        return os.path.join(self.directory, "passwd")

    @property
    def kdc_log(self) -> str:
        return os.path.join(self.directory, "kdc.log")

    @property
    def user_principal(self) -> str:
        return f"{self.user}@{self.name}"

    @property
    def service_principal(self) -> str:
        return f"{SERVICE_NAME}/{SERVICE_HOST}@{self.name}"

    def krb5_conf_text(self) -> str:
        """
        The clients' (and the proxy's) krb5.conf.  No DNS anywhere, and no
        host name canonicalisation, so the service principal is the name
        the client was given (``localhost``); TCP first, since the KDC is
        on loopback anyway.
        """
        return (
            "[libdefaults]\n"
            f"    default_realm = {self.name}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    rdns = false\n"
            "    dns_canonicalize_hostname = false\n"
            "    ignore_acceptor_hostname = true\n"
            "    udp_preference_limit = 1\n"
            "\n[realms]\n"
            f"    {self.name} = {{\n"
            f"        kdc = 127.0.0.1:{self.kdc_port}\n"
            "    }\n"
            "\n[domain_realm]\n"
            f"    {SERVICE_HOST} = {self.name}\n"
        )

    def kdc_conf_text(self) -> str:
        """The KDC's kdc.conf: listen on 127.0.0.1 only, everything in the directory."""
        listen = f"127.0.0.1:{self.kdc_port}"
        return (
            "[kdcdefaults]\n"
            f"    kdc_listen = {listen}\n"
            f"    kdc_tcp_listen = {listen}\n"
            "\n[realms]\n"
            f"    {self.name} = {{\n"
            f"        database_name = {os.path.join(self.directory, 'principal')}\n"
            f"        key_stash_file = {os.path.join(self.directory, 'stash')}\n"
            f"        kdc_listen = {listen}\n"
            f"        kdc_tcp_listen = {listen}\n"
            "    }\n"
            "\n[logging]\n"
            f"    kdc = FILE:{self.kdc_log}\n"
        )

    def client_env(self) -> dict[str, str]:
        """The variables a shell exports to use the realm (`Instructions` prints them)."""
        return {"KRB5_CONFIG": self.krb5_conf, "KRB5CCNAME": f"FILE:{self.ccache}"}

    def program_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` pointed at the realm, for the Kerberos programs and for the proxy itself."""
        env = {k: v for k, v in base.items() if k not in ("KRB5CCNAME", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME")}
        env.update(KRB5_CONFIG=self.krb5_conf, KRB5_KDC_PROFILE=self.kdc_conf,
                   # The replay cache would otherwise outlive the demo in /var/tmp.
                   KRB5RCACHEDIR=self.directory)
        return env
