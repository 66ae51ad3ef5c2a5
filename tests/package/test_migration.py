"""The switch from PagerDuty's old agent, and back, on a clean Debian 12 and a clean Debian 13 booted with systemd.

The old packages are stand-ins with the old footprint and the old agent's recorded behaviour
(tests/package/oldagent.py): its unit leaves the daemon running after `systemctl stop` (KillMode=process and a
shell wrapper), and that daemon POSTs every file of outqueue/pdq/ every send_interval_secs. They are installed
and running; the old pd-send queues events while the Events API stand-in refuses connections; one event sits in
err/. Then apt installs pdagent-sd over them, as an admin would, and the stand-in comes back: every old event
must be delivered exactly once (the old daemon must be gone and the imported files out of its reach), in
per-key order, with the file's bytes. Then the rollback: `apt remove pdagent-sd` says what it keeps, the old
packages install again from state "rc", non-root senders queue with the old pd-send, and purging pdagent-sd
says what it deletes and leaves the reinstalled old agent's queue alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from debbuild import BuiltDeb, timed
from debcontainer import DebianContainer, wait_until
from oldagent import OLD_DAEMON_PATH, STANDIN_URL_FILE, build_old_packages

from legacyagent import OLD_COMMANDS, OLD_INTEGRATIONS_BIN, event_text
from standin import EventRecord, StandIn

pytestmark = pytest.mark.package

KEY = "0ld4gent5erv1cekey0123456789abcd"  # 32 letters and digits, like an old service key
OUTQUEUE = "/var/lib/pdagent/outqueue"
DROP_IN = "/etc/systemd/system/pdagent.service.d/50-package-test.conf"
POLL_SEC = 3  # the old daemon's send_interval_secs here (10 by default): the window below is 3 polls
INSTALL_OUTPUT: Dict[str, str] = {}  # apt's output of installing pdagent-sd, per release
OLD_FILES: Dict[str, Dict[str, str]] = {}  # per release: the old pdq/ files' names and content before the switch
OLD_DEBS: Dict[str, Dict[str, str]] = {}  # per release: where the old .debs are inside the container
SEEN_BEFORE: Dict[str, int] = {}  # per release: events on KEY the (session's) stand-in had before this release


def queued_files(box: DebianContainer, subdir: str) -> Dict[str, str]:
    names = box.run("ls", f"{OUTQUEUE}/{subdir}").stdout.split()
    return {name: box.run("cat", f"{OUTQUEUE}/{subdir}/{name}").stdout for name in names}


@pytest.fixture(scope="module")
def switched(rootfs: Path, release: str, built_deb: BuiltDeb, events_api: StandIn,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianContainer]:
    """A container that ran the old agent, then got pdagent-sd installed with apt; the apt output is kept."""
    old = build_old_packages(tmp_path_factory.mktemp("old-agent"))
    with timed(f"{release}: boot, install the old agent, queue events in it"):
        box = DebianContainer.boot(rootfs, release)
    try:
        OLD_DEBS[release] = {name: box.put(deb, f"/root/{name}.deb") for name, deb in old.items()}
        SEEN_BEFORE[release] = len(received(events_api))
        box.write(STANDIN_URL_FILE, events_api.url + "\n")
        events_api.refuse_connections()  # PagerDuty unreachable: the old agent queues
        box.run("dpkg", "-i", *OLD_DEBS[release].values())
        box.run("sed", "-i", f"s/^send_interval_secs = .*/send_interval_secs = {POLL_SEC}/", "/etc/pdagent.conf")
        # Monitoring users queue with the old pd-send while the old agent cannot deliver.
        for args in (("-t", "trigger", "-i", "db01/disk", "-d", "Disk full on db01"),
                     ("-t", "trigger", "-d", "caf\u00e9 \u2603 down, no incident key"),
                     ("-t", "acknowledge", "-i", "db01/disk")):
            box.run("runuser", "-u", "nobody", "--", "pd-send", "-k", KEY, *args)
            time.sleep(0.01)  # distinct microsecond names, in this order
        failed = f"{OUTQUEUE}/err/1400000000000000_{KEY}.txt"
        box.write(failed, event_text("trigger", KEY, "10442", "zabbix problem", queued_by="pd-zabbix"))
        box.run("chown", "pdagent:pdagent", failed)
        OLD_FILES[release] = queued_files(box, "pdq")
        assert len(OLD_FILES[release]) == 3
        # the old daemon is alive and trying (its journal says the stand-in refused it)
        wait_until(lambda: "cannot send" in box.run("journalctl", "-u", "pdagent.service", "--no-pager", "-q",
                                                    check=False).stdout, 4 * POLL_SEC, "the old daemon's attempt")
        assert OLD_DAEMON_PATH in old_agent_processes(box)  # what the switch must end
        box.write(DROP_IN, f"[Service]\nEnvironment=PDAGENT_EVENTS_URL={events_api.url}\n"
                           "Environment=PDAGENT_BACKOFF_MAX_SEC=2\n")
        box.run("systemctl", "daemon-reload")
        deb = box.put(built_deb.path, "/root/" + built_deb.path.name)
        with timed(f"{release}: apt-get install pdagent-sd over the old agent"):
            box.apt("update")
            INSTALL_OUTPUT[release] = box.apt("install", deb).stdout
        print(INSTALL_OUTPUT[release])
        events_api.accept_connections()  # PagerDuty is back
        yield box
    finally:
        events_api.accept_connections()
        box.destroy()


def received(api: StandIn) -> List[EventRecord]:
    return api.received(KEY)


def old_records(api: StandIn, release: str) -> Dict[str, List[EventRecord]]:
    """Per old pdq/ file: the requests the stand-in accepted whose body is that file's bytes."""
    return {name: [r for r in received(api) if r.raw == text.encode()] for name, text in OLD_FILES[release].items()}


