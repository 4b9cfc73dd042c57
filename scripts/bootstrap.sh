#!/usr/bin/env bash
# Idempotent set-up for `make run` and `make test` on Debian 12.
#
#   scripts/bootstrap.sh run    what the proxy needs to run
#   scripts/bootstrap.sh test   what the whole test suite needs (a superset)
#
# Each step is skipped when its result is already there, so a second run
# costs one dpkg-query and a few stat calls:
#   1. Debian packages, installed only when missing (apt-get update only then);
#   2. a virtualenv at .venv, made with the python3 on PATH (>= 3.11);
#   3. the project in editable "compat" mode (a .pth file putting the project
#      directory on sys.path, so Twisted's plugin discovery finds
#      twisted/plugins/socksgss_plugin.py), redone only when setup.cfg or
#      pyproject.toml is newer than the stamp .venv/.installed-<mode>.
set -euo pipefail

mode=${1:-}
case "$mode" in
    run | test) ;;
    *)
        echo "usage: $0 run|test" >&2
        exit 2
        ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
venv=$root/.venv

say() { printf 'bootstrap: %s\n' "$*"; }
die() {
    printf 'bootstrap: error: %s\n' "$*" >&2
    exit 1
}

# python-gssapi has no Linux wheels on PyPI: it builds against MIT Kerberos,
# which needs a compiler, the Python headers and libkrb5-dev even to run.
run_packages=(python3-venv python3-dev gcc libkrb5-dev)
test_packages=(
    python3-venv python3-dev gcc make curl iproute2
    krb5-kdc krb5-admin-server krb5-user libkrb5-dev
    dante-server dante-client microsocks gss-ntlmssp haproxy
)
if [ "$mode" = test ]; then
    packages=("${test_packages[@]}")
else
    packages=("${run_packages[@]}")
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

missing_packages() {
    # dpkg-query prints nothing for a package it has never heard of (and
    # complains on stderr), so anything not reported "installed" is missing.
    local installed
    installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null |
        awk '$NF == "installed" { print $1 }' || true)
    local p
    for p in "${packages[@]}"; do
        grep -qxF -- "$p" <<<"$installed" || printf '%s\n' "$p"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    [ "${#missing[@]}" -eq 0 ] && return 0

    say "installing Debian packages: ${missing[*]}"
    local log policy_added=0
    log=$(mktemp -t txsocksgss-apt.XXXXXX)
    # Installing dante-server would start danted, which fails without a
    # configuration and would fail the install with it: forbid service starts
    # for the duration (policy-rc.d exit 101 = "action forbidden").
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
        # Never leave it behind, even when interrupted.
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0
    {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    } >"$log" 2>&1 || rc=$?
    if [ "$policy_added" -eq 1 ]; then
        as_root rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    if [ "$rc" -ne 0 ]; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get failed (exit $rc)"
    fi
    rm -f "$log"
}

make_venv() {
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    local python
    python=$(command -v python3) || die "python3 not found on PATH"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$python is $("$python" -V 2>&1); txsocksgss needs Python >= 3.11"
    if [ -e "$venv" ]; then
        say "recreating $venv (its python no longer runs)"
        rm -rf "$venv"
    else
        say "creating $venv with $("$python" -c 'import sys; print("Python", sys.version.split()[0], "(" + sys.executable + ")")')"
    fi
    "$python" -m venv "$venv"
    # Debian 12's bundled pip (23.0) predates reliable --config-settings for
    # editable installs; bring a current one.
    "$venv/bin/python" -m pip install -q --upgrade pip
}

stamp_is_fresh() {
    local stamp=$1
    [ -e "$stamp" ] && [ ! setup.cfg -nt "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]
}

install_project() {
    # A test install is a superset of a run install.
    if stamp_is_fresh "$venv/.installed-$mode" ||
        { [ "$mode" = run ] && stamp_is_fresh "$venv/.installed-test"; }; then
        return 0
    fi
    local target=.
    [ "$mode" = test ] && target='.[test,docs]'
    say "installing txsocksgss in editable mode: pip install -e '$target'"
    "$venv/bin/python" -m pip install -q \
        --config-settings editable_mode=compat -e "$target"
    touch "$venv/.installed-$mode"
}

install_packages
make_venv
install_project
if [ "$mode" = test ]; then
    # Dante with GSS-API, rebuilt from Debian's own source package (Debian's
    # packages are built without it); cached in /opt, quick when present.
    bash tests/interop/build_dante_gssapi.sh
fi
