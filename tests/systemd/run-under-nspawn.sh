#!/bin/sh
# The shipped units under a real systemd: a Debian bookworm tree (debootstrap, cached) booted
# with systemd-nspawn, sidkeyd installed in it from wheels built here (pyproject.toml, README.md
# and src/, as the Dockerfile copies them), the sysusers/tmpfiles files applied, then: socket
# activation, READY/STATUS, the watchdog setting, a client in sidkeyd-clients and one outside,
# reload (applied, and refused for an invalid file), the watchdog (pings, and a frozen daemon
# restarted), stop (the socket stays), activation again, and the daemon binding the socket itself
# with socket_group; checked with systemctl, journalctl and real clients.
#
#   sudo PYTHON=.venv/bin/python tests/systemd/run-under-nspawn.sh     # from anywhere
#
# Needs root, debootstrap, systemd-nspawn (Debian: systemd-container), and the network for
# debootstrap (once: the tree is cached in $SIDKEYD_NSPAWN_CACHE, default
# /var/cache/sidkeyd-test/nspawn-rootfs) and for pip's wheels. Each run boots an ephemeral copy
# of the tree (--ephemeral): the cache is not changed by a run. Exit 0 when every check passed,
# 1 on a failed check (with the container's journal), 2 when something needed is missing.
# About 30 s with the tree cached (1 min more to make it); run by CI as `make systemd-test`,
# not part of `make test`.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${SIDKEYD_NSPAWN_CACHE:-/var/cache/sidkeyd-test/nspawn-rootfs}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MACHINE=sidkeyd-nspawn-$$
SOCKET=/run/sidkeyd/sidkeyd.sock

LEADER=
fail() {
    echo "FAIL: $*" >&2
    if [ -n "$LEADER" ]; then
        echo "--- the container's journal, last lines:" >&2
        inside journalctl --no-pager -n 40 >&2 || true
    fi
    exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || { echo "missing: $1 ($2)" >&2; exit 2; }; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
need debootstrap "apt-get install debootstrap"
need systemd-nspawn "apt-get install systemd-container"
[ -x "$PYTHON" ] || { echo "no $PYTHON: make install, or PYTHON=..." >&2; exit 2; }

if [ ! -x "$CACHE/lib/systemd/systemd" ]; then
    echo "debootstrap into $CACHE (once)"
    rm -rf "$CACHE.partial"
    mkdir -p "$(dirname "$CACHE")"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,python3-pip \
        bookworm "$CACHE.partial" http://deb.debian.org/debian >"$CACHE.log" 2>&1 \
        || fail "debootstrap (see $CACHE.log)"
    mv "$CACHE.partial" "$CACHE"
fi

WORK=$(mktemp -d /tmp/sidkeyd-nspawn-XXXXXX)
BOOT_PID=
booted() {  # nspawn is running (not gone, not a zombie)
    [ -n "$BOOT_PID" ] && [ -e "/proc/$BOOT_PID" ] && ! grep -q ') Z ' "/proc/$BOOT_PID/stat"
}
cleanup() {
    # nspawn powers the container off on SIGTERM, but ignores one sent while it boots: repeat,
    # then kill it.
    for _ in $(seq 15); do
        booted || break
        kill -TERM "$BOOT_PID" 2>/dev/null || true
        sleep 1
    done
    if booted; then kill -KILL "$BOOT_PID" 2>/dev/null || true; fi
    if [ -n "$BOOT_PID" ]; then wait "$BOOT_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The package and its dependencies as wheels (the tree's python3 is 3.11, as this one).
mkdir "$WORK/project" "$WORK/wheels"
cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/src" "$WORK/project/"
"$PYTHON" -m pip wheel --quiet --wheel-dir "$WORK/wheels" "$WORK/project" 2>"$WORK/pip.log" \
    || fail "pip wheel: $(tail -n 20 "$WORK/pip.log")"
cp "$ROOT/systemd/sidkeyd.service" "$ROOT/systemd/sidkeyd.socket" \
    "$ROOT/systemd/sidkeyd.sysusers.conf" "$ROOT/systemd/sidkeyd.tmpfiles.conf" "$WORK/"
cat >"$WORK/sidkeyd.toml" <<'EOF'
[server]
socket = "/run/sidkeyd/sidkeyd.sock"
socket_mode = "0660"                # both used when the daemon binds the socket itself
socket_group = "sidkeyd-clients"

[log]
format = "json"

[audit]
path = "/var/log/sidkeyd/audit.jsonl"   # LogsDirectory= makes the folder writable

[sources.local]
type = "file"
path = "/etc/sidkeyd/keys.toml"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"
EOF
cat >"$WORK/keys.toml" <<'EOF'
# FAKE KEY for the nspawn test: signs nothing real.
["smileid/sandbox"]
api_key = "FAKE-nspawn-key-not-real-00000000000"
partner_id = "085"
EOF

echo "booting $MACHINE"
systemd-nspawn --quiet --directory="$CACHE" --ephemeral --boot --register=no --keep-unit \
    --machine="$MACHINE" --bind-ro="$WORK:/sidkeyd-test" --console=pipe \
    >"$WORK/boot.log" 2>&1 </dev/null &
BOOT_PID=$!

# The container's PID 1 is nspawn's child; every command below runs in its namespaces.
for _ in $(seq 600); do  # up to 60 s: --ephemeral copies the tree first
    LEADER=$(ps -o pid= --ppid "$BOOT_PID" | tr -d ' ' | head -n1)
    [ -n "$LEADER" ] && break
    kill -0 "$BOOT_PID" 2>/dev/null || fail "nspawn exited: $(cat "$WORK/boot.log")"
    sleep 0.1
done
[ -n "$LEADER" ] || fail "no container init under nspawn $BOOT_PID"
inside() {  # a clean environment: none of this host's PIP_*, PYTHON*, SIDKEYD_* variables
    nsenter --target "$LEADER" --all -- env -i PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin \
        sh -c 'cd / && exec "$@"' sh "$@"
}
state=
for _ in $(seq 600); do  # up to 60 s; systemctl answers once the manager's socket is up
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case $state in running | degraded) break ;; esac
    sleep 0.1
done
echo "container: $state"
case $state in running | degraded) ;; *) fail "the container did not boot: $state" ;; esac

