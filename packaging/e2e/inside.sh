#!/bin/bash
# The end-to-end test proper, run by e2e.service inside a booted bookworm
# container (run.sh starts it).  Every phase is timed and recorded in
# /out/results as "phase STATUS seconds detail"; STATUS is PASS, FAIL or
# SKIPPED (a phase whose precondition is absent, with the reason).
set -uo pipefail

# shellcheck source=/dev/null
. /in/env                       # OLD_DEB, NEW_DEB, NEW_VERSION, RELOADS
RESULTS=/out/results
: >"$RESULTS"
export DEBIAN_FRONTEND=noninteractive
UNIT=rproxyd.service
ORIGIN_PORT=9001
EXPECT="Hello from the rproxyd demo origin"
ABORT=""

say() { printf 'e2e: %s\n' "$*"; }
fail() { say "FAIL: $*"; note "FAIL: $*"; exit 1; }
check() { local what=$1; shift; "$@" || fail "$what"; }
mainpid() { systemctl show -p MainPID --value "$UNIT"; }

# Runs phase function $2 in a subshell with errexit; it exits 0 (PASS),
# 77 (SKIPPED, reason on fd 3's file) or anything else (FAIL).  A failed
# phase marked "critical" skips the rest.
phase() {
    local name=$1 fn=$2 critical=${3:-}
    local start end status detail
    if [[ -n $ABORT ]]; then
        printf '%s SKIPPED 0 not run: %s failed\n' "$name" "$ABORT" >>"$RESULTS"
        return
    fi
    say "----- $name"
    : >/tmp/detail
    start=$(date +%s.%N)
    (set -eE; trap 'note "unchecked failure at line $LINENO: $BASH_COMMAND"' ERR; "$fn")
    status=$?
    end=$(date +%s.%N)
    detail=$(tr '\n' ' ' </tmp/detail)
    case $status in
        0) status=PASS ;;
        77) status=SKIPPED ;;
        *) status=FAIL; [[ -n $critical ]] && ABORT=$name; diagnose ;;
    esac
    printf '%s %s %.1f %s\n' "$name" "$status" "$(python3 -c "print($end - $start)")" "$detail" >>"$RESULTS"
    say "$name: $status ${detail}"
}
diagnose() {
    say "diagnostics:"
    {
        systemctl status --no-pager -l "$UNIT"
        journalctl -u "$UNIT" --no-pager -n 60 -o short-monotonic
        tail -n 40 /var/log/rproxy/rproxyd.log
        cat /run/rproxyd/status.json
        ss -ltnp 2>/dev/null || true
    } 2>&1 | sed 's/^/e2e:   /'
}
note() { printf '%s\n' "$*" >>/tmp/detail; }
skip() { note "$*"; exit 77; }

wait_for() {    # seconds command...: retry until it succeeds
    local limit=$1; shift
    local until=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < until)) || return 1
        sleep 0.1
    done
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
is_code() { local want=$1; shift; [[ $(http_code "$@") == "$want" ]]; }

