"""pdagentd under a real booted systemd: socket activation, STATUS=, journald fields and catalog, idle exit,
timer retries, stop and kill -9, a full disk at start, the watchdog, a proxy (tinyproxy) with TLS, and who
is admin.

Each test gets a fresh container with the agent installed from this tree (``agent_machine``) and pointed at
``events_api``, a stand-in of the Events API on the host's 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from bootedsystemd import SOCKET_PATH, STATE_DIR, BootedSystemd, wait_until
from standin import StandIn
from tiers import CI

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
KEY = "e93facc04764012d7bfb002500d5d1a6"  # 32 characters, like an integration key
MARKER = f"{STATE_DIR}/pending"
ACCEPTED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c501"
DELIVERED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c502"
STOPPED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c509"
HAS_PD_QUEUE = (REPO / "pdagent_sd" / "cli" / "queue.py").exists()
needs_pd_queue = pytest.mark.skipif(not HAS_PD_QUEUE, reason="pdagent_sd/cli/queue.py (pd-queue) not written yet")


def delivered_summaries(api: StandIn) -> List[str]:
    return [body["payload"]["summary"] for body in api.bodies(KEY)]


def free_port() -> int:
    """A loopback port free right now (the container shares the host's network namespace)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def entries_by_message_id(machine: BootedSystemd, *matches: str) -> Dict[str, List[Dict[str, object]]]:
    found: Dict[str, List[Dict[str, object]]] = {}
    for entry in machine.journal_json("-u", "pdagent.service", *matches):
        found.setdefault(str(entry.get("MESSAGE_ID", "")), []).append(entry)
    return found


def test_socket_activation_delivers(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    assert machine.show("pdagent.service", "ActiveState") == "inactive"
    assert machine.show("pdagent.socket", "SubState") == "listening"
    started = time.monotonic()
    result = machine.pd_send(KEY, "disk full on db1", dedup_key="activation-1")
    assert events_api.wait_for(1, timeout=10)
    print(f"cold start, pd-send with pdagent.service inactive -> event at the stand-in: "
          f"{time.monotonic() - started:.2f}s (includes nsenter)")
    assert "activation-1" in result.stdout
    assert delivered_summaries(events_api) == ["disk full on db1"]
    assert machine.show("pdagent.service", "ActiveState") == "active"
    assert machine.show("pdagent.service", "TriggeredBy") == "pdagent.socket"
    main_pid = machine.show("pdagent.service", "MainPID")
    assert machine.run(["stat", "-c", "%U", f"/proc/{main_pid}"]).stdout.strip() == "pdagent"
    assert machine.run(["stat", "-c", "%a %U %G", STATE_DIR]).stdout.split() == ["700", "pdagent", "pdagent"]
    assert machine.exists(f"{STATE_DIR}/queue.db")


def test_status_text_carries_queue_counts(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    events_api.refuse_connections()
    machine.pd_send(KEY, "first", dedup_key="status-1")
    machine.pd_send(KEY, "second", dedup_key="status-2")
    text = wait_until(lambda: "Pending: 2," in machine.show("pdagent.service", "StatusText") and
                      machine.show("pdagent.service", "StatusText"), 10, "StatusText with 2 pending")
    print(f"StatusText while the Events API is down: {text!r}")
    assert "last delivery: never" in text
    assert "Status: \"Pending: 2," in machine.systemctl("status", "pdagent.service", check=False).stdout
    events_api.accept_connections()
    assert events_api.wait_for(2, timeout=30)
    text = wait_until(lambda: "Pending: 0," in machine.show("pdagent.service", "StatusText") and
                      machine.show("pdagent.service", "StatusText"), 10, "StatusText with 0 pending")
    print(f"StatusText after delivery: {text!r}")
    assert "failed: 0" in text and "last delivery: never" not in text


def test_journal_fields_and_catalog(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    machine.pd_send(KEY, "journal check", dedup_key="journal-1")
    assert events_api.wait_for(1, timeout=10)
    found = wait_until(lambda: (lambda f: DELIVERED in f and f)(
        entries_by_message_id(machine, "PDAGENT_DEDUP_KEY=journal-1")), 10, "the delivered journal entry")
    accepted, delivered = found[ACCEPTED][0], found[DELIVERED][0]
    for entry in (accepted, delivered):
        assert entry["PDAGENT_DEDUP_KEY"] == "journal-1"
        assert entry["PDAGENT_ACTION"] == "trigger"
        assert entry["PDAGENT_API"] == "v2"
        assert entry["_SYSTEMD_UNIT"] == "pdagent.service"
        masked = str(entry["PDAGENT_ROUTING_KEY"])
        assert KEY not in masked and masked.startswith(KEY[:4]) and masked.endswith(KEY[-4:]), masked
    assert accepted["PDAGENT_EVENT_ID"] == delivered["PDAGENT_EVENT_ID"]
    assert delivered["PDAGENT_HTTP_STATUS"] == "202"
    assert delivered["PDAGENT_ATTEMPT"] == "1"
    whole_journal = machine.run(["journalctl", "--no-pager", "-o", "json"]).stdout
    assert KEY not in whole_journal, "no journal entry may hold a whole routing key"
    explained = machine.run(["journalctl", "--no-pager", "-x", "-u", "pdagent.service",
                             "PDAGENT_DEDUP_KEY=journal-1"]).stdout
    event_id = delivered["PDAGENT_EVENT_ID"]
    assert f"Subject: PagerDuty event {event_id} delivered" in explained, explained
    assert f"Subject: PagerDuty event {event_id} accepted into the queue" in explained


def test_idle_exit_keeps_the_socket(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    machine.set_environment({"PDAGENT_IDLE_EXIT_SEC": "2"}, name="60-idle")
    machine.pd_send(KEY, "before idle", dedup_key="idle-1")
    assert events_api.wait_for(1, timeout=10)
    started = time.monotonic()
    machine.wait_for_state("pdagent.service", "inactive", timeout=20)
    print(f"idle exit {time.monotonic() - started:.1f}s after delivery (idle_exit_sec=2)")
    assert machine.show("pdagent.service", "Result") == "success"
    assert machine.show("pdagent.service", "NRestarts") == "0", machine.unit_log("pdagent.service")
    assert machine.show("pdagent.socket", "SubState") == "listening"
    assert machine.exists(SOCKET_PATH)
    assert machine.agent_pids() == [], "no pdagent process left when idle"
    assert STOPPED in entries_by_message_id(machine)
    machine.pd_send(KEY, "after idle", dedup_key="idle-2")
    assert events_api.wait_for(2, timeout=10)
    assert delivered_summaries(events_api) == ["before idle", "after idle"]


@needs_pd_queue
def test_timer_delivers_after_the_daemon_stopped(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    machine.set_environment({"PDAGENT_IDLE_EXIT_SEC": "2"}, name="60-idle")
    events_api.refuse_connections()
    machine.pd_send(KEY, "while the API is down", dedup_key="timer-1")
    wait_until(lambda: machine.exists(MARKER), 10, "the pending marker")
    machine.systemctl("stop", "pdagent.service")
    assert machine.exists(MARKER), "still pending after the daemon stopped"
    events_api.accept_connections()
    # The shipped schedule (30 s) shortened: an empty assignment resets the timer list.
    machine.drop_in("pdagent-retry.timer", "fast", "[Timer]\nOnBootSec=\nOnActiveSec=1s\n"
                    "OnUnitInactiveSec=2s\nAccuracySec=100ms\n")
    machine.systemctl("restart", "pdagent-retry.timer")
    assert events_api.wait_for(1, timeout=30), "delivered by the timer, without another pd-send"
    assert delivered_summaries(events_api) == ["while the API is down"]
    assert machine.show("pdagent-retry.service", "ExecMainStartTimestampMonotonic") != "0", "pd-queue flush ran"
    assert machine.show("pdagent-retry.service", "Result") == "success"
    wait_until(lambda: not machine.exists(MARKER), 10, "the pending marker to go")

    # Empty queue: once the daemon has idled out, timer firings start nothing.
    machine.wait_for_state("pdagent.service", "inactive", timeout=20)
    daemon_started = machine.show("pdagent.service", "ExecMainStartTimestampMonotonic")
    retry_started = machine.show("pdagent-retry.service", "ExecMainStartTimestampMonotonic")
    fired = machine.show("pdagent-retry.timer", "LastTriggerUSecMonotonic")
    wait_until(lambda: machine.show("pdagent-retry.timer", "LastTriggerUSecMonotonic") != fired, 15,
               "the timer to fire again")
    wait_until(lambda: machine.show("pdagent-retry.service", "ActiveState") == "inactive", 5, "retry to end")
    assert machine.show("pdagent-retry.service", "ConditionResult") == "no"
    assert machine.show("pdagent-retry.service", "ExecMainStartTimestampMonotonic") == retry_started
    assert machine.show("pdagent.service", "ExecMainStartTimestampMonotonic") == daemon_started
    assert machine.show("pdagent.service", "ActiveState") == "inactive"
    assert machine.agent_pids() == []


def test_stop_keeps_pending_events(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    events_api.refuse_connections()
    machine.pd_send(KEY, "trigger", dedup_key="stop-1")
    machine.pd_send(KEY, "resolve", dedup_key="stop-1", event_type="resolve")
    started = time.monotonic()
    machine.systemctl("stop", "pdagent.service")
    print(f"systemctl stop with 2 pending and the API down: {time.monotonic() - started:.2f}s")
    assert machine.show("pdagent.service", "Result") == "success"
    assert STOPPED in entries_by_message_id(machine)
    # The socket (and its directory) belong to pdagent.socket: a service stop leaves them.
    assert machine.show("pdagent.socket", "SubState") == "listening"
    assert machine.exists(SOCKET_PATH)
    assert machine.exists(MARKER)
    events_api.accept_connections()
    machine.systemctl("start", "pdagent.service")
    assert events_api.wait_for(2, timeout=30)
    assert [body["event_action"] for body in events_api.bodies(KEY)] == ["trigger", "resolve"]


def test_kill_9_is_restarted_and_loses_nothing(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    events_api.refuse_connections()
    machine.pd_send(KEY, "acknowledged before the kill", dedup_key="kill-1")
    first_pid = machine.show("pdagent.service", "MainPID")
    machine.run(["kill", "-9", first_pid])
    wait_until(lambda: machine.show("pdagent.service", "NRestarts") == "1" and
               machine.is_active("pdagent.service"), 20, "systemd to restart pdagentd")
    assert machine.show("pdagent.service", "MainPID") != first_pid
    events_api.accept_connections()
    assert events_api.wait_for(1, timeout=30)
    assert delivered_summaries(events_api) == ["acknowledged before the kill"]


def test_a_full_disk_at_start_keeps_the_socket_and_recovers_by_itself(agent_machine: BootedSystemd,
                                                                       events_api: StandIn) -> None:
    """A daemon that cannot open its queue stays up and says why, rather than exiting into a restart loop
    that ends with systemd's start limit failing pdagent.socket too."""
    machine = agent_machine
    events_api.refuse_connections()
    machine.pd_send(KEY, "queued before the disk filled", dedup_key="full-1")
    machine.systemctl("stop", "pdagent.service")  # a clean stop: the WAL and its index are gone
    machine.run(f"cp -a {STATE_DIR} /root/state && mount -t tmpfs -o size=1m,mode=0700 tmpfs {STATE_DIR} && "
                f"cp -a /root/state/. {STATE_DIR}/ && "
                f"(dd if=/dev/zero of={STATE_DIR}/filler bs=4096 2>/dev/null; true)")
    assert machine.run(["df", "--output=avail", STATE_DIR]).stdout.split()[-1] == "0"
    refusals = [machine.pd_send(KEY, f"while full {n}", dedup_key=f"full-{n + 2}", check=False)
                for n in range(8)]
    assert [result.returncode for result in refusals] == [75] * 8, refusals[0].stderr
    assert "cannot open the queue" in refusals[0].stderr
    assert machine.is_active("pdagent.service")
    assert machine.show("pdagent.service", "NRestarts") == "0"
    assert machine.show("pdagent.socket", "ActiveState") == "active"  # SubState running: the service has it
    assert "Waiting for the queue" in machine.show("pdagent.service", "StatusText")
    machine.run(["rm", f"{STATE_DIR}/filler"])
    events_api.accept_connections()
    assert events_api.wait_for(1, timeout=30), machine.unit_log("pdagent.service")
    assert delivered_summaries(events_api) == ["queued before the disk filled"]
    machine.pd_send(KEY, "after the disk had room", dedup_key="full-after")
    assert events_api.wait_for(2, timeout=30)
    assert machine.show("pdagent.service", "NRestarts") == "0"


def test_watchdog_is_fed(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    machine = agent_machine
    assert "WatchdogSec=30s" in machine.systemctl("cat", "pdagent.service").stdout
    machine.drop_in("pdagent.service", "watchdog", "[Service]\nWatchdogSec=2s\n")
    machine.pd_send(KEY, "wake up", dedup_key="watchdog-1")
    assert machine.show("pdagent.service", "WatchdogUSec") == "2s"  # the value in force while it runs
    pid = machine.show("pdagent.service", "MainPID")
    time.sleep(7)  # more than three watchdog periods
    assert machine.show("pdagent.service", "MainPID") == pid
    assert machine.show("pdagent.service", "NRestarts") == "0"
    assert machine.is_active("pdagent.service")


@pytest.mark.skipif(not CI and not Path("/usr/bin/tinyproxy").exists(),
                    reason="tinyproxy not installed (apt-get install tinyproxy)")
def test_proxy_drop_in_with_tinyproxy_and_tls(boot_machine: Callable[..., BootedSystemd], tmp_path: Path) -> None:
    from tlsca import make_test_ca

    ca = make_test_ca(tmp_path)
    proxy_port = free_port()
    with StandIn(certfile=ca.server_cert, keyfile=ca.server_key) as api, boot_machine() as machine:
        machine.write_file("/etc/pdagent/test-ca.pem", Path(ca.ca_cert).read_text())
        machine.install_agent(events_url=api.url, environment={"REQUESTS_CA_BUNDLE": "/etc/pdagent/test-ca.pem"})
        machine.write_file("/etc/tinyproxy-test.conf", f"Port {proxy_port}\nListen 127.0.0.1\nTimeout 30\n"
                           "LogLevel Connect\nMaxClients 10\nAllow 127.0.0.1\n")
        machine.run(["systemd-run", "--unit=test-tinyproxy", "-p", "DynamicUser=yes", "--",
                     "/usr/bin/tinyproxy", "-d", "-c", "/etc/tinyproxy-test.conf"])
        try:
            wait_until(lambda: listening(proxy_port), 10, "tinyproxy")
            connect_line = f"CONNECT 127.0.0.1:{api.port}"

            def proxied() -> int:
                log = machine.run(["journalctl", "--no-pager", "-u", "test-tinyproxy", "-o", "cat"]).stdout
                return log.count(connect_line)

            machine.drop_in("pdagent.service", "proxy", f"[Service]\nEnvironment=HTTPS_PROXY=http://127.0.0.1:{proxy_port}\n")
            machine.pd_send(KEY, "through the proxy", dedup_key="proxy-1")
            assert api.wait_for(1, timeout=15)
            assert proxied() == 1, "the request went through tinyproxy"

            machine.remove_drop_in("pdagent.service", "proxy")
            machine.systemctl("stop", "pdagent.service")  # the next pd-send starts it without the proxy
            machine.pd_send(KEY, "direct", dedup_key="proxy-2")
            assert api.wait_for(2, timeout=15)
            assert proxied() == 1, "without the drop-in it goes direct"
            assert [body["payload"]["summary"] for body in api.bodies(KEY)] == ["through the proxy", "direct"]
        finally:
            machine.systemctl("stop", "test-tinyproxy.service", check=False)


ADMIN_PROBE = """
from pdagent_sd.errors import PdagentError
from pdagent_sd.protocol import request
try:
    request({"op": "show", "id": 1})
    print("allowed")
except PdagentError as error:
    print(error.code)
"""


def test_group_pdagent_is_admin_under_the_hardened_unit(agent_machine: BootedSystemd, events_api: StandIn) -> None:
    """SO_PEERCRED-based admin checks still work with the unit's sandbox (ProtectProc=invisible, no PrivateUsers)."""
    machine = agent_machine
    machine.run(["systemd-sysusers", "-"], input='u alice - "member of pdagent"\nu bob - "not a member"\n'
                                                 "m alice pdagent\n")
    machine.pd_send(KEY, "something to show", dedup_key="admin-1")
    assert events_api.wait_for(1, timeout=10)
    probe = ["/usr/bin/python3", "-c", ADMIN_PROBE]
    assert machine.run(probe).stdout.strip() == "allowed"  # root
    assert machine.run(machine.as_user("pdagent", probe)).stdout.strip() == "allowed"
    assert machine.run(machine.as_user("bob", probe)).stdout.strip() == "forbidden"
    assert machine.run(machine.as_user("alice", probe)).stdout.strip() == "allowed", (
        "a member of group pdagent (supplementary group) must be admin")