inside sh -eu -c '
    pip install --quiet --root-user-action=ignore --break-system-packages --no-index --find-links /sidkeyd-test/wheels sidkeyd
    install -m 0644 /sidkeyd-test/sidkeyd.sysusers.conf /usr/lib/sysusers.d/sidkeyd.conf
    install -m 0644 /sidkeyd-test/sidkeyd.tmpfiles.conf /usr/lib/tmpfiles.d/sidkeyd.conf
    systemd-sysusers && systemd-tmpfiles --create
    useradd --no-create-home --groups sidkeyd-clients client  # may use the socket
    useradd --no-create-home stranger                          # may not
    install -m 0640 -g sidkeyd /sidkeyd-test/sidkeyd.toml /sidkeyd-test/keys.toml /etc/sidkeyd/
    install -m 0644 /sidkeyd-test/sidkeyd.service /sidkeyd-test/sidkeyd.socket /etc/systemd/system/
    systemctl daemon-reload
' || fail "installing sidkeyd in the container"

show() { inside systemctl show "$1" --property="$2" --value; }
sign() {  # the key version of a signature (as $AS, default root); a prompt "503 starting"
    # is answered, then retried
    inside runuser -u "${AS:-root}" -- python3 -c 'import sys, time
from sidkeyd.client import Client
from sidkeyd.errors import RequestFailedError
client, deadline = Client(sys.argv[1]), time.monotonic() + 30
while True:
    try:
        print(client.sign("sandbox")["key_version"])
        break
    except RequestFailedError as error:
        if error.code != "starting" or time.monotonic() > deadline:
            raise
        print("answered:", error.status, error.code, file=sys.stderr)
        time.sleep(0.1)' "$SOCKET"
}
check() {  # check WHAT EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then echo "ok: $1 ($3)"; else fail "$1: expected '$2', got '$3'"; fi
}