no_old_code() {     # no rproxy process maps files the upgrade replaced
    local p stale=()
    while read -r p; do
        grep -q '/usr/lib/rproxyd/.*(deleted)' "/proc/$p/maps" 2>/dev/null && stale+=("$p")
    done < <(pgrep -u rproxy)
    [[ ${1:-} == -v ]] && echo "${stale[*]}"
    ((${#stale[@]} == 0))
}

snapshot() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
        -o -path /var/tmp -o -path /var/log/journal -o -path /var/cache -o -path /var/lib/apt \
        -o -path /var/lib/dpkg -o -path /var/lib/systemd/catalog -o -path /var/lib/systemd/random-seed \
        -o -path /var/lib/logrotate/status \
        -o -path /var/log/apt -o -path /var/log/dpkg.log -o -path /var/log/alternatives.log \
        -o -path /in -o -path /out -o -path /root \) -prune -o -print | sort
}

load_start() {      # name: bounded load in the background until load_stop
    rm -f "/tmp/$1.stop"
    python3 /in/load.py --url http://127.0.0.1/ --expect "$EXPECT" --concurrency 8 \
        --interval 0.01 --duration 600 --stop-file "/tmp/$1.stop" >"/tmp/$1.json" 2>&1 &
    echo $! >"/tmp/$1.pid"
    sleep 1
}
load_stop() {       # name: stop it, record its summary, fail on any failed request
    touch "/tmp/$1.stop"
    wait "$(cat "/tmp/$1.pid")"
    local rc=$?
    note "load: $(cat "/tmp/$1.json")"
    say "load: $(cat "/tmp/$1.json")"
    return $rc
}

# ------------------------------------------------------------------ phases
p_probe() {
    local probe=/tmp/probe
    snapshot >/tmp/before       # for purge's "nothing left" check
    rm -rf "$probe"
    dpkg-deb -x "/in/$OLD_DEB" "$probe"
    python3 -I -c "import sys; sys.path.insert(0, '$probe/usr/lib/rproxyd'); \
from appliance.cli import main; sys.exit(main())" --help >/tmp/help
    # The shipped unit's ExecReload is `rproxyd --reload`: the package must have it.
    grep -q -- '--reload' /tmp/help || fail "rproxyd --help lacks --reload (the unit's ExecReload)"
    note "supervisor present (rproxyd --reload): Type=notify unit used as shipped"
}

p_install() {
    check "apt install" apt-get install -y --no-install-recommends "/in/$OLD_DEB"
    check "service active" wait_for 30 systemctl is-active --quiet "$UNIT"
    wait_for 15 is_code 502 http://127.0.0.1/ \
        || fail "port 80 answers $(http_code http://127.0.0.1/), not 502 (no origin yet)"
    local pid user
    pid=$(mainpid)
    user=$(ps -o user= -p "$pid" | tr -d ' ')
    [[ $user == rproxy ]] || fail "main process runs as '$user', not rproxy"
    ps -o pid=,user=,args= --ppid "$pid" | sed 's/^/e2e:   child /' || true
    check "user rproxy" getent passwd rproxy >/dev/null
    [[ $(stat -c %U /var/log/rproxy) == rproxy ]] || fail "/var/log/rproxy not owned by rproxy"
    dpkg-query -W -f '${Conffiles}\n' rproxyd | grep -q ' /etc/rproxy/rproxy.toml ' \
        || fail "/etc/rproxy/rproxy.toml is not a conffile"
    check "man page" test -f /usr/share/man/man8/rproxyd.8.gz
    check "logrotate config parses" logrotate -d /etc/logrotate.d/rproxyd 2>/dev/null
    # The package ships the compiled request path (no compiler here): the build that runs, and
    # a worker that has its extension modules loaded.
    local build worker
    build=$(rproxyd --version)
    [[ $build == *", compiled with Cython "* ]] || fail "rproxyd --version: '$build', not the compiled build"
    [[ $build == *"HTTP/2: libnghttp2 "* ]] || fail "rproxyd --version: '$build', no HTTP/2 binding"
    worker=$(pgrep -P "$pid" | head -1)
    grep -q '/usr/lib/rproxyd/appliance/.*\.cpython-.*\.so' "/proc/$worker/maps" \
        || fail "worker $worker has no compiled appliance module loaded"
    # The pure-Python build runs here too (no Cython installed: the package's cython.py).
    RPROXYD_PURE=1 python3 -I -c 'import sys; sys.path.insert(0, "/usr/lib/rproxyd")
import appliance.worker, appliance.http.downstream as d; assert d.__file__.endswith(".py"), d.__file__' \
        || fail "the pure-Python build does not import"
    note "running as rproxy on :80 (CapAmb $(awk '/CapAmb/{print $2}' /proc/"$pid"/status)), 502 without origin;" \
        "$build"
}

p_verify() {
    local rc=0
    systemd-analyze verify /lib/systemd/system/rproxyd.service >/tmp/verify.out 2>&1 || rc=$?
    cat /tmp/verify.out
    [[ $rc == 0 && ! -s /tmp/verify.out ]] || fail "systemd-analyze verify: rc=$rc, output above"
    local score
    score=$(systemd-analyze security "$UNIT" --no-pager 2>/dev/null | tail -1)
    note "systemd-analyze verify clean; security: ${score#→ }"
}

p_configure() {
    systemd-run --quiet --unit=e2e-origin -p User=nobody -E PYTHONPATH=/usr/lib/rproxyd \
        /usr/bin/python3 -m appliance.demo_origin --port "$ORIGIN_PORT"
    cat >/etc/rproxy/conf.d/50-e2e.toml <<CONF
# e2e: the demo origin as the app backend
[backend.app]
servers = ["127.0.0.1:$ORIGIN_PORT"]
CONF
    touch /tmp/configured
    check "rproxyd -t" rproxyd -t
    check "systemctl reload" systemctl reload "$UNIT"
    check "200 through the proxy" wait_for 15 is_code 200 http://127.0.0.1/
    curl -sS --max-time 5 http://127.0.0.1/ | grep -q "$EXPECT" || fail "unexpected body"
    curl -sS --max-time 5 -D - -o /dev/null http://127.0.0.1/ | tr -d '\r' | sed 's/^/e2e:   /'
    # HTTP/2 by prior knowledge through the installed package: its libnghttp2 binding at work.
    [[ $(curl -sS --http2-prior-knowledge --max-time 5 -o /dev/null -w '%{http_version}' http://127.0.0.1/) == 2 ]] \
        || fail "no HTTP/2 (h2c) answer through the proxy"
    load_start smoke
    sleep 2
    load_stop smoke || fail "requests failed under steady load"
    note "reloaded onto backend 127.0.0.1:$ORIGIN_PORT; curl 200, also over h2c"
}

p_reload() {
    local pid before after i t0
    pid=$(mainpid)
    before=$(python3 -c 'import json; print(json.load(open("/run/rproxyd/status.json"))["generation"])')
    load_start reload
    for ((i = 1; i <= RELOADS; i++)); do
        t0=$(date +%s.%N)
        systemctl reload "$UNIT" || { load_stop reload; fail "systemctl reload #$i failed"; }
        say "reload #$i took $(python3 -c "print(round($(date +%s.%N) - $t0, 2))") s"
        sleep 0.3
    done
    load_stop reload || fail "requests failed during $RELOADS reloads"
    [[ $(mainpid) == "$pid" ]] || fail "MainPID changed across reloads"
    after=$(python3 -c 'import json; print(json.load(open("/run/rproxyd/status.json"))["generation"])')
    ((after - before == RELOADS)) || fail "generation went $before -> $after, expected +$RELOADS"
    note "$RELOADS reloads, generation $before -> $after, same MainPID"
}

p_logs() {
    [[ -f /var/log/rproxy/rproxyd.log ]] || skip "no /var/log/rproxy/rproxyd.log (rproxyd logs to the journal)"
    logrotate -f /etc/logrotate.d/rproxyd
    check "rotated" test -f /var/log/rproxy/rproxyd.log.1
    check "reopened after USR1" wait_for 10 grep -q "log files reopened" /var/log/rproxy/rproxyd.log
    note "logrotate -f: rotated, reopened on USR1"
}

p_upgrade() {
    local pid gen_before new_pid deleted
    pid=$(mainpid)
    gen_before=$(python3 -c 'import json; print(json.load(open("/run/rproxyd/status.json"))["generation"])')
    load_start upgrade
    apt-get install -y --no-install-recommends "/in/$NEW_DEB" || { load_stop upgrade; fail "apt install new"; }
    sleep 2
    load_stop upgrade || fail "requests failed during the upgrade"
    [[ $(dpkg-query -W -f '${Version}' rproxyd) == "$NEW_VERSION" ]] || fail "version not $NEW_VERSION"
    new_pid=$(mainpid)
    [[ $new_pid == "$pid" ]] || fail "MainPID $pid -> $new_pid: restarted, not upgraded in place"
    # Old code still mapped (replaced files show as "(deleted)") means no new image.
    deleted=$(grep -c '/usr/lib/rproxyd/.*(deleted)' "/proc/$pid/maps" || true)
    [[ $deleted == 0 ]] || fail "supervisor still maps $deleted replaced files of the old package"
    # Workers too, once the old generation has drained.
    wait_for 30 no_old_code || fail "processes still running the old package: $(no_old_code -v)"
    note "in place: MainPID $pid kept, generation $gen_before ->" \
         "$(python3 -c 'import json; print(json.load(open("/run/rproxyd/status.json"))["generation"])')"
}

p_stop() {
    local t0
    t0=$(date +%s.%N)
    check "systemctl stop" systemctl stop "$UNIT"
    ! systemctl is-active --quiet "$UNIT" || fail "still active"
    ! pgrep -u rproxy >/dev/null || fail "rproxy processes left: $(pgrep -u rproxy -a)"
    note "stopped in $(python3 -c "print(round($(date +%s.%N) - $t0, 2))") s," \
         "result $(systemctl show -p Result --value "$UNIT")"
}

p_remove() {
    check "apt remove" apt-get remove -y rproxyd
    [[ $(dpkg-query -W -f '${db:Status-Abbrev}' rproxyd) == "rc " ]] || fail "not in state rc"
    check "config kept" test -f /etc/rproxy/rproxy.toml
    if [[ -f /tmp/configured ]]; then
        check "site config kept" test -f /etc/rproxy/conf.d/50-e2e.toml
    fi
    check "user kept" getent passwd rproxy >/dev/null
    check "program gone" test ! -e /usr/sbin/rproxyd
    check "unit gone" test ! -e /lib/systemd/system/rproxyd.service
    ! systemctl is-active --quiet "$UNIT" || fail "still active"
    note "config, user and logs kept"
}

p_purge() {
    check "apt purge" apt-get purge -y rproxyd
    systemctl stop e2e-origin.service || true
    systemctl daemon-reload
    local left=()
    local path
    for path in /etc/rproxy /var/log/rproxy /run/rproxyd /usr/lib/rproxyd /usr/sbin/rproxyd \
            /usr/libexec/rproxyd /lib/systemd/system/rproxyd.service /etc/logrotate.d/rproxyd \
            /etc/systemd/system/multi-user.target.wants/rproxyd.service \
            /usr/share/doc/rproxyd /usr/share/man/man8/rproxyd.8.gz; do
        [[ -e $path || -L $path ]] && left+=("$path")
    done
    compgen -G '/var/lib/systemd/deb-systemd-helper-enabled/*rproxyd*' >/dev/null && left+=(deb-systemd-helper state)
    compgen -G '/var/lib/dpkg/info/rproxyd.*' >/dev/null && left+=(/var/lib/dpkg/info/rproxyd.*)
    getent passwd rproxy >/dev/null && left+=("user rproxy")
    getent group rproxy >/dev/null && left+=("group rproxy")
    dpkg-query -W rproxyd >/dev/null 2>&1 && left+=("dpkg still knows rproxyd")
    systemctl list-unit-files rproxyd.service --no-legend | grep -q . && left+=("unit file listed")
    snapshot >/tmp/after
    if ! diff -u /tmp/before /tmp/after >/tmp/fsdiff; then
        left+=("filesystem differs from before install: $(grep -c '^[-+]/' /tmp/fsdiff) paths")
        sed 's/^/e2e:   /' /tmp/fsdiff
    fi
    ((${#left[@]} == 0)) || fail "left behind: ${left[*]}"
    note "nothing left: files, user, group, unit state, dpkg database"
}

say "container up; systemd $(systemctl --version | head -1 | cut -d' ' -f2); old=$OLD_DEB new=$NEW_DEB"
phase probe p_probe critical
phase install p_install critical
phase verify p_verify
phase configure p_configure critical
phase reload-x"$RELOADS"-under-load p_reload
phase logrotate p_logs
phase upgrade p_upgrade critical
ABORT=""   # always try to stop and clean up
phase stop p_stop
phase remove p_remove
phase purge p_purge
echo DONE >>"$RESULTS"
say "----- results"
cat "$RESULTS"
! grep -q ' FAIL ' "$RESULTS"
