#!/usr/bin/env bash
# Build a GSS-API-enabled Dante (sockd and the socksify client library
# libdsocks.so) from Debian 12's own source package, for the interop tests.
#
#   tests/interop/build_dante_gssapi.sh
#
# Debian's dante-server / dante-client are configured --without-gssapi, so
# the tests cannot use them as GSS-API peers.  This script rebuilds the same
# source package with Debian's configure flags minus --without-gssapi and
# installs it under $DANTE_GSSAPI_PREFIX (default /opt/txsocksgss-dante-gssapi):
#
#   $PREFIX/sbin/sockd         the server (`sockd -vv` lists "gssapi" under build:)
#   $PREFIX/lib/libdsocks.so   the client library, used with LD_PRELOAD
#
# Idempotent: when the prefix already holds a working GSS-API build made by
# this recipe (stamp file $PREFIX/.txsocksgss-build), it exits 0 at once, so
# CI can cache the prefix between runs (key the cache on this file's hash).
# Otherwise it needs root (apt-get) and the network to Debian's archive:
# it adds a deb-src entry for bookworm main in a file of its own
# (/etc/apt/sources.list.d/txsocksgss-deb-src.sources), runs apt-get update,
# installs the build dependencies, and builds in a fresh build directory
# ($DANTE_GSSAPI_BUILD_DIR, default /var/tmp/txsocksgss-dante-build), which
# is wiped first, so a re-run after a failed build starts clean.  The result
# is installed into a staging directory and moved into place only when it
# works, so a failed run never leaves a half-installed prefix behind.
#
# Environment:
#   DANTE_GSSAPI_PREFIX     install prefix (default /opt/txsocksgss-dante-gssapi)
#   DANTE_GSSAPI_BUILD_DIR  scratch build directory (default /var/tmp/txsocksgss-dante-build)
#   DANTE_GSSAPI_KEEP_BUILD set to 1 to keep the build directory afterwards
set -euo pipefail

# Bump when the configure flags or the layout change: a cached prefix built
# by another recipe is then rebuilt.
RECIPE=1

PREFIX=${DANTE_GSSAPI_PREFIX:-/opt/txsocksgss-dante-gssapi}
BUILD_DIR=${DANTE_GSSAPI_BUILD_DIR:-/var/tmp/txsocksgss-dante-build}
STAMP=$PREFIX/.txsocksgss-build
SRC_LIST=/etc/apt/sources.list.d/txsocksgss-deb-src.sources

say() { printf 'build_dante_gssapi: %s\n' "$*"; }
die() {
    printf 'build_dante_gssapi: error: %s\n' "$*" >&2
    exit 1
}

# True when $1 (a prefix) holds a working GSS-API build of this recipe.
is_built() {
    local prefix=$1
    [ -x "$prefix/sbin/sockd" ] && [ -f "$prefix/lib/libdsocks.so" ] || return 1
    [ -f "$prefix/.txsocksgss-build" ] &&
        grep -qxF "recipe=$RECIPE" "$prefix/.txsocksgss-build" || return 1
    # sockd runs (its shared libraries are all there) and was built with GSS-API.
    "$prefix/sbin/sockd" -vv 2>/dev/null | grep -E '^build:' | grep -qw gssapi || return 1
    # The client library links the GSS-API library and resolves all of its libraries.
    local deps
    deps=$(ldd "$prefix/lib/libdsocks.so" 2>/dev/null) || return 1
    grep -q 'libgssapi_krb5' <<<"$deps" || return 1
    ! grep -q 'not found' <<<"$deps"
}

if is_built "$PREFIX"; then
    say "already built: $PREFIX ($("$PREFIX/sbin/sockd" -vv | grep -E '^build:'))"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "needs root to install the build dependencies (run it with sudo)"

# One build at a time on this machine; the second waits, then finds the result.
mkdir -p "$(dirname "$BUILD_DIR")"
exec 9>"$BUILD_DIR.lock"
flock 9
if is_built "$PREFIX"; then
    say "built by a concurrent run: $PREFIX"
    exit 0
fi

start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start))s"; }
trap 'say "failed after $(elapsed); the build directory $BUILD_DIR is wiped by the next run"' ERR

apt() { DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 "$@"; }