check "Documentation= exists" yes "$(inside sh -c \
    'test -f "${1#file://}" && echo yes || echo no' sh "$(show sidkeyd.service Documentation)")"
check "unit file is the shipped one" notify "$(show sidkeyd.service Type)"

inside systemctl start sidkeyd.socket || fail "systemctl start sidkeyd.socket"
check "socket unit listening" active "$(show sidkeyd.socket ActiveState)"
check "service not started before a client" inactive "$(show sidkeyd.service ActiveState)"

# Socket activation: the first client's connection starts the service, and it is answered.
version=$(sign) || fail "the first client was not answered: $(inside journalctl -u sidkeyd -n 30 --no-pager)"
check "service started by the first client" active "$(show sidkeyd.service ActiveState)"
check "service running (READY=1 received)" running "$(show sidkeyd.service SubState)"
status_text=$(show sidkeyd.service StatusText)
case $status_text in *sandbox*) echo "ok: STATUS= ($status_text)" ;; *) fail "StatusText: '$status_text'" ;; esac
inside systemctl status sidkeyd.service --no-pager --lines=0 | sed 's/^/    /'
check "watchdog armed" 30s "$(show sidkeyd.service WatchdogUSec)"
pid=$(show sidkeyd.service MainPID)
check "a member of sidkeyd-clients signs" "$version" "$(AS=client sign)"
AS=stranger sign 2>/dev/null && fail "a user outside sidkeyd-clients could sign"
echo "ok: a user outside sidkeyd-clients cannot connect"

# Reload (ExecReload: sidkeyd reload, synchronous): same process, the config re-read and
# every environment checked again (trigger reload).
inside systemctl reload sidkeyd.service || fail "systemctl reload"
check "reload keeps the process" "$pid" "$(show sidkeyd.service MainPID)"
check "running after the reload (READY=1 again)" running "$(show sidkeyd.service SubState)"
inside journalctl -u sidkeyd -o cat --no-pager | grep -q '"event": "config.reloaded"' \
    || fail "no config.reloaded in the journal"
echo "ok: the reload applied the config (config.reloaded)"
check "signs after the reload" "$version" "$(sign)"

# The audit trail, under ProtectSystem=strict: written (LogsDirectory=), private, and its chain
# verifies.
check "audit file private to the daemon" "-rw------- sidkeyd" \
    "$(inside stat -c '%A %U' /var/log/sidkeyd/audit.jsonl)"
inside sidkeyd audit verify /var/log/sidkeyd/audit.jsonl >/dev/null || fail "sidkeyd audit verify"
check "signatures in the audit trail" yes "$(inside sh -c \
    'grep -q "\"signature.issued\"" /var/log/sidkeyd/audit.jsonl && echo yes || echo no')"

# journald: each line's priority comes from its <N> prefix, and the prefix is not in the text.
check "daemon.started at priority info (6)" 6 "$(inside journalctl -u sidkeyd -o json --no-pager \
    | python3 -c 'import json,sys
for line in sys.stdin:
    e=json.loads(line)
    if "daemon.started" in str(e.get("MESSAGE","")): print(e["PRIORITY"]); break')"

inside systemctl stop sidkeyd.service || fail "systemctl stop"
check "stopped" inactive "$(show sidkeyd.service ActiveState)"
check "stopped cleanly" success "$(show sidkeyd.service Result)"
check "inherited socket left in place" yes "$(inside sh -c "test -S $SOCKET && echo yes || echo no")"

# Activation again: the socket unit still listens, the next client starts the service again.
check "signs after a stop, by activation" "$version" "$(sign)"
check "service started again" active "$(show sidkeyd.service ActiveState)"
check "no restart by systemd" 0 "$(show sidkeyd.service NRestarts)"

