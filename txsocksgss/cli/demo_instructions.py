"""
What ``socksgss demo`` prints once everything runs: `format_instructions`
gives a summary of the set-up and the commands to paste into another
shell, a valid shell script that works as printed; `socksgss_command` is
how those commands spell ``socksgss``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import Callable

from txsocksgss.cli.console import PROGRAM
from txsocksgss.cli.demo_realm import SERVICE_HOST, DemoRealm
from txsocksgss.cli.demo_setup import PROXY_PROTECTION

__all__ = ["Instructions", "format_instructions", "socksgss_command"]

def socksgss_command(executable: str | None = None, which: Callable[[str], str | None] = shutil.which) -> str:
    """
    How to run ``socksgss`` from a shell, as the printed commands spell it:
    ``socksgss`` when that is the console script next to the running
    interpreter, its absolute path when PATH finds another one or none,
    and ``PYTHON -m txsocksgss.cli`` when the interpreter has no script.
    """
    executable = executable or sys.executable
    # Not realpath: a virtualenv's python is a symbolic link out of its bin.
    script = os.path.join(os.path.dirname(os.path.abspath(executable)), PROGRAM)
    if not os.access(script, os.X_OK):
        return shlex.join([executable, "-m", "txsocksgss.cli"])
    on_path = which(PROGRAM)
    try:
        if on_path is not None and os.path.samefile(on_path, script):
            return PROGRAM
    except OSError:
        pass
    return shlex.quote(script)


@dataclass(frozen=True)
class Instructions:
    """Everything the printed instructions name."""

    realm: DemoRealm
    proxy_port: int
    http_port: int
    socksgss: str = PROGRAM
    curl_missing: bool = False


def format_instructions(i: Instructions) -> str:
    """
    The text printed once everything runs: a summary of the set-up, then a
    block of commands that is a valid shell script (every other line in it
    is a comment) and works as printed in another shell.
    """
    realm = i.realm
    q = shlex.quote
    exports = " ".join(f"{name}={q(value)}" for name, value in realm.client_env().items())
    url = f"http://127.0.0.1:{i.http_port}/"
    proxy = f"{SERVICE_HOST}:{i.proxy_port}"
    gssapi = (f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {i.socksgss} connect --proxy socks5h://{proxy} "
              f"--method gssapi --gssapi-protection confidentiality 127.0.0.1 {i.http_port}")
    userpass = (f"curl --socks5-basic --proxy-user {q(f'{realm.user}:{realm.password}')} "
                f"--socks5-hostname {proxy} {url}")
    none = f"curl --socks5-basic --socks5-hostname {proxy} {url}"
    levels = ", ".join(PROXY_PROTECTION)
    lines = [
        f"{PROGRAM} demo: a throwaway Kerberos realm and a SOCKS proxy, all on 127.0.0.1",
        "",
        f"  realm     {realm.name}, in {realm.directory} (removed when the demo stops)",
        f"  KDC       krb5kdc on 127.0.0.1:{realm.kdc_port}, log in {realm.kdc_log}",
        f"  user      {realm.user_principal}, password {realm.password}, ticket in {realm.ccache}",
        f"  service   {realm.service_principal}, keytab {realm.keytab}",
        f"  proxy     SOCKS 5 on 127.0.0.1:{i.proxy_port}, methods gssapi (levels {levels}), "
        f"userpass (user {realm.user}, file {realm.passwd}), none",
        f"  web page  {url}, served by the demo itself: nothing leaves 127.0.0.1",
        "",
        "Paste these commands into another shell:",
        "",
        "# 1. GSS-API: the demo user's Kerberos ticket, then this project's client fetching the page",
        "#    through the proxy at protection level 2 (confidentiality); add -v to see the handshake.",
        f"export {exports}",
        "klist",
        gssapi,
        "",
        "# 2. Username and password, with curl (--socks5-basic: curl offers GSS-API too unless told",
        "#    not to, this proxy prefers it, and curl's GSS-API does not protect the data).",
        userpass,
        "",
        "# 3. No authentication.",
        none,
    ]
    if i.curl_missing:
        lines += ["", "# curl is not installed here: sudo apt-get install curl"]
    lines += [
        "",
        "Sessions as the proxy sees them, live (Ctrl-C stops the demo and removes the realm):",
    ]
    return "\n".join(lines) + "\n"
