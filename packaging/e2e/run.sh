#!/usr/bin/env bash
# `make deb-test`: end-to-end test of the Debian package in a booted systemd.
#
#   1. installs the host tools it needs (apt-get, once);
#   2. builds the package twice: as released, and rebuilt with a higher
#      version (+e2e1) for the upgrade;
#   3. debootstraps a bookworm root once and caches it in $E2E_ROOT_CACHE
#      (outside the repository; rebuilt when the package list below changes);
#   4. boots it with systemd-nspawn (private network, volatile overlay, so the
#      cached root stays pristine) and runs inside.sh as a oneshot unit that
#      powers the container off when done;
#   5. prints the per-phase results and timings; exit status 0 only if no
#      phase failed (a phase whose precondition is absent is SKIPPED, with the reason).
#
# Must run as root on a Debian 12 host.  Environment:
#   E2E_ROOT_CACHE  cached bookworm root (default /var/cache/rproxyd-e2e/bookworm-root)
#   E2E_RELOADS     reloads under load (default 10)
#   E2E_TIMEOUT     seconds before the container is killed (default 900)
#   E2E_SKIP_BUILD  1: reuse the .debs already in build/deb
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cache=${E2E_ROOT_CACHE:-/var/cache/rproxyd-e2e/bookworm-root}
work=$top/build/e2e
include=systemd,systemd-sysv,dbus,python3,curl,adduser,logrotate,procps,man-db
suffix=+e2e1
declare -a timings=()

say() { printf 'deb-test: %s\n' "$*"; }
timed() {   # label command...: run it and remember how long it took
    local label=$1; shift
    local start=$SECONDS
    "$@"
    timings+=("$(printf '%-22s %4d s' "$label" $((SECONDS - start)))")
}

[[ $(id -u) == 0 ]] || { say "must run as root (debootstrap, systemd-nspawn)"; exit 1; }

need_packages() {
    local want=(debootstrap systemd-container debhelper devscripts lintian dpkg-dev python3-pip python3-dev gcc libssl-dev libnghttp2-dev)
    local missing=() pkg
    for pkg in "${want[@]}"; do
        dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

build_debs() {
    if [[ ${E2E_SKIP_BUILD:-0} != 1 ]]; then
        timed "build (lintian)" "$top/packaging/build-deb.sh"
        timed "build +e2e1" env DEB_VERSION_SUFFIX=$suffix DEB_LINTIAN=0 "$top/packaging/build-deb.sh"
    fi
}

ensure_root() {
    local stamp=$cache/.rproxyd-e2e
    if [[ -f $stamp && $(cat "$stamp") == "$include" ]]; then
        say "cached bookworm root: $cache"
        return
    fi
    say "debootstrap bookworm into $cache (once; ~1 min, ~300 MB)"
    rm -rf "$cache.tmp"
    mkdir -p "$(dirname "$cache")"
    debootstrap --variant=minbase --include="$include" bookworm "$cache.tmp" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log"; exit 1; }
    echo "$include" >"$cache.tmp/.rproxyd-e2e"
    rm -rf "$cache"
    mv "$cache.tmp" "$cache"
}

boot_and_test() {
    local arch version old new
    arch=$(dpkg --print-architecture)
    version=$(dpkg-parsechangelog -l "$top/packaging/debian/changelog" -S Version)
    old=rproxyd_${version}_${arch}.deb
    new=rproxyd_${version}${suffix}_${arch}.deb
    rm -rf "$work/in" "$work/out"
    mkdir -p "$work/in" "$work/out"
    cp "$top/build/deb/$old" "$top/build/deb/$new" "$work/in/"
    cp "$top/packaging/e2e/inside.sh" "$top/packaging/e2e/load.py" "$top/packaging/e2e/e2e.service" "$work/in/"
    printf 'OLD_DEB=%s\nNEW_DEB=%s\nNEW_VERSION=%s\nRELOADS=%s\n' \
        "$old" "$new" "$version$suffix" "${E2E_RELOADS:-10}" >"$work/in/env"
    say "booting $cache (log: $work/console.log)"
    timeout --kill-after=10 "${E2E_TIMEOUT:-900}" systemd-nspawn -q -D "$cache" -b \
        --register=no --keep-unit --private-network --volatile=overlay --console=read-only \
        --bind-ro="$work/in:/in" --bind-ro="$work/in/e2e.service:/etc/systemd/system/e2e.service" \
        --bind="$work/out:/out" \
        systemd.wants=e2e.service systemd.show_status=false \
        2>&1 | tee "$work/console.log" | grep --line-buffered -a -o 'e2e: .*' || true
}

mkdir -p "$work"
started=$SECONDS
timed "host tools" need_packages
build_debs
timed "bookworm root" ensure_root
timed "container (all phases)" boot_and_test

say "results (phase, status, seconds, detail):"
if [[ -f $work/out/results ]]; then
    grep -v '^DONE$' "$work/out/results" | sed 's/^/  /'
fi
say "timings:"
printf '  %s\n' "${timings[@]}"
say "total $((SECONDS - started)) s"
if ! grep -qx DONE "$work/out/results" 2>/dev/null; then
    say "FAILED: the test did not finish (see $work/console.log)"
    exit 1
fi
if grep -q ' FAIL ' "$work/out/results"; then
    say "FAILED"
    exit 1
fi
say "passed ($(grep -c ' SKIPPED ' "$work/out/results") phases skipped)"
