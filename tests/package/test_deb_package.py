"""The .deb, built with dpkg-buildpackage and installed with apt on a clean Debian 12 and a clean Debian 13, each
booted with systemd.

The tests of the container run in file order on one machine (``installed``, module scope), the way an admin's
machine lives: install, use, reboot, upgrade with events pending, remove, purge.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
from debbuild import BuiltDeb, timed
from debcontainer import DebianContainer, wait_until

from standin import StandIn

pytestmark = pytest.mark.package

KEY = "4f1d0c2b9e8a7d6c5b4a39281706f5e4"  # 32 characters, like an integration key
ACCEPTED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c501"
DELIVERED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c502"
DEPENDENCIES = ("python3-systemd", "python3-sdnotify", "python3-requests")
OLD_INTEGRATION_COMMANDS = ("pd-nagios", "pd-zabbix", "pd-sensu")
UNITS = ("pdagent.socket", "pdagent.service", "pdagent-retry.timer", "pdagent-retry.service")
UNIT_ALERT_TEMPLATES = ("pdagent-unit-failed@.service", "pdagent-unit-ok@.service")
# The boot-time oneshots the package enables: a delivery pass, and watching incidents left open before the boot.
BOOT_UNITS = ("pdagent-boot.service", "pdagent-unit-rearm.service")


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], stdout=subprocess.PIPE, text=True,
                          check=True).stdout.strip()


def deb_files(deb: Path) -> List[str]:
    """Every path in the package (a symlink's own path, not its target)."""
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], stdout=subprocess.PIPE, text=True, check=True).stdout
    return [line.split()[5].lstrip(".") for line in listing.splitlines()]


def send(box: DebianContainer, *args: str) -> str:
    return box.run("pd-send", "-k", KEY, *args).stdout


def queue_totals(box: DebianContainer) -> Dict[str, int]:
    answer = json.loads(box.run("pd-queue", "status", "--json").stdout)
    return dict(answer["totals"])


def journal(box: DebianContainer, *matches: str) -> List[Dict[str, Any]]:
    out = box.run("journalctl", "-u", "pdagent.service", "-o", "json", "--no-pager", *matches).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def delivered_keys(api: StandIn) -> List[str]:
    return [str(body.get("dedup_key")) for body in api.bodies(KEY)]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- the package itself ---------------------------------------------------------------------------------------

def test_deb_builds_and_lintian_reports_no_error(built_deb: BuiltDeb) -> None:
    print(built_deb.output)
    errors = [line for line in built_deb.output.splitlines() if re.match(r"^E: ", line)]
    assert not errors, "lintian errors:\n" + "\n".join(errors)
    assert built_deb.returncode == 0, built_deb.output


def test_deb_depends_on_debian_packages_not_pip(built_deb: BuiltDeb) -> None:
    depends = deb_field(built_deb.path, "Depends")
    names = {re.sub(r"[ (:].*", "", name) for name in re.split(r"\s*[,|]\s*", depends)}
    assert set(DEPENDENCIES) <= names, depends
    assert not names & {"requests", "sdnotify", "systemd-python", "systemd_python"}, depends  # PyPI names


