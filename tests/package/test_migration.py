"""The switch from PagerDuty's old agent, on a clean Debian 12 and a clean Debian 13 booted with systemd.

The old packages (stand-ins with the old footprint: tests/package/oldagent.py) are installed and used first: the
old pd-send queues events while the old agent cannot deliver, one event sits in err/. Then apt installs
pdagent-sd over them, as an admin would: the old packages go (Conflicts/Replaces), the queued events are imported
by the postinst and delivered, and monitoring configured with the old paths keeps working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from debbuild import BuiltDeb, timed
from debcontainer import DebianContainer, wait_until
from oldagent import build_old_packages

from legacyagent import OLD_COMMANDS, OLD_INTEGRATIONS_BIN, event_text
from standin import StandIn

pytestmark = pytest.mark.package

KEY = "0ld4gent5erv1cekey0123456789abcd"  # 32 letters and digits, like an old service key
OUTQUEUE = "/var/lib/pdagent/outqueue"
DROP_IN = "/etc/systemd/system/pdagent.service.d/50-package-test.conf"
INSTALL_OUTPUT: Dict[str, str] = {}  # apt's output of installing pdagent-sd, per release


@pytest.fixture(scope="module")
def switched(rootfs: Path, release: str, built_deb: BuiltDeb, events_api: StandIn,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianContainer]:
    """A container that ran the old agent, then got pdagent-sd installed with apt; the apt output is kept."""
    old = build_old_packages(tmp_path_factory.mktemp("old-agent"))
    with timed(f"{release}: boot, install the old agent, queue events in it"):
        box = DebianContainer.boot(rootfs, release)
    try:
        for name, deb in old.items():
            box.put(deb, f"/root/{name}.deb")
        box.run("dpkg", "-i", "/root/pdagent.deb", "/root/pdagent-integrations.deb")
        # A monitoring user queues with the old pd-send while the old agent cannot deliver.
        for args in (("-t", "trigger", "-i", "db01/disk", "-d", "Disk full on db01"),
                     ("-t", "acknowledge", "-i", "db01/disk")):
            box.run("runuser", "-u", "nobody", "--", "pd-send", "-k", KEY, *args)
        failed = f"{OUTQUEUE}/err/1400000000000000_{KEY}.txt"
        box.write(failed, event_text("trigger", KEY, "10442", "zabbix problem", queued_by="pd-zabbix"))
        box.run("chown", "pdagent:pdagent", failed)
        box.write(DROP_IN, f"[Service]\nEnvironment=PDAGENT_EVENTS_URL={events_api.url}\n"
                           "Environment=PDAGENT_BACKOFF_MAX_SEC=2\n")
        box.run("systemctl", "daemon-reload")
        deb = box.put(built_deb.path, "/root/" + built_deb.path.name)
        with timed(f"{release}: apt-get install pdagent-sd over the old agent"):
            box.apt("update")
            INSTALL_OUTPUT[release] = box.apt("install", deb).stdout
        print(INSTALL_OUTPUT[release])
        yield box
    finally:
        box.destroy()


def received(api: StandIn) -> List[dict]:
    return api.bodies(KEY)


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


def test_postinst_imports_the_queued_events_and_says_so(switched: DebianContainer, release: str,
                                                       events_api: StandIn) -> None:
    out = INSTALL_OUTPUT[release]
    assert "importing the events the old PagerDuty agent left in /var/lib/pdagent/outqueue" in out
    assert "imported: 3 (2 pending from pdq/, 1 failed from err/)" in out
    assert KEY not in out  # masked
    wait_until(lambda: len(received(events_api)) >= 2, 30, "the old agent's two pending events")
    bodies = received(events_api)
    assert [(b["event_type"], b["incident_key"]) for b in bodies[:2]] == [("trigger", "db01/disk"),
                                                                         ("acknowledge", "db01/disk")]
    assert bodies[0]["description"] == "Disk full on db01" and bodies[0]["agent"]["queued_by"] == "pd-send"
    totals = wait_until(lambda: (lambda t: t if t["pending"] == 0 else None)(
        json.loads(switched.run("pd-queue", "status", "--json").stdout)["totals"]), 30, "an empty queue")
    assert totals["failed"] == 1 and totals["delivered"] >= 2
    # the old files stay where they were, and a second import queues nothing again
    assert len(switched.run("ls", f"{OUTQUEUE}/pdq").stdout.split()) == 2
    again = switched.run("pd-queue", "import-legacy").stdout
    assert "imported: 0 " in again and "already imported before: 3" in again


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
    body = received(events_api)[-1]
    assert body["dedup_key"] == "event_source=service;host_name=db01;service_desc=disk"
    zabbix = switched.run("runuser", "-u", "nobody", "--", f"{OLD_INTEGRATIONS_BIN}/pd-zabbix", KEY, "PROBLEM",
                          "id:10443\nhostname:db01\nname:disk\nstatus:PROBLEM")
    assert zabbix.returncode == 0, zabbix.stderr
    wait_until(lambda: any(b.get("dedup_key") == "10443-db01" for b in received(events_api)), 30, "pd-zabbix")


def test_the_state_directory_is_the_services_alone(switched: DebianContainer) -> None:
    owner = switched.run("stat", "-c", "%U %a", "/var/lib/pdagent", "/var/lib/pdagent/queue.db").stdout.split("\n")
    assert owner[0].split()[0] == "pdagent" and owner[1] == "pdagent 600", owner
    journal = switched.run("journalctl", "-u", "pdagent.service", "-p", "warning", "--no-pager", "-q",
                           check=False).stdout
    assert "outqueue" not in journal, journal  # the daemon never trips over the old files