# Without the socket unit: the daemon binds the socket itself, with socket_mode and socket_group.
inside systemctl stop sidkeyd.socket sidkeyd.service || fail "systemctl stop (both)"
inside systemctl start sidkeyd.service || fail "systemctl start sidkeyd.service (no socket unit)"
check "started without the socket unit" running "$(show sidkeyd.service SubState)"
check "socket group, bound by the daemon" "srw-rw---- sidkeyd sidkeyd-clients" \
    "$(inside stat -c '%A %U %G' "$SOCKET")"
check "a member of sidkeyd-clients signs (no socket unit)" "$version" "$(AS=client sign)"
inside systemctl stop sidkeyd.service || fail "systemctl stop"
check "the daemon removed its own socket" no "$(inside sh -c "test -e $SOCKET && echo yes || echo no")"

inside journalctl -u sidkeyd -p err --no-pager -q | grep . && fail "errors in the journal" || true

# A refused reload (the last step: it logs an error on purpose): ExecReload fails, so
# `systemctl reload` does; nothing changes and the daemon keeps serving.
inside systemctl start sidkeyd.service || fail "systemctl start sidkeyd.service (refused reload)"
pid=$(show sidkeyd.service MainPID)
inside sh -c 'cp /etc/sidkeyd/sidkeyd.toml /root/good.toml
    printf "\n[refresh]\nintervall = \"5s\"\n" >> /etc/sidkeyd/sidkeyd.toml'
inside systemctl reload sidkeyd.service 2>/dev/null && fail "systemctl reload took an invalid config"
echo "ok: systemctl reload fails on an invalid config"
check "a refused reload keeps the process" "$pid" "$(show sidkeyd.service MainPID)"
check "running after a refused reload" running "$(show sidkeyd.service SubState)"
inside journalctl -u sidkeyd -o cat --no-pager | grep -q '"event": "config.reload_failed"' \
    || fail "no config.reload_failed in the journal"
check "signs after a refused reload" "$version" "$(sign)"
inside cp /root/good.toml /etc/sidkeyd/sidkeyd.toml
inside systemctl reload sidkeyd.service || fail "systemctl reload after the file was fixed"

# The watchdog, with a drop-in of 2 s: the loop's pings keep a running daemon alive over
# several periods; a frozen one (SIGSTOP) is killed and restarted by systemd.
inside sh -c 'mkdir -p /etc/systemd/system/sidkeyd.service.d
    printf "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n" \
        >/etc/systemd/system/sidkeyd.service.d/watchdog.conf
    systemctl daemon-reload && systemctl restart sidkeyd.service' || fail "the watchdog drop-in"
check "watchdog at 2 s" 2s "$(show sidkeyd.service WatchdogUSec)"
pid=$(show sidkeyd.service MainPID)
restarts=$(show sidkeyd.service NRestarts)
sleep 5  # 2.5 watchdog periods: an absence of restarts cannot be awaited as an event
check "pings keep it alive (same process)" "$pid" "$(show sidkeyd.service MainPID)"
inside sh -c 'kill -STOP "$1"' sh "$pid"  # the shell's kill: minbase has no procps
for _ in $(seq 300); do  # up to 30 s: 2 s to the timeout, 2 s to abort, RestartSec 2 s
    now=$(show sidkeyd.service MainPID)
    [ "$now" != "$pid" ] && [ "$now" != 0 ] && [ "$(show sidkeyd.service SubState)" = running ] \
        && break
    sleep 0.1
done
check "a frozen daemon restarted by the watchdog" $((restarts + 1)) "$(show sidkeyd.service NRestarts)"
inside journalctl -u sidkeyd --no-pager -q | grep -q "Watchdog timeout" \
    || fail "no watchdog timeout in the journal"
check "signs after the watchdog restart" "$version" "$(sign)"
inside rm /etc/systemd/system/sidkeyd.service.d/watchdog.conf
inside systemctl daemon-reload
inside systemctl stop sidkeyd.service || fail "systemctl stop"
echo "PASS: the units under systemd $(inside systemctl --version | head -n1 | cut -d' ' -f2)"