def test_deb_ships_units_sysusers_catalog_config_and_man_pages(built_deb: BuiltDeb) -> None:
    files = deb_files(built_deb.path)
    for unit in UNITS:
        assert f"/usr/lib/systemd/system/{unit}" in files  # not /lib: trixie's lintian, purge on trixie
    assert not [f for f in files if f.startswith("/lib/")], files
    for path in ("/usr/lib/sysusers.d/pdagent.conf", "/usr/lib/systemd/catalog/pdagent.catalog",
                 "/etc/pdagent/agent.conf", "/usr/bin/pd-send", "/usr/bin/pd-queue", "/usr/bin/pdagentd",
                 "/usr/share/doc/pdagent-sd/README.md", "/usr/share/doc/pdagent-sd/copyright"):
        assert path in files
    for command in ("pd-send", "pd-queue", "pdagentd"):
        assert f"/usr/share/man/man1/{command}.1.gz" in files
    # Unit alerts (docs/systemd-alerts.md): the templates, the doc their Documentation= names, uncompressed,
    # and the drop-in that keeps the host-wide pdagent-alert.conf off each of the agent's own services.
    for unit in (*UNIT_ALERT_TEMPLATES, *BOOT_UNITS):
        assert f"/usr/lib/systemd/system/{unit}" in files
    for unit in ("pdagent.service", "pdagent-retry.service", *BOOT_UNITS, *UNIT_ALERT_TEMPLATES):
        assert f"/usr/lib/systemd/system/{unit}.d/pdagent-alert.conf" in files, unit
    for path in ("/usr/bin/pd-unit-alert", "/usr/share/man/man1/pd-unit-alert.1.gz",
                 "/usr/share/doc/pdagent-sd/docs/systemd-alerts.md",
                 "/usr/share/doc/pdagent-sd/examples/unit-alert.conf.example",
                 "/usr/share/doc/pdagent-sd/examples/service-alert.conf.example"):
        assert path in files
    # Heartbeats (docs/heartbeats.md): the command, its man page, the units, the doc their Documentation= names.
    for path in ("/usr/bin/pd-heartbeat", "/usr/share/man/man1/pd-heartbeat.1.gz",
                 "/usr/lib/systemd/system/pdagent-heartbeat.service",
                 "/usr/lib/systemd/system/pdagent-heartbeat-arm.service",
                 "/usr/lib/systemd/system/pdagent-heartbeat-arm.path",
                 "/usr/lib/systemd/system/pdagent-heartbeat.service.d/pdagent-alert.conf",
                 "/usr/share/doc/pdagent-sd/docs/heartbeats.md"):
        assert path in files, path
    if (Path(__file__).resolve().parents[2] / "integrations").is_dir():
        assert any(f.startswith("/usr/share/pdagent-sd/") and not f.endswith("/") for f in files)
    conffiles = subprocess.run(["dpkg-deb", "--info", str(built_deb.path), "conffiles"], stdout=subprocess.PIPE,
                               text=True, check=True).stdout.split()
    assert conffiles == ["/etc/pdagent/agent.conf"]


def test_deb_replaces_the_old_agent_packages_and_keeps_their_paths(built_deb: BuiltDeb) -> None:
    for field in ("Conflicts", "Replaces", "Provides"):
        names = {name.strip() for name in deb_field(built_deb.path, field).split(",")}
        assert {"pdagent", "pdagent-integrations"} <= names, field
    listing = subprocess.run(["dpkg-deb", "-c", str(built_deb.path)], stdout=subprocess.PIPE, text=True,
                             check=True).stdout
    for command in OLD_INTEGRATION_COMMANDS:
        line = next(line for line in listing.splitlines()
                    if line.split()[5] == f"./usr/share/pdagent-integrations/bin/{command}")
        assert line.startswith("l") and line.split()[-1] == f"../../../bin/{command}", line


# Paths under /usr or /etc that the README names but the package does not ship, each with the reason.
README_PATHS_NOT_SHIPPED: Dict[str, str] = {}


def readme_paths() -> List[str]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"(?<![\w.~-])(/(?:usr|etc)/[A-Za-z0-9_.@+*/-]*)", text)
    return sorted({path.rstrip(".,") for path in found})


def test_every_usr_and_etc_path_the_readme_names_is_in_the_package(built_deb: BuiltDeb) -> None:
    files = deb_files(built_deb.path)
    paths = readme_paths()
    assert "/usr/share/pdagent-integrations/bin/pd-nagios" in paths and len(paths) >= 5, paths  # the reader works
    missing = []
    for path in paths:
        if path in README_PATHS_NOT_SHIPPED:
            continue
        if "*" in path:  # a glob such as /etc/pdagent/agent.conf.d/*.conf: its directory ships
            path = path[:path.index("*")].rsplit("/", 1)[0] + "/"
        if path not in files and path.rstrip("/") + "/" not in files:
            missing.append(path)
    assert not missing, f"the README names paths the package does not install: {missing}"


