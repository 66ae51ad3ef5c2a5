"""Named routing keys under a real booted systemd and the hardened unit: a [Keys] file 0640 root:pdagent that
only the daemon's group can read, and a credential `key.NAME` from `LoadCredential=` in a drop-in, as
docs/security.md describes them. pd-send's command line holds only the name; the stand-in gets the key."""

from __future__ import annotations

import pytest

from bootedsystemd import BootedSystemd
from standin import StandIn

pytestmark = pytest.mark.system

FILE_KEY = "f1e2d3c4b5a60718293a4b5c6d7e8f90"
CREDENTIAL_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
KEYS_FILE = "/etc/pdagent/agent.conf.d/keys.conf"


def test_keys_from_a_root_pdagent_file_and_a_systemd_credential(agent_machine: BootedSystemd,
                                                                events_api: StandIn) -> None:
    machine = agent_machine
    machine.write_file(KEYS_FILE, f"[Keys]\nops = {FILE_KEY}\n", mode="0640")
    machine.run(["chown", "root:pdagent", KEYS_FILE])
    machine.write_file("/etc/credstore/pdagent-db", CREDENTIAL_KEY + "\n", mode="0600")
    machine.drop_in("pdagent.service", "60-keys", "[Service]\nLoadCredential=key.db:/etc/credstore/pdagent-db\n")

    machine.pd_send("@ops", "by a name from the keys file", dedup_key="named-1")
    machine.pd_send("@db", "by a name from a credential", dedup_key="named-2")
    assert events_api.wait_for(2, timeout=20), machine.unit_log("pdagent.service")
    assert {event.routing_key for event in events_api.events} == {FILE_KEY, CREDENTIAL_KEY}

    unknown = machine.pd_send("@nope", "no such name", check=False)
    assert unknown.returncode == 65 and "@nope is not a configured key name" in unknown.stderr
    log = machine.unit_log("pdagent.service")
    assert FILE_KEY not in log and CREDENTIAL_KEY not in log
