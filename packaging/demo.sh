#!/bin/bash
# `make demo`: pdagent-sd from its .deb on a clean Debian 12 booted with systemd, end to end, with a transcript.
#
#   packaging/demo.sh            (as root; about a minute, two or three the first time)
#
# Builds the .deb, boots a fresh Debian 12 container (systemd-nspawn), installs the package with apt, starts a
# stand-in of PagerDuty's Events API on this machine's loopback, sends a trigger, an acknowledge and a resolve
# with pd-send, and shows the queue, the service and the journal. Then it tears everything down: the container
# and the stand-in are stopped by the PIDs this script started, the container's copy of the tree is deleted.
# Nothing reaches PagerDuty: the agent inside talks to the stand-in only.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

KEY=3a7c0e5b9d1f42a68b0c1d2e3f405162   # a made-up 32-character integration (routing) key
DEDUP=demo-disk-full-db1
INSIDE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

bold= plain=
if [ -t 1 ]; then bold=$(tput bold 2>/dev/null || true); plain=$(tput sgr0 2>/dev/null || true); fi
step=0
heading() { step=$((step + 1)); printf '\n%s== %d. %s%s\n' "$bold" "$step" "$1" "$plain"; }
say() { printf '   %s\n' "$*"; }
indent() { sed 's/^/      /'; }

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it boots a container with systemd-nspawn)" >&2; exit 1; }
for tool in systemd-nspawn nsenter debootstrap dpkg-buildpackage; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is missing (see docs/packaging.md)" >&2; exit 1; }
done

work=$(mktemp -d /var/tmp/pdagent-demo.XXXXXX)
nspawn_pid=
standin_pid=
pid1=

teardown() {
    local status=$?
    heading "Tear down"
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        say "powering the container off (SIGTERM to systemd-nspawn, PID $nspawn_pid)"
        kill -TERM "$nspawn_pid"
        for _ in $(seq 120); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            [ -n "$pid1" ] && kill -KILL "$pid1" 2>/dev/null || true
            kill -KILL "$nspawn_pid" 2>/dev/null || true
        fi
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ -n "$standin_pid" ] && kill -0 "$standin_pid" 2>/dev/null; then
        say "stopping the Events API stand-in (PID $standin_pid)"
        kill -TERM "$standin_pid"
        wait "$standin_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    say "removed the container's copy of the tree; the cached clean tree stays for next time"
    [ "$status" = 0 ] && printf '\n%sDemo finished.%s\n' "$bold" "$plain" \
        || printf '\n%sDemo failed (exit %s).%s\n' "$bold" "$status" "$plain"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# Run a command in the container, showing it as typed at the container's root prompt.
inside() {
    printf '   %sroot@pdagent-test:~# %s%s\n' "$bold" "$(typed "$@")" "$plain"
    nsenter -t "$pid1" -a env -i PATH="$INSIDE_PATH" LANG=C.UTF-8 HOME=/root TERM=dumb SYSTEMD_COLORS=0 \
        SYSTEMD_PAGER= DEBIAN_FRONTEND=noninteractive "$@" 2>&1 | indent
    return "${PIPESTATUS[0]}"
}
# The same, without printing the command (for the script's own checks).
quietly() {
    nsenter -t "$pid1" -a env -i PATH="$INSIDE_PATH" LANG=C.UTF-8 HOME=/root SYSTEMD_PAGER= "$@"
}
received() { [ -s "$work/received.jsonl" ] && wc -l <"$work/received.jsonl" || echo 0; }
wait_received() {
    for _ in $(seq 150); do [ "$(received)" -ge "$1" ] && return 0; sleep 0.2; done
    echo "demo: the stand-in did not receive event $1 within 30 s" >&2
    return 1
}
show_last_received() {
    tail -n1 "$work/received.jsonl" | python3 -c '
import json, sys
event = json.load(sys.stdin)
body = event["body"]
summary = body.get("payload", {}).get("summary")
line = "POST %s  event_action=%s  dedup_key=%s" % (event["path"], body["event_action"], body.get("dedup_key"))
print("      the stand-in received: " + line + ("  summary=%r" % summary if summary else ""))'
}
# A command line as a reader would type it: words with spaces in quotes.
typed() {
    local word out=
    for word in "$@"; do
        case $word in *[[:space:]]*) out+="'$word' " ;; *) out+="$word " ;; esac
    done
    printf '%s' "${out% }"
}

printf '%spdagent-sd demo: the Debian package on a clean Debian 12 under systemd%s\n' "$bold" "$plain"
say "Monitoring tools call pd-send; systemd holds the socket and starts the agent (pdagentd) on demand;"
say "the agent queues each event on disk before answering, then delivers it to PagerDuty's Events API."

heading "Build the .deb (dpkg-buildpackage, then lintian)"
"$top/packaging/build-deb.sh" >"$work/build.txt" 2>&1 || { cat "$work/build.txt"; exit 1; }
grep -E '^(built|lintian:|[EW]:)' "$work/build.txt" | indent
deb=$(sed -n 's/^built //p' "$work/build.txt" | tail -n1)