def test_the_old_packages_are_replaced(switched: DebianContainer) -> None:
    status = switched.run("dpkg-query", "-W", "-f", "${Package} ${Status}\\n", "pdagent", "pdagent-integrations",
                          "pdagent-sd", check=False).stdout
    assert "pdagent-sd install ok installed" in status
    for old in ("pdagent", "pdagent-integrations"):
        assert not any(line.startswith(f"{old} install") for line in status.splitlines()), status
    assert switched.exists("/etc/pdagent.conf")  # the old conffile is the admin's: removal keeps it
    exec_start = switched.unit_property("pdagent.service", "ExecStart")
    assert "/usr/bin/pdagentd" in exec_start and "/usr/share/pdagent/bin" not in exec_start
    assert not switched.exists("/etc/systemd/system/multi-user.target.wants/pdagent.service")
    assert switched.run("systemctl", "is-active", "pdagent.socket").stdout.strip() == "active"


def test_the_old_daemon_is_ended_for_good(switched: DebianContainer, release: str) -> None:
    assert "ended what the old PagerDuty agent's pdagent.service left running" in INSTALL_OUTPUT[release]
    assert old_agent_processes(switched) == ""  # no process of the old agent


def old_agent_processes(box: DebianContainer) -> str:
    """`pgrep -af /usr/share/pdagent/` (minbase has no procps): every process running the old agent's files."""
    return box.sh("p=/usr/share/pdagent; for d in /proc/[0-9]*; do [ ${d#/proc/} != $$ ] || continue; "
                  "c=$(tr '\\0' ' ' <$d/cmdline 2>/dev/null) || continue; "
                  "case $c in *\"$p\"/*) echo \"${d#/proc/} $c\";; esac; done").stdout.strip()