def test_man_page_is_the_commands_own_help(built_deb: BuiltDeb, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(built_deb.path), str(tmp_path)], check=True)
    page = subprocess.run(["zcat", str(tmp_path / "usr/share/man/man1/pd-send.1.gz")], stdout=subprocess.PIPE,
                          text=True, check=True).stdout
    assert ".TH PD-SEND" in page and "routing" in page and "Traceback" not in page


# --- installed on a clean Debian 12 / 13 ----------------------------------------------------------------------

def test_apt_installs_the_dependencies_from_debian(installed: DebianContainer) -> None:
    status = installed.run("dpkg-query", "-W", "-f", "${Package} ${Status}\\n", "pdagent-sd", *DEPENDENCIES).stdout
    for package in ("pdagent-sd", *DEPENDENCIES):
        assert f"{package} install ok installed" in status
    assert installed.run("python3", "-m", "pip", "--version", check=False).returncode != 0  # no pip involved


def test_sysusers_created_the_pdagent_user(installed: DebianContainer) -> None:
    entry = installed.run("getent", "passwd", "pdagent").stdout.split(":")
    assert int(entry[2]) < 1000 and entry[6].strip().endswith("nologin")
    assert installed.run("getent", "group", "pdagent").returncode == 0
    # agent.conf may hold routing keys ([Keys]): the daemon's group reads it, other users do not
    modes = installed.run("stat", "-c", "%a %U:%G", "/etc/pdagent/agent.conf", "/etc/pdagent/agent.conf.d").stdout
    assert modes.split("\n")[:2] == ["640 root:pdagent", "750 root:pdagent"], modes


def test_socket_and_timer_enabled_and_started_service_only_socket_activated(installed: DebianContainer) -> None:
    enabled = installed.run("systemctl", "is-enabled", "pdagent.socket", "pdagent-retry.timer", "pdagent.service",
                            check=False).stdout.split()
    assert enabled == ["enabled", "enabled", "static"]
    boot_units = installed.run("systemctl", "is-enabled", *BOOT_UNITS, check=False).stdout.split()
    assert boot_units == ["enabled"] * len(BOOT_UNITS), boot_units
    assert installed.run("systemctl", "is-active", "pdagent.socket", "pdagent-retry.timer").stdout.split() == [
        "active", "active"]
    assert installed.unit_property("pdagent.socket", "Listen") == "/run/pdagent/pdagent.sock (Stream)"
    # Heartbeats (docs/heartbeats.md): the path unit watches for deadlines; the arm service runs at boot.
    heartbeat_units = installed.run("systemctl", "is-enabled", "pdagent-heartbeat-arm.path",
                                    "pdagent-heartbeat-arm.service", check=False).stdout.split()
    assert heartbeat_units == ["enabled", "enabled"], heartbeat_units
    assert installed.run("systemctl", "is-active", "pdagent-heartbeat-arm.path").stdout.strip() == "active"
    mode = installed.run("stat", "-c", "%F %a", "/run/pdagent/pdagent.sock").stdout.strip()
    assert mode == "socket 666"


def test_catalog_is_installed_and_indexed(installed: DebianContainer) -> None:
    catalog = installed.run("journalctl", "--list-catalog").stdout
    assert ACCEPTED in catalog and DELIVERED in catalog


def test_pd_send_is_delivered_through_the_socket_activated_daemon(installed: DebianContainer,
                                                                   events_api: StandIn) -> None:
    dedup = unique("disk-full")
    out = send(installed, "-t", "trigger", "-d", "disk full on db1", "-i", dedup)
    assert dedup in out
    wait_until(lambda: dedup in delivered_keys(events_api), 30, "the stand-in to receive the trigger")
    body = events_api.bodies(KEY)[delivered_keys(events_api).index(dedup)]
    assert body["event_action"] == "trigger" and body["payload"]["summary"] == "disk full on db1"
    assert installed.unit_property("pdagent.service", "ActiveState") == "active"
    assert installed.unit_property("pdagent.service", "User") == "pdagent"


