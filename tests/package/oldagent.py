"""Stand-ins of PagerDuty's old packages, pdagent 1.7.4 and pdagent-integrations 1.6.2, built with dpkg-deb.

They lay out the old footprint as the old packages did (the facts are in tests/legacyagent.py): the same package
names and versions, the same paths, conffile, directories and modes, user and group pdagent, the unit copied by
postinst to /lib/systemd/system and enabled, and stopped and disabled by prerm on removal. Only the programs are
stand-ins (tiny shell scripts, not PagerDuty's code): the old `pd-send` writes an event file in the old format
into outqueue/pdq, as the old one did, and the old daemon only sleeps, so that the events stay queued, as on a
host whose agent could not reach PagerDuty before the switch. Deviations: the user is made with useradd
(minbase has no adduser), and the old packages' dependency on sudo is left out.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict

OLD_PD_SEND = r"""#!/bin/sh
# stand-in of the old pd-send: pd-send -k KEY -t TYPE [-i INCIDENT_KEY] [-d DESCRIPTION]
while [ $# -gt 0 ]; do
    case $1 in
        -k) key=$2; shift 2 ;; -t) type=$2; shift 2 ;; -i) ikey=$2; shift 2 ;; -d) desc=$2; shift 2 ;;
        *) shift ;;
    esac
done
now=$(date +%s%6N)
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
body='{"agent":{"agent_id":"00000000-0000-4000-8000-000000000000","queued_at":"'$at'","queued_by":"pd-send"}'
[ -n "$desc" ] && body="$body,\"description\":\"$desc\""
body="$body,\"details\":{},\"event_type\":\"$type\""
[ -n "$ikey" ] && body="$body,\"incident_key\":\"$ikey\""
body="$body,\"service_key\":\"$key\"}"
umask 022
printf '%s' "$body" >/var/lib/pdagent/outqueue/tmp/${now}_$key.txt
ln /var/lib/pdagent/outqueue/tmp/${now}_$key.txt /var/lib/pdagent/outqueue/pdq/${now}_$key.txt
rm /var/lib/pdagent/outqueue/tmp/${now}_$key.txt
echo "Event processed. Incident Key: $ikey"
"""

OLD_UNIT = """[Unit]
Description=PagerDuty Agent
After=network.target

[Service]
Type=simple
ExecStart=/usr/share/pdagent/bin/pdagentd -f
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

OLD_PRERM = """#!/bin/sh
set -e
if [ "$1" = "remove" ]; then
    systemctl stop pdagent
    systemctl disable pdagent
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
    agent_bins = ("/usr/bin/pd-send", "/usr/bin/pd-queue", "/usr/share/pdagent/bin/pdagentd")
    _tree(agent, {
        "DEBIAN/control": _control("pdagent", "1.7.4"),
        "DEBIAN/conffiles": "/etc/pdagent.conf\n",
        "DEBIAN/postinst": OLD_POSTINST,
        "DEBIAN/prerm": OLD_PRERM,
        "/usr/bin/pd-send": OLD_PD_SEND,
        "/usr/bin/pd-queue": "#!/bin/sh\necho 'stand-in of the old pd-queue'\n",
        "/usr/share/pdagent/bin/pdagentd": "#!/bin/sh\n# stand-in of the old daemon: it never delivers\n"
                                           "exec sleep infinity\n",
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