def test_every_old_event_is_delivered_exactly_once_as_the_old_agent_would_have(
        switched: DebianContainer, release: str, events_api: StandIn) -> None:
    wait_until(lambda: all(old_records(events_api, release).values()), 30, "the old agent's three pending events")
    time.sleep(3 * POLL_SEC)  # the window: three polls of the old daemon, had it survived or could it see them
    delivered = old_records(events_api, release)
    assert {name: len(records) for name, records in delivered.items()} == dict.fromkeys(OLD_FILES[release], 1)
    assert len(received(events_api)) - SEEN_BEFORE[release] == 3  # nothing else: no re-encoded or amended copy
    out = INSTALL_OUTPUT[release]
    assert "importing the events the old PagerDuty agent left in /var/lib/pdagent/outqueue" in out
    assert "imported: 4 (3 pending from pdq/, 1 failed from err/)" in out
    assert "by owner (the quota each is charged to): pdagent (uid " in out and "nobody (uid 65534) 3" in out
    assert "Moved from pdq/ to imported/ (out of the old daemon's reach, kept for a rollback): 3" in out
    assert KEY not in out  # masked
    in_order = [records[0] for _name, records in sorted(delivered.items())]
    assert [r.time for r in in_order] == sorted(r.time for r in in_order)  # per-key order: the old queue's
    assert all(r.path == "/generic/2010-04-15/create_event.json" for r in in_order)
    keyless = in_order[1]
    assert "incident_key" not in keyless.body and b"caf\\u00e9 \\u2603" in keyless.raw  # nothing added or re-encoded
    totals = wait_until(lambda: (lambda t: t if t["pending"] == 0 else None)(
        json.loads(switched.run("pd-queue", "status", "--json").stdout)["totals"]), 30, "an empty queue")
    assert totals["failed"] == 1 and totals["delivered"] >= 3
    # the imported files wait in imported/ for a rollback; err/ stays; a second import queues nothing again
    assert queued_files(switched, "imported") == OLD_FILES[release]
    assert switched.run("ls", f"{OUTQUEUE}/pdq").stdout.split() == []
    again = switched.run("pd-queue", "import-legacy").stdout
    assert "imported: 0 " in again and "already imported before: 1" in again


def test_our_service_starts_with_nothing_left_in_its_cgroup(switched: DebianContainer) -> None:
    switched.run("pd-queue", "flush")  # the daemon runs (socket activation)
    journal = switched.run("journalctl", "-u", "pdagent.service", "--no-pager", "-q", check=False).stdout
    assert "left-over process" not in journal, journal
    main = switched.unit_property("pdagent.service", "MainPID")
    cgroup = switched.unit_property("pdagent.service", "ControlGroup")
    procs = switched.run("cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs", check=False).stdout.split()
    assert procs in ([], [main]), (procs, main)


def test_monitoring_configured_with_the_old_paths_keeps_working(switched: DebianContainer,
                                                               events_api: StandIn) -> None:
    for command in OLD_COMMANDS:
        target = switched.run("readlink", "-f", f"{OLD_INTEGRATIONS_BIN}/{command}").stdout.strip()
        assert target == f"/usr/bin/{command}"
    before = len(received(events_api))
    sent = switched.run("runuser", "-u", "nobody", "--", f"{OLD_INTEGRATIONS_BIN}/pd-nagios", "-k", KEY,
                        "-t", "PROBLEM", "-n", "service", "-f", "HOSTNAME=db01", "-f", "SERVICEDESC=disk",
                        "-f", "SERVICESTATE=CRITICAL")
    assert "Event processed" in sent.stdout
    wait_until(lambda: len(received(events_api)) > before, 30, "the pd-nagios event")
    body = received(events_api)[-1].body
    assert body["dedup_key"] == "event_source=service;host_name=db01;service_desc=disk"
    zabbix = switched.run("runuser", "-u", "nobody", "--", f"{OLD_INTEGRATIONS_BIN}/pd-zabbix", KEY, "PROBLEM",
                          "id:10443\nhostname:db01\nname:disk\nstatus:PROBLEM")
    assert zabbix.returncode == 0, zabbix.stderr
    wait_until(lambda: any(r.body.get("dedup_key") == "10443-db01" for r in received(events_api)), 30,
               "pd-zabbix")


def test_the_state_directory_is_the_services_alone(switched: DebianContainer) -> None:
    owner = switched.run("stat", "-c", "%U %a", "/var/lib/pdagent", "/var/lib/pdagent/queue.db").stdout.split("\n")
    assert owner[0].split()[0] == "pdagent" and owner[1] == "pdagent 600", owner
    journal = switched.run("journalctl", "-u", "pdagent.service", "-p", "warning", "--no-pager", "-q",
                           check=False).stdout
    assert "outqueue" not in journal, journal  # the daemon never trips over the old files


