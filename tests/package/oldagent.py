"""Stand-ins of PagerDuty's old packages, pdagent 1.7.4 and pdagent-integrations 1.6.2, built with dpkg-deb.

They lay out the old footprint as the old packages did (the facts are in tests/legacyagent.py): the same package
names and versions, the same paths, conffile, directories and modes, user and group pdagent, the unit copied by
postinst to /lib/systemd/system and enabled, stopped by the old preinst on an upgrade (a reinstall from state
"rc" is one) and by prerm. The programs are small stand-ins written for these tests (not PagerDuty's code) that
behave as the real ones were seen to behave:

- `pd-send` writes one event file in the old format (compact JSON, sorted keys, ASCII escapes, the `agent`
  context) into outqueue/tmp and links it into outqueue/pdq, as the old one did; when it cannot write there it
  fails with the old message (`Can't write to directory /var/lib/pdagent/outqueue/tmp`).
- The daemon is what makes a double send visible: the unit has `KillMode=process` and its `ExecStart=` is a
  shell wrapper that starts python without `exec`, so `systemctl stop pdagent` ends only the shell and the
  python process stays, as with the real unit. Every `send_interval_secs` (read from /etc/pdagent.conf, 10 by
  default) it POSTs every file of outqueue/pdq, in name order, unchanged, to the v1 endpoint
  (/generic/2010-04-15/create_event.json), then moves it to suc/ on a 2xx answer and to err/ on another 4xx; a
  refused connection or a 5xx ends the pass. A file it cannot move stays, ends the pass and is sent again at the
  next one (the real one re-sent the first file every pass when dpkg had removed an empty suc/). The real one
  reaches events.pagerduty.com; the stand-in reads the base URL from /etc/pdagent-standin-events-url, which a
  test writes (a deviation: no /etc/hosts, no CA).

Deviations: the user is made with useradd (minbase has no adduser), and the old packages' dependency on sudo is
left out.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict

STANDIN_URL_FILE = "/etc/pdagent-standin-events-url"
OLD_DAEMON_PATH = "/usr/share/pdagent/bin/pdagentd.py"

OLD_PD_SEND = r"""#!/usr/bin/python3
# stand-in of the old pd-send: pd-send -k KEY -t TYPE [-i INCIDENT_KEY] [-d DESCRIPTION] [-c CLIENT]
import json, os, sys, time, uuid
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
key, kind = args["-k"], args["-t"]
body = {"service_key": key, "event_type": kind, "details": {},
        "agent": {"agent_id": str(uuid.UUID(int=0x4000 << 64)), "queued_by": "pd-send",
                  "queued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
for flag, field in (("-i", "incident_key"), ("-d", "description"), ("-c", "client")):
    if flag in args:
        body[field] = args[flag]
name = "%d_%s.txt" % (time.time() * 1e6, key)
tmp = "/var/lib/pdagent/outqueue/tmp"
os.umask(0o022)
try:
    with open(os.path.join(tmp, name), "w") as handle:
        handle.write(json.dumps(body, separators=(",", ":"), sort_keys=True))
except OSError:
    sys.exit("Can't write to directory %s" % tmp)
os.link(os.path.join(tmp, name), os.path.join("/var/lib/pdagent/outqueue/pdq", name))
os.unlink(os.path.join(tmp, name))
print("Event processed. Incident Key: %s" % body.get("incident_key", ""))
"""

OLD_DAEMON_WRAPPER = """#!/bin/sh
# stand-in of the old daemon's start: a shell that runs python without exec (the shell stays its parent)
/usr/bin/python3 /usr/share/pdagent/bin/pdagentd.py "$@"
exit $?
"""

OLD_DAEMON = r"""#!/usr/bin/python3
# stand-in of the old daemon: every send_interval_secs, POST each file of pdq/ unchanged to the v1 endpoint
import configparser, os, sys, time, urllib.error, urllib.request
Q = "/var/lib/pdagent/outqueue"
while True:
    conf = configparser.ConfigParser()
    conf.read("/etc/pdagent.conf")
    interval = conf.getfloat("Main", "send_interval_secs", fallback=10.0)
    try:
        with open("/etc/pdagent-standin-events-url") as handle:
            url = handle.read().strip() + "/generic/2010-04-15/create_event.json"
    except OSError:
        url = ""
    try:
        names = sorted(os.listdir(os.path.join(Q, "pdq")))
    except OSError:
        names = []
    for name in names if url else []:
        try:
            with open(os.path.join(Q, "pdq", name), "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = answer.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError as error:
            print("pdagentd stand-in: cannot send %s: %s" % (name, error), file=sys.stderr, flush=True)
            break
        if status >= 500 or status == 429:
            break
        target = "suc" if status < 300 else "err"
        try:
            os.rename(os.path.join(Q, "pdq", name), os.path.join(Q, target, name))
        except OSError as error:
            print("pdagentd stand-in: sent %s, cannot move it: %s" % (name, error), file=sys.stderr, flush=True)
            break
        print("pdagentd stand-in: sent %s: HTTP %d" % (name, status), file=sys.stderr, flush=True)
    time.sleep(interval)
"""

OLD_UNIT = """[Unit]
Description=PagerDuty Agent
After=network.target

[Service]
Type=simple
ExecStart=/usr/share/pdagent/bin/pdagentd
KillMode=process
User=pdagent
Group=pdagent

[Install]
WantedBy=multi-user.target
"""

OLD_CONF = """#
# PagerDuty Agent Config
#

[Main]
send_interval_secs = 10
cleanup_interval_secs = 10800
cleanup_threshold_secs = 604800
backoff_interval_secs = 60
retry_limit_for_possible_errors = 60
source_address = 0.0.0.0
"""

OLD_POSTINST = """#!/bin/sh
set -e
if [ "$1" = "configure" ]; then
    getent passwd pdagent >/dev/null || useradd --system --user-group --shell /bin/false --no-create-home pdagent
    chown -R pdagent:pdagent /var/lib/pdagent /var/log/pdagent
    chmod 2750 /var/lib/pdagent/outqueue/err /var/lib/pdagent/outqueue/suc
    chmod 2753 /var/lib/pdagent/outqueue/tmp /var/lib/pdagent/outqueue/pdq
    cp /var/lib/pdagent/scripts/pdagent.service /lib/systemd/system
    systemctl enable pdagent
    systemctl start pdagent
fi
exit 0
"""

OLD_PREINST = """#!/bin/sh
set -e
if [ "$1" = "upgrade" ]; then
    systemctl stop pdagent
fi
exit 0
"""

OLD_PRERM = """#!/bin/sh
set -e
if [ "$1" = "remove" ]; then
    systemctl stop pdagent
    systemctl disable pdagent
fi
if [ "$1" = "upgrade" ]; then
    systemctl stop pdagent
fi
exit 0
"""


def _control(name: str, version: str, depends: str = "") -> str:
    fields = [f"Package: {name}", f"Version: {version}", "Architecture: all",
              "Maintainer: Package Maintainer (stand-in for the package tests) <packages@example.invalid>",
              "Section: default", "Priority: extra"]
    if depends:
        fields.append(f"Depends: {depends}")
    fields.append(f"Description: stand-in of the old {name} package, for pdagent-sd's package tests")
    return "\n".join(fields) + "\n"


def _tree(root: Path, files: Dict[str, str], executable: tuple = ()) -> None:
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o755 if path in executable or path.startswith("DEBIAN/p") else 0o644)


def build_old_packages(workdir: Path) -> Dict[str, Path]:
    """pdagent_1.7.4_all.deb and pdagent-integrations_1.6.2_all.deb, built in workdir."""
    debs: Dict[str, Path] = {}
    agent = workdir / "pdagent"
    agent_bins = ("/usr/bin/pd-send", "/usr/bin/pd-queue", "/usr/share/pdagent/bin/pdagentd", OLD_DAEMON_PATH)
    _tree(agent, {
        "DEBIAN/control": _control("pdagent", "1.7.4"),
        "DEBIAN/conffiles": "/etc/pdagent.conf\n",
        "DEBIAN/preinst": OLD_PREINST,
        "DEBIAN/postinst": OLD_POSTINST,
        "DEBIAN/prerm": OLD_PRERM,
        "/usr/bin/pd-send": OLD_PD_SEND,
        "/usr/bin/pd-queue": "#!/bin/sh\necho 'stand-in of the old pd-queue'\n",
        "/usr/share/pdagent/bin/pdagentd": OLD_DAEMON_WRAPPER,
        OLD_DAEMON_PATH: OLD_DAEMON,
        "/usr/lib/python3/dist-packages/pdagent/__init__.py": '__version__ = "1.7.4"\n',
        "/etc/pdagent.conf": OLD_CONF,
        "/var/lib/pdagent/scripts/pdagent.service": OLD_UNIT,
    }, executable=agent_bins)
    for directory in ("var/log/pdagent", "var/lib/pdagent/db", "var/lib/pdagent/outqueue/pdq",
                      "var/lib/pdagent/outqueue/tmp", "var/lib/pdagent/outqueue/suc", "var/lib/pdagent/outqueue/err"):
        (agent / directory).mkdir(parents=True, exist_ok=True)
    integrations = workdir / "pdagent-integrations"
    old_bins = {f"/usr/share/pdagent-integrations/bin/{name}": f"#!/bin/sh\necho 'stand-in of the old {name}'\n"
                for name in ("pd-nagios", "pd-zabbix", "pd-sensu")}
    _tree(integrations, {"DEBIAN/control": _control("pdagent-integrations", "1.6.2", "pdagent"), **old_bins},
          executable=tuple(old_bins))
    for name, root in (("pdagent", agent), ("pdagent-integrations", integrations)):
        for path in root.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        out = workdir / f"{name}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True,
                       stdout=subprocess.DEVNULL)
        debs[name] = out
    return debs
