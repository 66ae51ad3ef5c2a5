"""Facts about PagerDuty's old agent (pdagent 1.7, pdagent-integrations 1.6), recorded as test data.

Read from its public sources (PagerDuty/pdagent: pdagent/pdqueue.py, pdagent/pdagentutil.py, pdagent/config.py,
build-linux/make_package.sh and build-linux/deb/postinst; PagerDuty/pdagent-integrations:
build-linux/make_package.sh). Only the facts are here; none of its code.

- The queue lives in /var/lib/pdagent/outqueue with subdirectories pdq (pending), tmp, suc (delivered) and err
  (failed); the daemon also keeps /var/lib/pdagent/db. Owner pdagent:pdagent; pdq and tmp mode 2753 (anyone may
  add an event), err and suc 2750.
- One file per event, named "<enqueue time in microseconds>_<service key>.txt", created with mode 0644 by
  whichever user ran pd-send; sorting the names is the queue's order within one digit count.
- Its content is the Events API v1 body as compact JSON with sorted keys: service_key, event_type, details
  (always, {} if none), incident_key / description / client / client_url when given, and an "agent" object
  {agent_id, queued_at (UTC, %Y-%m-%dT%H:%M:%SZ), queued_by (the command's name)}. The daemon POSTs that body
  unchanged to /generic/2010-04-15/create_event.json.
- The packages: pdagent ships /usr/bin/pd-send, /usr/bin/pd-queue, /usr/share/pdagent/bin/pdagentd(.py),
  /etc/pdagent.conf (a conffile, section [Main]), the Python package under /usr/lib/python3/dist-packages/pdagent,
  and /var/lib/pdagent/scripts/pdagent.service, which its postinst copies to /lib/systemd/system and enables;
  it creates user and group pdagent with `adduser --system --group`. pdagent-integrations ships
  /usr/share/pdagent-integrations/bin/pd-nagios, pd-zabbix, pd-sensu.

Seen when the real packages (rebuilt from those tags with their own make_package.sh layout and maintainer
scripts) were installed on a booted Debian 12 and replaced by pdagent-sd (issue 19); tests/package/oldagent.py
reproduces these:
- The unit has KillMode=process and an ExecStart= shell wrapper that does not exec python, so `systemctl stop
  pdagent` ends only the shell: the python daemon stays ("Unit process ... (python3) remains running after unit
  stopped") and keeps POSTing the files of pdq/ every send_interval_secs (10), moving each to suc/ once sent; if
  dpkg removed an empty suc/, the move fails and the same file is sent again at every pass.
- A reinstall from state "rc" runs the old preinst as an upgrade, and it runs `systemctl stop pdagent`, which
  exits 5 ("Unit pdagent.service not loaded") when no unit of that name exists.
- /var/lib/pdagent is not 0700 under the old package: its pd-send, run as any user, writes outqueue/tmp.
- The old `pd-queue status` crashes on Debian 12 (TypeError: not enough arguments for format string).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

OUTQUEUE_SUBDIRS = {"pdq": 0o2753, "tmp": 0o2753, "suc": 0o2750, "err": 0o2750}
OLD_INTEGRATIONS_BIN = "/usr/share/pdagent-integrations/bin"
OLD_COMMANDS = ("pd-nagios", "pd-zabbix", "pd-sensu")


def event_text(event_type: str, service_key: str, incident_key: Optional[str] = None,
               description: Optional[str] = None, details: Optional[Dict[str, Any]] = None,
               queued_by: str = "pd-send", queued_at: str = "2026-11-29T22:10:00Z") -> str:
    """An event file's content, as the old agent wrote it."""
    body: Dict[str, Any] = {"service_key": service_key, "event_type": event_type, "details": details or {}}
    if incident_key is not None:
        body["incident_key"] = incident_key
    if description is not None:
        body["description"] = description
    body["agent"] = {"agent_id": "5f0d1c2e-3b4a-4c5d-8e6f-708192a3b4c5", "queued_at": queued_at,
                     "queued_by": queued_by}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def file_name(micros: int, service_key: str) -> str:
    return f"{micros}_{service_key}.txt"


def make_outqueue(root: str) -> str:
    """An empty outqueue directory tree under root (modes as the old package set them); returns its path."""
    outqueue = os.path.join(root, "outqueue")
    for subdir, mode in OUTQUEUE_SUBDIRS.items():
        os.makedirs(os.path.join(outqueue, subdir), exist_ok=True)
        os.chmod(os.path.join(outqueue, subdir), mode)
    return outqueue


def put(outqueue: str, subdir: str, name: str, text: str) -> str:
    path = os.path.join(outqueue, subdir, name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o644)
    return path