def test_rollback_remove_says_what_it_keeps_the_old_agent_comes_back_purge_says_what_it_deletes(
        switched: DebianContainer, release: str, events_api: StandIn) -> None:
    """Last in this module: it takes pdagent-sd away again."""
    events_api.refuse_connections()
    switched.run("pd-send", "-k", KEY, "-t", "trigger", "-i", "rollback/1", "-d", "queued before the rollback")
    wait_until(lambda: json.loads(switched.run("pd-queue", "status", "--json").stdout)["totals"]["pending"] == 1,
               10, "one pending event")
    removed = switched.apt("remove", "pdagent-sd").stdout
    print(removed)
    assert ("its queue is kept: 1 event(s) pending and 1 failed in /var/lib/pdagent/queue.db, listed in "
            "/var/lib/pdagent/pending-at-removal.txt") in removed
    listed = switched.run("cat", "/var/lib/pdagent/pending-at-removal.txt").stdout
    assert "trigger  0ld4...abcd  'rollback/1'" in listed and "'10442'  1400000000000000_" in listed
    assert switched.run("stat", "-c", "%a %U", "/var/lib/pdagent/pending-at-removal.txt").stdout.strip() == "600 root"
    assert f"outqueue is kept in {OUTQUEUE} (pdq/ 0, err/ 1, imported/ 3)" in removed
    events_api.accept_connections()

    # the old packages, left in state "rc" by the switch, install again: their preinst's `systemctl stop pdagent`
    # finds a unit, the old agent runs, and a non-root sender queues with the old pd-send
    reinstall = switched.run("dpkg", "-i", *OLD_DEBS[release].values(), check=False)
    assert reinstall.returncode == 0, reinstall.stdout + reinstall.stderr
    assert switched.run("systemctl", "is-active", "pdagent.service").stdout.strip() == "active"
    assert switched.run("stat", "-c", "%a", "/var/lib/pdagent").stdout.strip() == "755"
    sent = switched.run("runuser", "-u", "nobody", "--", "pd-send", "-k", KEY, "-t", "trigger", "-i", "after/1",
                        "-d", "sent by the old agent after the rollback", check=False)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: any(r.body.get("incident_key") == "after/1" for r in received(events_api)), 4 * POLL_SEC,
               "the old agent's delivery after the rollback")
    time.sleep(POLL_SEC)
    # what pdagent-sd delivered, the old agent does not send again: it never sees imported/
    assert {name: len(records) for name, records in old_records(events_api, release).items()} == \
        dict.fromkeys(OLD_FILES[release], 1)

    purged = switched.run("dpkg", "--purge", "pdagent-sd").stdout
    print(purged)
    assert "purge deletes /var/lib/pdagent/queue.db with 1 event(s) never delivered and 1 failed" in purged
    assert f"the old PagerDuty agent is installed: its {OUTQUEUE} (pdq/ 0, err/ 1, imported/ 3)" in purged
    assert not switched.exists("/var/lib/pdagent/queue.db") and switched.exists(f"{OUTQUEUE}/suc")
    assert "/usr/share/pdagent/bin/pdagentd" in switched.unit_property("pdagent.service", "ExecStart")


def test_switching_again_after_the_rollback_then_purge_says_it_deletes_the_old_queue(
        switched: DebianContainer, built_deb: BuiltDeb) -> None:
    """After the rollback above: the admin switches again (the old daemon must be ended again), then purges."""
    assert OLD_DAEMON_PATH in old_agent_processes(switched)
    again = switched.apt("install", "/root/" + built_deb.path.name).stdout
    print(again)
    assert "ended what the old PagerDuty agent's pdagent.service left running" in again
    assert old_agent_processes(switched) == ""
    assert "imported: 1 (0 pending from pdq/, 1 failed from err/)" in again  # the queue was purged: err/ again
    purged = switched.apt("purge", "pdagent-sd").stdout
    print(purged)
    assert "purge deletes /var/lib/pdagent/queue.db with 0 event(s) never delivered and 1 failed" in purged
    assert f"purge deletes the old PagerDuty agent's {OUTQUEUE} too: pdq/ 0, err/ 1, imported/ 3" in purged
    assert not switched.exists("/var/lib/pdagent")