def test_the_installed_pd_send_imports_nothing_it_does_not_need(installed: DebianContainer,
                                                                events_api: StandIn) -> None:
    """/usr/bin/pd-send as dpkg installed it, byte-compiled: neither its console script (the installer's
    template imports re for a Windows suffix) nor pd-send imports anything heavy on the way to a page."""
    def imports(*argv: str) -> Set[str]:
        stderr = installed.run("python3", "-X", "importtime", *argv).stderr
        return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}

    dedup = unique("imports")
    added = imports("/usr/bin/pd-send", "-k", KEY, "-t", "trigger", "-d", "import check", "-i", dedup, "-q") - \
        imports("-c", "pass")
    heavy = {"re", "enum", "argparse", "json", "socket", "typing", "requests", "sqlite3", "systemd", "sdnotify"}
    assert "pdagent_sd.cli.send" in added and not added & heavy, sorted(added)
    wait_until(lambda: dedup in delivered_keys(events_api), 30, "the stand-in to receive the trigger")


def test_systemctl_status_shows_the_queue(installed: DebianContainer, events_api: StandIn) -> None:
    dedup = unique("status")
    send(installed, "-t", "trigger", "-d", "status check", "-i", dedup)
    wait_until(lambda: dedup in delivered_keys(events_api), 30, "delivery")
    status = wait_until(lambda: (lambda out: out if "Pending: 0" in out else "")(
        installed.run("systemctl", "status", "--no-pager", "pdagent", check=False).stdout), 10, "STATUS=")
    print(status)
    assert "Active: active (running)" in status
    assert "TriggeredBy: " in status and "pdagent.socket" in status
    assert re.search(r'Status: "Pending: 0, failed: 0', status), status
    assert "50-package-test.conf" in status  # the test's drop-in is listed


def test_journal_has_pdagent_fields_and_catalog_text(installed: DebianContainer, events_api: StandIn) -> None:
    dedup = unique("journal")
    send(installed, "-t", "trigger", "-d", "journal check", "-i", dedup)
    wait_until(lambda: dedup in delivered_keys(events_api), 30, "delivery")
    entries = wait_until(lambda: (lambda found: found if {e.get("MESSAGE_ID") for e in found} >= {
        ACCEPTED, DELIVERED} else [])(journal(installed, f"PDAGENT_DEDUP_KEY={dedup}")), 10, "journal entries")
    by_id = {e["MESSAGE_ID"]: e for e in entries}
    for entry in by_id.values():
        assert entry["PDAGENT_EVENT_ID"].isdigit()
        assert entry["PDAGENT_API"] == "v2" and entry["PDAGENT_ACTION"] == "trigger"
        assert entry["PDAGENT_ROUTING_KEY"] != KEY and KEY not in json.dumps(entry)  # masked everywhere
    assert by_id[DELIVERED]["PDAGENT_HTTP_STATUS"] == "202" and by_id[DELIVERED]["PDAGENT_ATTEMPT"] == "1"
    explained = installed.run("journalctl", "-u", "pdagent", "-x", "--no-pager", f"PDAGENT_DEDUP_KEY={dedup}").stdout
    assert "accepted into the queue" in explained


def test_pd_queue_status(installed: DebianContainer) -> None:
    out = installed.run("pd-queue", "status").stdout
    print(out)
    assert out.strip()
    totals = queue_totals(installed)
    assert totals["pending"] == 0 and totals["delivered"] >= 3 and totals["failed"] == 0


def test_after_reboot_socket_listens_and_activates_the_daemon(installed: DebianContainer,
                                                               events_api: StandIn) -> None:
    with timed("reboot the container"):
        installed.reboot()
    assert installed.run("systemctl", "is-active", "pdagent.socket", "pdagent-retry.timer").stdout.split() == [
        "active", "active"]
    assert installed.unit_property("pdagent.service", "ActiveState") == "inactive"  # nothing started it yet
    dedup = unique("after-reboot")
    send(installed, "-t", "trigger", "-d", "after reboot", "-i", dedup)
    wait_until(lambda: dedup in delivered_keys(events_api), 30, "delivery after reboot")


