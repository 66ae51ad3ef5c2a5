"""Named routing keys: `-k @name` (and PDAGENT_ROUTING_KEY) resolved by the real daemon from [Keys] and from
systemd credentials, so no key has to be on a command line that every local user can read in /proc.

- the daemon queues and POSTs the real key; the sender's argv holds only the name;
- an unknown name is an invalid event (exit 65) naming the name, never a key;
- a bad key in the configuration stops the daemon naming the file and the name, never the value;
- another local user sees dedup keys masked like routing keys (status, list, pd-queue --json) and never learns
  the key behind a name;
- a name is for trusted senders and whom its entry grants it to (user:NAME, group:NAME, everyone): anyone else
  is refused with exit 77 naming the name, never the key (issue 18).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from typing import Any, Dict

import pytest

from pdagent_sd import config as config_module
from pdagent_sd.errors import ConfigError, Forbidden, InvalidEvent
from pdagent_sd.events import validate
from pdagent_sd.keys import Caller, KeyBook, mask

from agentproc import KEY_A, KEY_B, Agent, trigger
from asuser import OtherUser
from standin import StandIn

DEDUP = "db01/disk-full"


def write_keys(agent: Agent, text: str, mode: int = 0o600) -> None:
    with open(agent.config, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(agent.config, mode)


# --- the rules, without a daemon ----------------------------------------------------------------------------


@pytest.mark.unit
def test_a_name_is_replaced_by_its_key_in_the_body_for_every_api() -> None:
    book = KeyBook({"ops": KEY_A, "db.team-1": KEY_B})
    event = validate("v2", trigger("@ops", "disk"), keys=book)
    assert event.routing_key.reveal() == KEY_A and event.body["routing_key"] == KEY_A and "@ops" not in event.encoded()
    v1 = validate("v1", {"service_key": "@db.team-1", "event_type": "trigger", "description": "x"}, keys=book)
    assert v1.routing_key.reveal() == KEY_B and v1.body["service_key"] == KEY_B
    change = validate("change", {"routing_key": "@ops", "payload": {"summary": "deployed"}}, keys=book)
    assert change.routing_key.reveal() == KEY_A
    assert KEY_A not in repr(book) and "@ops" in repr(book)
    # the key travels typed: its str() and repr() are masked, in any f-string or log argument
    assert KEY_A not in f"{event.routing_key} {event.routing_key!r}" and mask(KEY_A) in str(event.routing_key)


@pytest.mark.unit
@pytest.mark.parametrize("value", ["@nope", "@", "@bad name", "@" + "x" * 65, "@ops\n"])
def test_an_unknown_or_malformed_name_is_an_invalid_event_without_a_key(value: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate("v2", trigger(value, "disk"), keys=KeyBook({"ops": KEY_A}))
    text = caught.value.message + (caught.value.hint or "")
    assert KEY_A not in text and "routing_key" in text
    if value == "@nope":
        assert "@nope is not a configured key name" in text


@pytest.mark.unit
def test_keys_come_from_files_and_credentials_and_a_bad_one_names_file_and_name_only(tmp_path: Any) -> None:
    main = tmp_path / "agent.conf"
    main.write_text(f"[Agent]\nrate_limit_burst = 5\n[Keys]\nOps = {KEY_A}\nshared = {KEY_A}\n")
    (tmp_path / "agent.conf.d").mkdir()
    (tmp_path / "agent.conf.d" / "db.conf").write_text(f"[Keys]\ndb = {KEY_B}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "key.shared").write_text(KEY_B + "\n")  # a credential wins over a file
    (creds / "other").write_text("not a key, not ours")
    loaded = config_module.load(str(main), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.rate_limit_burst == 5
    assert loaded.keys.names() == ("Ops", "db", "shared")
    assert [loaded.keys.resolve(n).reveal() for n in ("@Ops", "@db", "@shared")] == [KEY_A, KEY_B, KEY_B]
    assert loaded.keys.source("shared") == "credential key.shared"

    bad = "0123456789abcdef0123456789abcdeX!"  # 33 characters, one not a letter or digit
    (tmp_path / "agent.conf.d" / "zz.conf").write_text(f"[Keys]\nbroken = {bad}\n")
    with pytest.raises(ConfigError) as caught:
        config_module.load(str(main), {})
    assert "zz.conf" in caught.value.message and "@broken" in caught.value.message
    assert bad not in caught.value.message and bad[:20] not in caught.value.message
    (tmp_path / "agent.conf.d" / "zz.conf").write_text(f"[Keys]\nbroken = {KEY_A}\n  {KEY_B} = x\n")
    with pytest.raises(ConfigError) as caught:
        config_module.load(str(main), {})
    assert KEY_A not in caught.value.message and KEY_B not in caught.value.message


@pytest.mark.unit
def test_a_name_is_for_trusted_senders_and_whom_its_entry_grants_it_to(tmp_path: Any) -> None:
    main = tmp_path / "agent.conf"
    main.write_text(f"[Keys]\nops = {KEY_A}\nnagios = {KEY_B}  user:4711 group:4712\nall = {KEY_B} everyone\n"
                    f"ghost = {KEY_A} user:no-such-user-here\n")
    book = config_module.load(str(main), {}).keys
    stranger, granted, member = Caller(1000), Caller(4711), Caller(1001, frozenset({5, 4712}))
    root = Caller(0, trusted=True)
    assert book.resolve("@ops", caller=root).reveal() == KEY_A == book.resolve("@ops").reveal()  # default: trusted
    for caller in (granted, member, root):
        assert validate("v2", trigger("@nagios", "x"), keys=book, caller=caller).routing_key.reveal() == KEY_B
    assert book.resolve("@all", caller=stranger).reveal() == KEY_B
    for name, caller in (("ops", stranger), ("ops", granted), ("nagios", stranger), ("ghost", stranger)):
        with pytest.raises(Forbidden) as caught:
            validate("v2", trigger(f"@{name}", "x"), keys=book, caller=caller)
        text = caught.value.message + (caught.value.hint or "")
        assert f"@{name}" in text and f"uid {caller.uid}" in text and KEY_A not in text and KEY_B not in text
    assert book.grant("ghost").unknown == ("user:no-such-user-here",)
    (tmp_path / "agent.conf").write_text(f"[Keys]\nops = {KEY_A} users=nagios\n")
    with pytest.raises(ConfigError) as bad:
        config_module.load(str(main), {})
    assert "@ops" in bad.value.message and "user:NAME" in bad.value.message and KEY_A not in bad.value.message
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "key.db").write_text(f"{KEY_B}\ngroup:4712\n")  # a credential takes the same words
    main.write_text("")
    book = config_module.load(str(main), {"CREDENTIALS_DIRECTORY": str(creds)}).keys
    assert book.resolve("@db", caller=member).reveal() == KEY_B
    with pytest.raises(Forbidden):
        book.resolve("@db", caller=stranger)


@pytest.mark.unit
def test_the_integrations_take_pdagent_routing_key_when_no_k_is_given(monkeypatch: Any) -> None:
    from pdagent_sd.integrations import nagios, sensu

    argv = ["-n", "host", "-t", "PROBLEM", "-f", "HOSTNAME=web01", "-f", "HOSTSTATE=DOWN"]
    with pytest.raises(SystemExit):  # no -k and no environment: argparse's usage error
        nagios.parser().parse_args(argv)
    monkeypatch.setenv("PDAGENT_ROUTING_KEY", "@nagios")
    assert nagios.event_for(nagios.parser().parse_args(argv))[1]["routing_key"] == "@nagios"
    assert sensu.parser().parse_args([]).routing_key == "@nagios"
    assert nagios.parser().parse_args(["-k", "@other", *argv]).routing_key == "@other"  # -k wins


# --- the real daemon ------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_pd_send_with_a_name_delivers_the_real_key(make_agent: Any, standin: StandIn, tmp_path: Any) -> None:
    agent = make_agent(start=False)
    write_keys(agent, f"[Keys]\nops = {KEY_A}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "key.db").write_text(KEY_B)
    agent.env["CREDENTIALS_DIRECTORY"] = str(creds)
    agent.start()
    sent = agent.pd_send("-k", "@ops", "-t", "trigger", "-d", "disk full", "-i", DEDUP)
    assert sent.returncode == 0, sent.stderr
    by_env = subprocess.run(
        [agent.python, "-m", "pdagent_sd.cli.send", "-t", "resolve", "-i", DEDUP],
        env={**agent.env, "PDAGENT_ROUTING_KEY": "@ops"}, capture_output=True, text=True, timeout=30)
    assert by_env.returncode == 0, by_env.stderr
    by_credential = agent.pd_send("-k", "@db", "-t", "trigger", "-d", "from a credential")
    assert by_credential.returncode == 0, by_credential.stderr
    nagios = agent.client("pdagent_sd.integrations.nagios", "-k", "@ops", "-n", "host", "-t", "PROBLEM",
                          "-f", "HOSTNAME=web01", "-f", "HOSTSTATE=DOWN")
    assert nagios.returncode == 0, nagios.stderr
    zabbix = agent.client("pdagent_sd.integrations.zabbix", "@db", "trigger",
                          "name:Disk full\nid:13502\nstatus:PROBLEM\nhostname:db01\nseverity:High")
    assert zabbix.returncode == 0, zabbix.stderr
    sensu = agent.client("pdagent_sd.integrations.sensu", "-k", "@ops", stdin=json.dumps(
        {"client": {"name": "web01"}, "check": {"name": "http", "status": 2, "output": "down"}, "action": "create"}))
    assert sensu.returncode == 0, sensu.stderr
    assert standin.wait_for(6, timeout=15), agent.log()
    assert [body["event_action"] for body in standin.bodies(KEY_A)] == ["trigger", "resolve", "trigger", "trigger"]
    assert len(standin.bodies(KEY_B)) == 2
    assert "@" not in json.dumps(standin.bodies())  # no name reached the API
    listed = agent.request({"op": "list", "routing_key": "@ops"})  # pd-queue -k @name works as well
    assert {row["routing_key"] for row in listed["events"]} == {KEY_A} and len(listed["events"]) == 4

    missing = agent.pd_send("-k", "@nope", "-t", "trigger", "-d", "x")
    assert missing.returncode == 65 and "@nope is not a configured key name" in missing.stderr
    assert KEY_A not in missing.stderr + missing.stdout and KEY_B not in missing.stderr
    no_key = subprocess.run([agent.python, "-m", "pdagent_sd.cli.send", "-t", "trigger", "-d", "x"],
                            env=agent.env, capture_output=True, text=True, timeout=30)
    assert no_key.returncode == 2 and "PDAGENT_ROUTING_KEY" in no_key.stderr
    assert KEY_A not in agent.log() and KEY_B not in agent.log()


@pytest.mark.integration
def test_a_bad_key_in_the_configuration_stops_the_daemon_naming_file_and_name(make_agent: Any) -> None:
    agent = make_agent(start=False)
    bad = "a" * 31 + "-"
    write_keys(agent, f"[Keys]\nops = {bad}\n", mode=0o644)
    with pytest.raises(RuntimeError) as caught:
        agent.start(timeout=10)
    assert agent.proc is not None and agent.proc.returncode == 78
    assert "agent.conf [Keys]: the key for @ops is not 32 letters and digits" in str(caught.value)
    assert bad not in agent.log()


@pytest.mark.integration
def test_another_user_pages_by_name_but_never_sees_a_key_or_a_dedup_key(other_user: OtherUser,
                                                                        standin: StandIn) -> None:
    agent = Agent(other_user.workdir, standin.url)
    write_keys(agent, f"[Keys]\nops = {KEY_A}\nshared = {KEY_A} user:{other_user.name}\n")
    agent.start()
    try:
        standin.refuse_connections()  # the events stay pending, to be listed
        assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "root's page", "-i", DEDUP).returncode == 0
        env: Dict[str, str] = {"PDAGENT_SOCKET": agent.socket}
        sent = other_user.run(["-m", "pdagent_sd.cli.send", "-k", "@shared", "-t", "trigger", "-d", "by name"],
                              env=env)
        assert sent.returncode == 0, sent.stderr  # a name granted to the user pages
        for argv in (["status", "--json"], ["list", "--json"], ["list"], ["status"], ["list", "-k", "@shared"]):
            shown = other_user.run(["-m", "pdagent_sd.cli.queue", *argv], env=env)
            assert shown.returncode == 0, (argv, shown.stderr)
            assert KEY_A not in shown.stdout and DEDUP not in shown.stdout, (argv, shown.stdout)
        listed = json.loads(other_user.requests(agent.socket, [{"op": "list"}])[0])["events"]
        assert {row["dedup_key"] for row in listed} >= {mask(DEDUP)} and len(listed) == 2
        # root (an admin) sees the dedup keys whole
        assert DEDUP in {row["dedup_key"] for row in agent.request({"op": "list"})["events"]}
        assert stat.S_IMODE(os.stat(agent.config).st_mode) == 0o600
        peek = other_user.run(["-c", "open(__import__('sys').argv[1]).read()", agent.config])
        assert peek.returncode != 0 and "PermissionError" in peek.stderr

        # The SocketGroup=/SocketMode=0660 drop-in of docs/security.md, done by hand on this socket: a user
        # outside the group cannot send at all (exit 69, "Permission denied"); a member can.
        os.chown(agent.socket, -1, 0)
        os.chmod(agent.socket, 0o660)
        argv = ["-m", "pdagent_sd.cli.send", "-k", "@shared", "-t", "trigger", "-d", "by name"]
        outside = other_user.run(argv, env=env)
        assert outside.returncode == 69 and "Permission denied" in outside.stderr, outside.stderr
        assert other_user.run(argv, env=env, extra_groups=[0]).returncode == 0
    finally:
        agent.stop()


@pytest.mark.integration
def test_another_user_cannot_use_a_name_not_granted_to_it(other_user: OtherUser, standin: StandIn) -> None:
    """The attack of issue 18: any local user paged, or resolved root's incident, through `-k @systemd`. Now
    a name is refused (77, naming the name and never the key) unless its entry grants it to the user or to a
    group of the user; the key's owner (root here, trusted) goes on using it."""
    agent = Agent(other_user.workdir, standin.url)
    write_keys(agent, f"[Keys]\nsystemd = {KEY_A}\nnagios = {KEY_B} user:{other_user.name}\n"
                      f"team = {KEY_B} group:4\n")
    agent.start()
    try:
        env: Dict[str, str] = {"PDAGENT_SOCKET": agent.socket}
        assert agent.pd_send("-k", "@systemd", "-t", "trigger", "-d", "nginx failed", "-i", DEDUP).returncode == 0
        for argv in (["-k", "@systemd", "-t", "resolve", "-i", DEDUP],
                     ["-k", "@systemd", "-t", "trigger", "-d", "planned maintenance", "-i", DEDUP],
                     ["-k", "@team", "-t", "trigger", "-d", "not in group 4 (adm)"]):
            refused = other_user.run(["-m", "pdagent_sd.cli.send", *argv], env=env)
            assert refused.returncode == 77, (argv, refused.returncode, refused.stderr)
            assert argv[1] in refused.stderr and "may not use" in refused.stderr, refused.stderr
            assert KEY_A not in refused.stderr + refused.stdout and KEY_B not in refused.stderr
        listed = other_user.run(["-m", "pdagent_sd.cli.queue", "list", "-k", "@systemd"], env=env)
        assert listed.returncode == 77 and KEY_A not in listed.stdout + listed.stderr, listed.stderr
        granted = other_user.run(["-m", "pdagent_sd.cli.send", "-k", "@nagios", "-t", "trigger", "-d", "web01"],
                                 env=env)
        assert granted.returncode == 0, granted.stderr
        by_group = other_user.run(["-m", "pdagent_sd.cli.send", "-k", "@team", "-t", "trigger", "-d", "adm"],
                                  env=env, extra_groups=[4])
        assert by_group.returncode == 0, by_group.stderr
        assert standin.wait_for(3, timeout=15), agent.log()
        assert [body["event_action"] for body in standin.bodies(KEY_A)] == ["trigger"]  # root's page alone
        assert KEY_A not in agent.log() and KEY_B not in agent.log()
    finally:
        agent.stop()