heading "Boot a clean Debian 12 with systemd"
say "a minimal Debian 12 tree made by debootstrap (cached after the first run), copied, booted with systemd-nspawn"
rootfs=$("$top/packaging/debian12-rootfs.sh")
cp -a "$rootfs" "$work/root"
python3 -c 'import uuid; print(uuid.uuid4().hex)' >"$work/root/etc/machine-id"
mkdir -p /var/cache/pdagent-sd-test/apt-archives/bookworm/partial
cp "$deb" "$work/root/root/"
systemd-nspawn --directory="$work/root" --machine="pdagent-demo-$$" --register=no --keep-unit --boot \
    --link-journal=no --resolv-conf=copy-host --bind=/var/cache/pdagent-sd-test/apt-archives/bookworm:/var/cache/apt/archives \
    >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
for _ in $(seq 150); do
    for child in $(cat "/proc/$nspawn_pid/task/$nspawn_pid/children" 2>/dev/null); do
        [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ] && pid1=$child
    done
    [ -n "$pid1" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log"; exit 1; }
    sleep 0.2
done
[ -n "$pid1" ] || { echo "demo: the container did not start" >&2; exit 1; }
for _ in $(seq 300); do
    state=$(quietly systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    sleep 0.2
done
inside systemctl is-system-running || true

heading "Install the package with apt (its dependencies come from Debian)"
inside apt-get update -qq
printf '   %sroot@pdagent-test:~# apt-get install -y ./%s%s\n' "$bold" "${deb##*/}" "$plain"
# The archive cache is shared with the package tests: hold its host lock (tests/package/debcontainer.py) while apt
# works in it.
{ flock 8; quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 "/root/${deb##*/}" \
    >"$work/apt.txt" 2>&1; } 8>/var/cache/pdagent-sd-test/apt-archives/bookworm.lock || { cat "$work/apt.txt"; exit 1; }
grep -E '^(Setting up (pdagent-sd|python3-systemd|python3-sdnotify|python3-requests) |Creating (user|group)|Created symlink)' \
    "$work/apt.txt" | indent
say "The socket and the retry timer are enabled and running; the agent itself starts on the first event:"
inside systemctl is-active pdagent.socket pdagent-retry.timer pdagent.service || true
inside ls -l /run/pdagent/pdagent.sock

heading "Start a stand-in for PagerDuty's Events API on this machine's loopback"
python3 "$top/tests/standin.py" --host 127.0.0.1 --port 0 --record "$work/received.jsonl" >"$work/standin.txt" 2>&1 &
standin_pid=$!
for _ in $(seq 50); do grep -q '^listening on ' "$work/standin.txt" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/standin.txt")
[ -n "$url" ] || { cat "$work/standin.txt"; exit 1; }
say "listening on $url (the container shares this machine's network, so the agent can reach it)"
say "Point the agent at it, as \`systemctl edit pdagent\` would (a drop-in):"
mkdir -p "$work/root/etc/systemd/system/pdagent.service.d"
printf '[Service]\nEnvironment=PDAGENT_EVENTS_URL=%s\n' "$url" >"$work/root/etc/systemd/system/pdagent.service.d/demo.conf"
inside cat /etc/systemd/system/pdagent.service.d/demo.conf
inside systemctl daemon-reload

heading "Trigger an incident with pd-send"
inside pd-send -k "$KEY" -t trigger -d "Disk /var is 97% full on db1" -i "$DEDUP" -f disk=/var -f used=97%
wait_received 1 && show_last_received

heading "Acknowledge it"
inside pd-send -k "$KEY" -t acknowledge -i "$DEDUP" -d "Looking into it"
wait_received 2 && show_last_received

heading "Resolve it"
inside pd-send -k "$KEY" -t resolve -i "$DEDUP" -d "Old logs removed"
wait_received 3 && show_last_received

heading "The queue: pd-queue status"
inside pd-queue status

heading "The service: systemctl status pdagent"
say "STATUS= is the agent's own one-line summary; TriggeredBy shows it was socket-activated"
inside systemctl status --no-pager pdagent || true

heading "The journal: every event's life, with PDAGENT_* fields"
say "journalctl -u pdagent -o json, showing MESSAGE and the PDAGENT_* fields of each entry:"
printf '   %sroot@pdagent-test:~# journalctl -u pdagent -o json | (fields shown below)%s\n' "$bold" "$plain"
quietly journalctl -u pdagent.service -o json --no-pager | python3 -c '
import json, sys, time
for line in sys.stdin:
    entry = json.loads(line)
    fields = ["%s=%s" % (k[8:].lower(), v) for k, v in sorted(entry.items()) if k.startswith("PDAGENT_")]
    if fields:
        when = time.strftime("%H:%M:%S", time.localtime(int(entry["__REALTIME_TIMESTAMP"]) / 1e6))
        print("      %s  %s" % (when, entry["MESSAGE"]))
        print("                " + "  ".join(fields))'
say "Filter on a field, and let the catalog explain an entry (journalctl -x):"
inside journalctl -u pdagent -x --no-pager -n 1 PDAGENT_ACTION=resolve MESSAGE_ID=7f1c2c1e5a0b4d0c9f3e2a61b8d4c502

# teardown runs on exit
