"""
The MIT Kerberos programs ``socksgss demo`` runs: which they are, where
they are (`find_kerberos_programs`), and what to tell the user when some
are missing (`missing_programs_message`: the Debian packages to install).
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping, Sequence

from txsocksgss.cli.console import PROGRAM

__all__ = ["KERBEROS_PROGRAMS", "find_kerberos_programs", "missing_programs_message"]

#: Every MIT Kerberos program the demo runs, with the Debian package holding it.
KERBEROS_PROGRAMS: Mapping[str, str] = {
    "krb5kdc": "krb5-kdc",
    "kdb5_util": "krb5-kdc",
    "kadmin.local": "krb5-admin-server",
    "kinit": "krb5-user",
}
# The administration programs live in sbin, often not on an ordinary user's PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_kerberos_programs(path: str | None = None) -> tuple[dict[str, str], list[str]]:
    """
    Find every program of `KERBEROS_PROGRAMS` on ``path``, a list of
    directories as PATH spells it (default: PATH, then the sbin directories).

    :return: the paths found by name, and the names not found (in the order
        of `KERBEROS_PROGRAMS`).
    """
    search = path if path is not None else os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in KERBEROS_PROGRAMS:
        location = shutil.which(name, path=search)
        if location is None:
            missing.append(name)
        else:
            found[name] = location
    return found, missing


def missing_programs_message(missing: Sequence[str]) -> str:
    """What to tell the user when ``missing`` programs are not installed: names, packages, the command."""
    packages = list(dict.fromkeys(KERBEROS_PROGRAMS.values()))
    by_package = ", ".join(f"{name} ({KERBEROS_PROGRAMS[name]})" for name in missing)
    return (
        f"{PROGRAM} demo: error: the demo runs its own MIT Kerberos KDC, and these programs are "
        f"missing: {by_package}.\n"
        f"On Debian or Ubuntu, install them with:\n\n"
        f"    sudo apt-get install {' '.join(packages)}\n\n"
        f"The demo only runs these programs, in a temporary directory of its own: it neither configures "
        f"nor uses the system's KDC (which the krb5-kdc package may start; `sudo systemctl disable --now "
        f"krb5-kdc` stops it).\n"
    )
