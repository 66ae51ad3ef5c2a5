"""Integration: Debian's real nagios4 and Icinga 2 notifying through the shipped config files, pd-nagios and
the real pdagentd.

Each test starts its own monitoring daemon on a temporary configuration: a host and a service checked with
check_dummy, whose exit state each check reads from a file the test rewrites, checked every second.
Notifications go to the contact/user and commands of integrations/nagios/pagerduty.cfg or
integrations/icinga2/pagerduty.conf as shipped, with only the path of pd-nagios, its --socket and the
integration key filled in. The events must arrive at the Events API stand-in with the old agent's dedup keys.

Both daemons run their notification commands as the user `nagios` (they drop root themselves), and that user
cannot read the test runner's interpreter or checkout (a pyenv or .venv under /root, a clone in a private
directory). So pd-nagios runs the way the .deb runs it, under Debian's /usr/bin/python3, from a copy of the
package source in a world-readable temporary directory. It needs nothing outside the standard library, so no
virtualenv and no build step (which would need pip, setuptools and wheel offline) are involved.
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
from tiers import missing
from waiting import poll

pytestmark = pytest.mark.integration

NAGIOS = "/usr/sbin/nagios4"
ICINGA2 = "/usr/sbin/icinga2"
CHECK_DUMMY = "/usr/lib/nagios/plugins/check_dummy"
SYSTEM_PYTHON = "/usr/bin/python3"
NAGIOS_CFG = os.path.join(ROOT, "integrations", "nagios", "pagerduty.cfg")
ICINGA2_CONF = os.path.join(ROOT, "integrations", "icinga2", "pagerduty.conf")
KEY = "4e4a9c1f0b2d4c6e8a1b3c5d7e9f0a1b"
HOST = "web01"
SERVICE = "Disk Space"
# Ends in a backslash and holds both quotes: on a shell command line as "$SERVICEOUTPUT$" it escaped the
# closing quote and /bin/sh failed "Unterminated quoted string"; through environment macros it arrives whole.
SERVICE_OUTPUT = "free space: 'C:' \"812 MB\" C:\\data\\"
KEY_NAMES = ("nagios", "icinga")  # the names the shipped files use in "pager"
SERVICE_KEY = f"event_source=service;host_name={HOST};service_desc={SERVICE}"
HOST_KEY = f"event_source=host;host_name={HOST}"
WAIT_SEC = 60.0
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _require(path: str, packages: str) -> None:
    if not os.access(path, os.X_OK):
        missing(f"{path} is missing: install {packages}")


class Workspace:
    """A temporary directory every user may traverse: the monitor's files, the pd-nagios copy, the agent socket."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pdagent-monitor-")
        os.chmod(self.root, 0o755)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def write(self, name: str, text: str, mode: int = 0o644) -> str:
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, mode)
        return path

    def private_dirs(self, *names: str) -> None:
        """Directories the monitoring daemon writes after dropping root."""
        user, group = run_as()
        for name in names:
            os.makedirs(self.path(name), exist_ok=True)
            if os.geteuid() == 0:
                os.chown(self.path(name), pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def run_as() -> Tuple[str, str]:
    """As root, both daemons drop to the Debian packages' user; otherwise they run as whoever runs the test."""
    if os.geteuid() == 0:
        return "nagios", "nagios"
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


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


def write_checks(ws: Workspace) -> str:
    """check_dummy with the state the test wrote (how a check "fails" and "recovers") and the output in
    STATEFILE.text (read from a file, so no quoting of the check's own command line is involved)."""
    ws.write("service.state", "2\n")
    ws.write("service.state.text", SERVICE_OUTPUT)
    ws.write("host.state", "0\n")
    ws.write("host.state.text", "host check")
    return ws.write("check_state", f"#!/bin/sh\nexec {CHECK_DUMMY} \"$(cat \"$1\")\" \"$(cat \"$1.text\")\"\n",
                    mode=0o755)


def shipped(path: str, pd_nagios: str, socket_path: str) -> str:
    """A shipped config file with only pd-nagios's path and socket filled in; its pager names a key that the
    agent's configuration holds (agent_socket), so the key itself is on no command line."""
    text = open(path, encoding="utf-8").read()
    assert text.count("/usr/bin/pd-nagios") == 2 and KEY not in text
    assert sum(text.count(f"@{name}") for name in KEY_NAMES) == 1, "the pager names a key"
    if path == ICINGA2_CONF:  # a command array: the socket option is one more element
        filled = text.replace('"/usr/bin/pd-nagios"', f'"{pd_nagios}", "--socket", "{socket_path}"')
    else:
        filled = text.replace("/usr/bin/pd-nagios", f"{pd_nagios} --socket {socket_path}")
    return filled


class Monitor:
    """One monitoring daemon in the foreground, in its own process group with all its helpers."""

    def __init__(self, argv: List[str], verify: List[str], logs: List[str]) -> None:
        self.argv = argv
        self.verify = verify
        self.logs = logs  # its console output first
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def start(self) -> Monitor:
        checked = subprocess.run(self.verify, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        with open(self.logs[0], "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=CLEAN_ENV,
                                         start_new_session=True)
        return self

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
        try:  # its workers share the group we created for it; none may outlive the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        parts = []
        for path in self.logs:
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    parts.append(handle.read()[-6000:])
            except OSError:
                pass
        return "\n".join(parts)


def nagios(ws: Workspace, pd_nagios: str, socket_path: str) -> Monitor:
    check = write_checks(ws)
    ws.write("pagerduty.cfg", shipped(NAGIOS_CFG, pd_nagios, socket_path))
    days = "".join(f"  {day} 00:00-24:00\n" for day in
                   ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"))
    ws.write("objects.cfg", f"""\
define timeperiod {{
  timeperiod_name 24x7
  alias always
{days}}}
define command {{
  command_name check-state
  command_line {check} $ARG1$
}}
define host {{
  host_name {HOST}
  address 127.0.0.1
  check_command check-state!{ws.path('host.state')}
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
  check_command check-state!{ws.path('service.state')}
  max_check_attempts 1
  check_interval 1
  retry_interval 1
  check_period 24x7
  notification_period 24x7
  notification_interval 0
  contacts pagerduty
}}
""")
    ws.private_dirs("nagios", "nagios/checkresults")
    user, group = run_as()
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
        "cached_host_check_horizon": "0",  # else a host state is trusted for 15 s
        "enable_notifications": "1",
        "enable_flap_detection": "0",
        "enable_environment_macros": "1",  # what the shipped commands' --env reads
        "illegal_macro_output_chars": "`~$&|'\"<>",  # Debian's default: output is safe inside quotes
    }
    lines = []
    for name, value in settings.items():
        lines += [f"{name}={item}" for item in (value if isinstance(value, list) else [value])]
    cfg = ws.write("nagios.cfg", "\n".join(lines) + "\n")
    return Monitor([NAGIOS, cfg], [NAGIOS, "-v", cfg], [ws.path("nagios.out"), ws.path("nagios", "nagios.log")])


def nagios_external_command(ws: Workspace, command: str) -> None:
    """One line into Nagios's command pipe, as the CGIs or an operator's script write it."""
    pipe = ws.path("nagios", "nagios.cmd")
    poll(lambda: os.path.exists(pipe), 10)  # if it never comes, open() below says so
    with open(pipe, "w", encoding="utf-8") as handle:
        handle.write(f"[{int(time.time())}] {command}\n")


def icinga2(ws: Workspace, pd_nagios: str, socket_path: str) -> Monitor:
    check = write_checks(ws)
    ws.write("pagerduty.conf", shipped(ICINGA2_CONF, pd_nagios, socket_path))
    days = ", ".join(f'{day} = "00:00-24:00"' for day in
                     ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"))
    ws.write("icinga2.conf", f"""\
include <itl>
object CheckerComponent "checker" {{ }}
object NotificationComponent "notification" {{ }}
object TimePeriod "24x7" {{
  ranges = {{ {days} }}
}}
object CheckCommand "check-state" {{
  command = [ "{check}", "$state_file$" ]
}}
object Host "{HOST}" {{
  check_command = "check-state"
  vars.state_file = "{ws.path('host.state')}"
  address = "127.0.0.1"
  check_interval = 1s
  retry_interval = 1s
  max_check_attempts = 1
  vars.enable_pagerduty = true
}}
object Service "{SERVICE}" {{
  host_name = "{HOST}"
  check_command = "check-state"
  vars.state_file = "{ws.path('service.state')}"
  check_interval = 1s
  retry_interval = 1s
  max_check_attempts = 1
  vars.enable_pagerduty = true
}}
include "{ws.path('pagerduty.conf')}"
""")
    ws.private_dirs("icinga2", "icinga2/cache", "icinga2/data", "icinga2/log", "icinga2/spool", "icinga2/run")
    user, group = run_as()
    defines = [f"-D{name}={ws.path('icinga2', directory)}" for name, directory in
               (("CacheDir", "cache"), ("DataDir", "data"), ("LogDir", "log"), ("SpoolDir", "spool"),
                ("InitRunDir", "run"))] + [f"-DRunAsUser={user}", f"-DRunAsGroup={group}"]
    conf = ws.path("icinga2.conf")
    return Monitor([ICINGA2, "daemon", "-c", conf, *defines], [ICINGA2, "daemon", "-C", "-c", conf, *defines],
                   [ws.path("icinga2.out")])


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    _require(CHECK_DUMMY, "monitoring-plugins-basic")
    _require(SYSTEM_PYTHON, "python3")
    ws = Workspace()
    try:
        yield ws
    finally:
        ws.remove()


@pytest.fixture
def agent_socket(workspace: Workspace, standin: Any) -> Iterator[Agent]:
    """The real pdagentd, its socket where the monitor's user can reach it; stopped by PID afterwards."""
    os.makedirs(workspace.path("agent"))
    os.chmod(workspace.path("agent"), 0o755)
    # Named keys are for trusted senders unless granted: the monitors' user gets them, as the shipped files say.
    keys = "".join(f"{name} = {KEY} user:{run_as()[0]}\n" for name in KEY_NAMES)
    workspace.write("agent/agent.conf", f"[Keys]\n{keys}", mode=0o600)
    agent = Agent(workspace.path("agent"), standin.url)
    try:
        yield agent.start()
    finally:
        agent.stop()


def wait_for_event(standin: Any, action: str, dedup_key: str, why: Callable[[], str]) -> Dict[str, Any]:
    found = poll(lambda: next((body for body in standin.bodies(KEY)
                               if body["event_action"] == action and body["dedup_key"] == dedup_key), None),
                 WAIT_SEC, interval=0.1)
    if found is not None:
        return found
    raise AssertionError(f"no {action} for {dedup_key} within {WAIT_SEC}s; got {standin.bodies(KEY)}\n{why()}")


def received(standin: Any) -> List[Tuple[str, str]]:
    return [(body["event_action"], body["dedup_key"]) for body in standin.bodies(KEY)]


def test_nagios_problem_acknowledgement_and_recovery_reach_pagerduty(
        workspace: Workspace, agent_socket: Agent, standin: Any) -> None:
    _require(NAGIOS, "nagios4")
    ws, agent = workspace, agent_socket
    monitor = nagios(ws, install_pd_nagios(ws), agent.socket)
    try:
        monitor.start()

        def why() -> str:
            return f"--- nagios\n{monitor.log()}\n--- pdagentd\n{agent.log()}"

        trigger = wait_for_event(standin, "trigger", SERVICE_KEY, why)
        assert trigger["payload"]["severity"] == "critical"
        assert trigger["payload"]["source"] == HOST
        assert trigger["payload"]["summary"] == f"{SERVICE} on {HOST} is CRITICAL: CRITICAL: {SERVICE_OUTPUT}"
        details = trigger["payload"]["custom_details"]
        assert (details["SERVICESTATE"], details["HOSTADDRESS"], details["pd_nagios_object"]) == (
            "CRITICAL", "127.0.0.1", "service")

        # An operator acknowledges in Nagios (sticky, notify, not persistent).
        nagios_external_command(ws, f"ACKNOWLEDGE_SVC_PROBLEM;{HOST};{SERVICE};2;1;0;tester;on it")
        ack = wait_for_event(standin, "acknowledge", SERVICE_KEY, why)
        assert ack == {"routing_key": KEY, "event_action": "acknowledge", "dedup_key": SERVICE_KEY}

        ws.write("service.state", "0\n")
        wait_for_event(standin, "resolve", SERVICE_KEY, why)

        ws.write("host.state", "2\n")
        host_trigger = wait_for_event(standin, "trigger", HOST_KEY, why)
        assert host_trigger["payload"]["severity"] == "critical"
        assert host_trigger["payload"]["summary"] == f"{HOST} is DOWN: CRITICAL: host check"

        ws.write("host.state", "0\n")
        wait_for_event(standin, "resolve", HOST_KEY, why)

        assert received(standin) == [("trigger", SERVICE_KEY), ("acknowledge", SERVICE_KEY),
                                     ("resolve", SERVICE_KEY), ("trigger", HOST_KEY), ("resolve", HOST_KEY)], why()
    finally:
        monitor.stop()


def test_icinga2_problem_and_recovery_reach_pagerduty(
        workspace: Workspace, agent_socket: Agent, standin: Any) -> None:
    _require(ICINGA2, "icinga2-bin")
    ws, agent = workspace, agent_socket
    monitor = icinga2(ws, install_pd_nagios(ws), agent.socket)
    try:
        monitor.start()

        def why() -> str:
            return f"--- icinga2\n{monitor.log()}\n--- pdagentd\n{agent.log()}"

        trigger = wait_for_event(standin, "trigger", SERVICE_KEY, why)
        assert trigger["payload"]["severity"] == "critical"
        assert trigger["payload"]["summary"] == f"{SERVICE} on {HOST} is CRITICAL: CRITICAL: {SERVICE_OUTPUT}"
        assert trigger["client"].startswith("Icinga 2 on ")

        ws.write("service.state", "0\n")
        wait_for_event(standin, "resolve", SERVICE_KEY, why)

        ws.write("host.state", "2\n")
        host_trigger = wait_for_event(standin, "trigger", HOST_KEY, why)
        assert host_trigger["payload"]["severity"] == "critical"
        assert host_trigger["payload"]["summary"] == f"{HOST} is DOWN: CRITICAL: host check"

        ws.write("host.state", "0\n")
        wait_for_event(standin, "resolve", HOST_KEY, why)

        assert received(standin) == [("trigger", SERVICE_KEY), ("resolve", SERVICE_KEY),
                                     ("trigger", HOST_KEY), ("resolve", HOST_KEY)], why()
    finally:
        monitor.stop()