def test_upgrade_keeps_pending_events_and_restarts_the_daemon(installed: DebianContainer, events_api: StandIn,
                                                               upgrade_deb: BuiltDeb) -> None:
    dedup = unique("upgrade")
    events_api.refuse_connections()
    try:
        send(installed, "-t", "trigger", "-d", "pending across the upgrade", "-i", dedup)
        send(installed, "-t", "resolve", "-i", dedup)
        assert queue_totals(installed)["pending"] == 2
        old_pid = installed.unit_property("pdagent.service", "MainPID")
        assert old_pid != "0"
        deb = installed.put(upgrade_deb.path, "/root/" + upgrade_deb.path.name)
        with timed("apt-get install the upgrade"):
            installed.apt("install", deb)
        version = installed.run("dpkg-query", "-W", "-f", "${Version}", "pdagent-sd").stdout
        assert version == upgrade_deb.version
        assert installed.unit_property("pdagent.service", "ActiveState") == "active"
        assert installed.unit_property("pdagent.service", "MainPID") not in ("0", old_pid)  # restarted
        assert installed.run("systemctl", "is-active", "pdagent.socket").stdout.strip() == "active"
        assert queue_totals(installed)["pending"] == 2  # kept while the API still refuses
        assert dedup not in delivered_keys(events_api)
    finally:
        events_api.accept_connections()
    installed.run("pd-queue", "flush")
    wait_until(lambda: delivered_keys(events_api).count(dedup) == 2, 60, "both events after the upgrade")
    actions = [b["event_action"] for b in events_api.bodies(KEY) if b.get("dedup_key") == dedup]
    assert actions == ["trigger", "resolve"]  # in order
    wait_until(lambda: queue_totals(installed)["pending"] == 0, 10, "an empty queue")


HOST_WIDE_ALERT = "/etc/systemd/system/service.d/pdagent-alert.conf"


def test_remove_stops_the_units_and_keeps_the_queue(installed: DebianContainer) -> None:
    # The admin's host-wide unit alert drop-in, as docs/systemd-alerts.md gives it: named on remove, gone on purge.
    installed.write(HOST_WIDE_ALERT, (Path(__file__).resolve().parents[2] / "units" / "service-alert.conf.example")
                    .read_text())
    done = installed.apt("remove", "pdagent-sd")
    assert f"{HOST_WIDE_ALERT} still names pdagent-unit-failed@" in done.stdout, done.stdout
    for unit in UNITS:
        assert installed.unit_property(unit, "ActiveState") == "inactive", unit
    assert not installed.exists("/run/pdagent/pdagent.sock")
    assert installed.exists("/var/lib/pdagent/queue.db")
    assert installed.exists("/etc/pdagent/agent.conf")  # a conffile: kept until purge


def test_purge_removes_the_state(installed: DebianContainer) -> None:
    done = installed.apt("purge", "pdagent-sd")
    # trixie's dpkg warned "while removing pdagent-sd, directory '/lib/systemd/system' not empty" while the units
    # were shipped under /lib.
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
    assert not installed.exists("/var/lib/pdagent")
    assert not installed.exists("/etc/pdagent")
    assert not installed.exists(HOST_WIDE_ALERT), "the example's drop-in outlived the units it names"
    assert not installed.exists("/etc/systemd/system/sockets.target.wants/pdagent.socket")
    assert not installed.exists("/etc/systemd/system/timers.target.wants/pdagent-retry.timer")
    assert installed.run("dpkg-query", "-W", "pdagent-sd", check=False).returncode != 0


def test_lintian_of_the_release_reports_no_error(installed: DebianContainer, built_deb: BuiltDeb) -> None:
    """The release's own lintian on the .deb (bookworm's already ran in build-deb.sh, on this Debian 12 host).
    Installed last, after the purge, so that it never shares the machine with the package under test."""
    host = subprocess.run(["sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"], stdout=subprocess.PIPE,
                          text=True).stdout.strip()
    if installed.release == host:
        assert built_deb.returncode == 0 and "lintian: no errors" in built_deb.output, built_deb.output
        return
    with timed(f"{installed.release}: install lintian and run it"):
        installed.apt("install", "--no-install-recommends", "lintian", timeout=900)
        deb = installed.put(built_deb.path, "/root/" + built_deb.path.name)
        done = installed.run("lintian", "--display-info", deb, check=False, timeout=600)
    print(done.stdout + done.stderr)
    assert not [line for line in done.stdout.splitlines() if line.startswith("E: ")], done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
