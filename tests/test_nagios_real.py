"""Integration: Debian's real nagios4 notifying through the shipped pagerduty.cfg, pd-nagios and the real pdagentd.

The test starts its own Nagios on a temporary configuration: a host and a service checked with check_dummy,
whose exit state each check reads from a file the test rewrites, checked every second. Notifications go to the
contact and commands of integrations/nagios/pagerduty.cfg as shipped, with only the path of pd-nagios, its
--socket and the integration key filled in. The events must arrive at the Events API stand-in with the old
agent's dedup keys: trigger, acknowledge (sent through Nagios's external command file) and resolve.

Nagios runs its notification commands as the user `nagios` (it drops root itself), and that user cannot read
the test runner's interpreter or checkout (a pyenv or .venv under /root, a clone in a private directory). So
pd-nagios runs the way the .deb runs it, under Debian's /usr/bin/python3, from a copy of the package source in
a world-readable temporary directory. It needs nothing outside the standard library, so no virtualenv and no
build step (which would need pip, setuptools and wheel offline) are involved.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from agentproc import ROOT, Agent

pytestmark = pytest.mark.integration

NAGIOS = "/usr/sbin/nagios4"
CHECK_DUMMY = "/usr/lib/nagios/plugins/check_dummy"
SYSTEM_PYTHON = "/usr/bin/python3"
SHIPPED_CFG = os.path.join(ROOT, "integrations", "nagios", "pagerduty.cfg")
KEY = "4e4a9c1f0b2d4c6e8a1b3c5d7e9f0a1b"
HOST = "web01"
SERVICE = "Disk Space"
SERVICE_KEY = f"event_source=service;host_name={HOST};service_desc={SERVICE}"
HOST_KEY = f"event_source=host;host_name={HOST}"
WAIT_SEC = 60.0


def _require(path: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is missing: install nagios4 and monitoring-plugins-basic (.ci/install-deps.sh does)")


class Workspace:
    """A temporary directory every user may traverse: Nagios's files, the pd-nagios copy, the agent socket."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pdagent-nagios-")
        os.chmod(self.root, 0o755)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def write(self, name: str, text: str, mode: int = 0o644) -> str:
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, mode)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def install_pd_nagios(ws: Workspace) -> str:
    """A copy of the package the nagios user can read, and a launcher that runs pd-nagios from it."""
    source = ws.path("src")
    shutil.copytree(os.path.join(ROOT, "pdagent_sd"), os.path.join(source, "pdagent_sd"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for directory, _, files in os.walk(source):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    # The console script the package installs calls pdagent_sd.integrations.nagios:main, as -m does here.
    return ws.write("pd-nagios", f"#!/bin/sh\nPYTHONPATH={source} exec {SYSTEM_PYTHON} -m "
                                 f"pdagent_sd.integrations.nagios \"$@\"\n", mode=0o755)


def shipped_config(pd_nagios: str, socket_path: str) -> str:
    text = open(SHIPPED_CFG, encoding="utf-8").read()
    assert text.count("/usr/bin/pd-nagios") == 2 and text.count("YOUR-INTEGRATION-KEY-HERE") == 1
    return (text.replace("/usr/bin/pd-nagios", f"{pd_nagios} --socket {socket_path}")
            .replace("YOUR-INTEGRATION-KEY-HERE", KEY))


def nagios_config(ws: Workspace, pd_nagios: str, socket_path: str) -> str:
    """nagios.cfg and its objects, everything inside the workspace; returns the path of nagios.cfg."""
    ws.write("service.state", "2\n")
    ws.write("host.state", "0\n")
    # check_dummy with the state the test wrote: how the check "fails" and "recovers".
    check = ws.write("check_state", f"#!/bin/sh\nexec {CHECK_DUMMY} \"$(cat \"$1\")\" \"$2\"\n", mode=0o755)
    ws.write("pagerduty.cfg", shipped_config(pd_nagios, socket_path))
    days = "".join(f"  {day} 00:00-24:00\n" for day in
                   ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"))
    ws.write("objects.cfg", f"""\
define timeperiod {{
  timeperiod_name 24x7
  alias always
{days}}}
define command {{
  command_name check-state
  command_line {check} $ARG1$ "$ARG2$"
}}
define host {{
  host_name {HOST}
  address 127.0.0.1
  check_command check-state!{ws.path('host.state')}!host check
  max_check_attempts 1
  check_interval 1
  retry_interval 1
  check_period 24x7
  notification_period 24x7
  notification_interval 0
  contacts pagerduty
}}
define service {{
  host_name {HOST}
  service_description {SERVICE}
  check_command check-state!{ws.path('service.state')}!free space: / 812 MB
  max_check_attempts 1
  check_interval 1
  retry_interval 1
  check_period 24x7
  notification_period 24x7
  notification_interval 0
  contacts pagerduty
}}
""")
    os.makedirs(ws.path("nagios", "checkresults"))
    user, group = nagios_identity()
    settings = {
        "log_file": ws.path("nagios", "nagios.log"),
        "cfg_file": [ws.path("objects.cfg"), ws.path("pagerduty.cfg")],
        "status_file": ws.path("nagios", "status.dat"),
        "lock_file": ws.path("nagios", "nagios.lock"),
        "temp_file": ws.path("nagios", "nagios.tmp"),
        "temp_path": ws.path("nagios"),
        "check_result_path": ws.path("nagios", "checkresults"),
        "object_cache_file": ws.path("nagios", "objects.cache"),
        "precached_object_file": ws.path("nagios", "objects.precache"),
        "state_retention_file": ws.path("nagios", "retention.dat"),
        "query_socket": ws.path("nagios", "nagios.qh"),
        "command_file": ws.path("nagios", "nagios.cmd"),
        "check_external_commands": "1",
        "retain_state_information": "0",
        "use_retained_program_state": "0",
        "nagios_user": user,
        "nagios_group": group,
        "interval_length": "1",  # check intervals in seconds, so the test takes seconds
        "enable_notifications": "1",
        "enable_flap_detection": "0",
        "cached_host_check_horizon": "0",  # else a host state is trusted for 15 s
        "illegal_macro_output_chars": "`~$&|'\"<>",  # Debian's default: output is safe inside quotes
    }
    lines = []
    for name, value in settings.items():
        lines += [f"{name}={item}" for item in (value if isinstance(value, list) else [value])]
    cfg = ws.write("nagios.cfg", "\n".join(lines) + "\n")
    if os.geteuid() == 0:
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        for directory, _, files in os.walk(ws.path("nagios")):
            os.chown(directory, uid, gid)
            for name in files:
                os.chown(os.path.join(directory, name), uid, gid)
    return cfg


def nagios_identity() -> Tuple[str, str]:
    """As root, Nagios drops to the Debian package's user; otherwise it runs as whoever runs the test."""
    if os.geteuid() == 0:
        return "nagios", "nagios"
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


class Nagios:
    """One nagios4 process in the foreground, in its own process group with its workers."""

    def __init__(self, cfg: str, log_path: str) -> None:
        self.cfg = cfg
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def start(self) -> Nagios:
        verify = subprocess.run([NAGIOS, "-v", self.cfg], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([NAGIOS, self.cfg], stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        return self

    def external_command(self, command: str) -> None:
        """One line into Nagios's command pipe, as `nagios4-cgi` or an operator's script would write it."""
        pipe = os.path.join(os.path.dirname(self.log_path), "nagios.cmd")
        deadline = time.monotonic() + 10
        while not os.path.exists(pipe) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(pipe, "w", encoding="utf-8") as handle:
            handle.write(f"[{int(time.time())}] {command}\n")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:  # its worker processes share the group we created for it; none may outlive the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        log_file = os.path.join(os.path.dirname(self.log_path), "nagios.log")
        parts = []
        for path in (self.log_path, log_file):
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    parts.append(handle.read()[-6000:])
            except OSError:
                pass
        return "\n".join(parts)


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    _require(NAGIOS)
    _require(CHECK_DUMMY)
    _require(SYSTEM_PYTHON)
    ws = Workspace()
    try:
        yield ws
    finally:
        ws.remove()


def wait_for_event(standin: Any, match: Callable[[Dict[str, Any]], bool], why: Callable[[], str]
                   ) -> Dict[str, Any]:
    deadline = time.monotonic() + WAIT_SEC
    while time.monotonic() < deadline:
        for body in standin.bodies(KEY):
            if match(body):
                return body
        time.sleep(0.1)
    raise AssertionError(f"no matching event within {WAIT_SEC}s; received {standin.bodies(KEY)}\n{why()}")


def is_event(action: str, dedup_key: str) -> Callable[[Dict[str, Any]], bool]:
    return lambda body: body["event_action"] == action and body["dedup_key"] == dedup_key


def test_nagios_problem_acknowledgement_and_recovery_reach_pagerduty(workspace: Workspace, standin: Any) -> None:
    ws = workspace
    os.makedirs(ws.path("agent"))
    os.chmod(ws.path("agent"), 0o755)
    agent = Agent(ws.path("agent"), standin.url)
    nagios = Nagios(nagios_config(ws, install_pd_nagios(ws), agent.socket), ws.path("nagios", "stdout.log"))
    try:
        agent.start()
        nagios.start()

        def why() -> str:
            return f"--- nagios\n{nagios.log()}\n--- pdagentd\n{agent.log()}"

        trigger = wait_for_event(standin, is_event("trigger", SERVICE_KEY), why)
        assert trigger["payload"]["severity"] == "critical"
        assert trigger["payload"]["source"] == HOST
        assert trigger["payload"]["summary"] == f"{SERVICE} on {HOST} is CRITICAL: CRITICAL: free space: / 812 MB"
        details = trigger["payload"]["custom_details"]
        assert (details["SERVICESTATE"], details["HOSTADDRESS"], details["pd_nagios_object"]) == (
            "CRITICAL", "127.0.0.1", "service")

        # An operator acknowledges in Nagios (sticky, notify, not persistent).
        nagios.external_command(f"ACKNOWLEDGE_SVC_PROBLEM;{HOST};{SERVICE};2;1;0;tester;on it")
        ack = wait_for_event(standin, is_event("acknowledge", SERVICE_KEY), why)
        assert ack == {"routing_key": KEY, "event_action": "acknowledge", "dedup_key": SERVICE_KEY}

        ws.write("service.state", "0\n")
        wait_for_event(standin, is_event("resolve", SERVICE_KEY), why)

        ws.write("host.state", "2\n")
        host_trigger = wait_for_event(standin, is_event("trigger", HOST_KEY), why)
        assert host_trigger["payload"]["severity"] == "critical"
        assert host_trigger["payload"]["summary"] == f"{HOST} is DOWN: CRITICAL: host check"

        ws.write("host.state", "0\n")
        wait_for_event(standin, is_event("resolve", HOST_KEY), why)

        actions: List[Tuple[str, str]] = [(body["event_action"], body["dedup_key"]) for body in standin.bodies(KEY)]
        assert actions == [("trigger", SERVICE_KEY), ("acknowledge", SERVICE_KEY), ("resolve", SERVICE_KEY),
                           ("trigger", HOST_KEY), ("resolve", HOST_KEY)], why()
    finally:
        nagios.stop()
        agent.stop()