# 1. deb-src for bookworm main, from the same mirror as the binary packages.
if [ ! -e "$SRC_LIST" ]; then
    uri=http://deb.debian.org/debian
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        # The first URIs line naming the main archive (not -security).
        found=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' \
            /etc/apt/sources.list.d/debian.sources)
        [ -n "$found" ] && uri=$found
    fi
    say "adding $SRC_LIST (deb-src $uri bookworm main)"
    cat >"$SRC_LIST" <<EOF
# Added by txsocksgss tests/interop/build_dante_gssapi.sh: source packages
# for rebuilding dante with GSS-API.
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

# 2. Build dependencies: Debian's own, plus MIT Kerberos headers and
#    krb5-config, which Debian's build never needed (it has no GSS-API).
say "apt-get update ($(elapsed))"
apt update >/dev/null
say "installing build dependencies ($(elapsed))"
apt build-dep -y dante >/dev/null
apt install -y --no-install-recommends dpkg-dev libkrb5-dev >/dev/null

# 3. Source, in a fresh build directory.
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
cd "$BUILD_DIR"
say "apt-get source dante ($(elapsed))"
# The _apt sandbox user cannot write here; download as root (apt warns otherwise).
apt -o APT::Sandbox::User=root source dante >source.log 2>&1 || {
    cat source.log >&2
    die "apt-get source dante failed"
}
src=$(find . -mindepth 1 -maxdepth 1 -type d -name 'dante-*' | head -n 1)
[ -n "$src" ] || die "apt-get source did not unpack a dante-* directory"
cd "$src"
version=$(dpkg-parsechangelog -S Version)
say "building dante $version with GSS-API into $PREFIX"

# Debian's patches touch configure.ac, preload.m4 and the Makefile.am files;
# Debian's build runs dh_autoreconf, which fails outside it.  Keep the
# shipped autotools output instead, newer than its inputs.
touch aclocal.m4
touch configure
find . -name Makefile.in -exec touch {} +
touch include/autoconf.h.in

# 4. Configure with debian/rules' flags (override_dh_auto_configure), minus
#    --without-gssapi, with our own prefix and file locations; Debian's
#    hardening build flags (DEB_BUILD_MAINT_OPTIONS=hardening=+all) too.
eval "$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --export=sh)"
configure_flags=(
    --prefix="$PREFIX"
    --with-socks-conf="$PREFIX/etc/socks.conf"
    --with-sockd-conf="$PREFIX/etc/sockd.conf"
    --with-pidfile="$PREFIX/run/sockd.pid"
    --with-gssapi
    --disable-dependency-tracking
)
say "configure ${configure_flags[*]} ($(elapsed))"
./configure "${configure_flags[@]}" >configure.log 2>&1 || {
    tail -n 40 configure.log >&2
    die "configure failed (log: $PWD/configure.log)"
}
grep -E '^#define HAVE_GSSAPI 1' include/autoconf.h >/dev/null ||
    die "configure did not enable GSS-API (log: $PWD/configure.log)"
# As debian/rules does after configure.
cp lib/config_parse.c lib/config_scan.c dlib/
cp lib/config_parse.c lib/config_scan.c sockd/

# 5. Build, install into a staging directory, check, move into place.
say "make -j2 ($(elapsed))"
make -j2 >make.log 2>&1 || {
    tail -n 40 make.log >&2
    die "make failed (log: $PWD/make.log)"
}
stage=$BUILD_DIR/stage
make install DESTDIR="$stage" >install.log 2>&1 || {
    tail -n 40 install.log >&2
    die "make install failed (log: $PWD/install.log)"
}
cat >"$stage$PREFIX/.txsocksgss-build" <<EOF
recipe=$RECIPE
source=dante $version
configure=${configure_flags[*]}
EOF
# sockd links only system libraries, so the staged copy runs as it is.
"$stage$PREFIX/sbin/sockd" -vv | grep -E '^build:' | grep -qw gssapi ||
    die "the built sockd does not list gssapi among its build features"

mkdir -p "$(dirname "$PREFIX")"
rm -rf "$PREFIX.old"
[ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
mv "$stage$PREFIX" "$PREFIX"
rm -rf "$PREFIX.old"
is_built "$PREFIX" || die "the installed build in $PREFIX fails its checks"

cd /
[ "${DANTE_GSSAPI_KEEP_BUILD:-0}" = 1 ] || rm -rf "$BUILD_DIR"
trap - ERR
say "done in $(elapsed): $PREFIX/sbin/sockd, $PREFIX/lib/libdsocks.so"
say "$("$PREFIX/sbin/sockd" -vv | grep -E '^build:')"
