"""Command lines of the old agent (pdagent 1.7 `pd-send`, pdagent-integrations 1.6 `pd-nagios`, `pd-zabbix`,
`pd-sensu`) keep their meaning with ours.

The old tools parsed their options with argparse. Their option sets are recorded below as facts (names, dests,
choices, which are required); a differential property test generates command lines over them and parses each
with ours and with an argparse parser declared here from those facts: the same values, or both refuse. Golden
tests pin the cases the issue names; integration tests run the commands against the real daemon and stand-in.

120 examples a command in `make test`, 3000 under RELIABILITY_FULL=1; CLI_COMPAT_EXAMPLES=N sets it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdagent_sd.cli import send
from pdagent_sd.cli.common import UsageError, redact, run
from pdagent_sd.cmdline import text_args
from pdagent_sd.integrations import nagios, sensu, zabbix
from pdagent_sd.integrations.common import parse_args
from pdagent_sd.keys import mask

unit = pytest.mark.unit
integration = pytest.mark.integration

FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")
EXAMPLES = int(os.environ.get("CLI_COMPAT_EXAMPLES", "0") or 0) or (3000 if FULL else 120)
PROFILE = settings(max_examples=EXAMPLES, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

KEY = "0123456789abcdef0123456789abcdef"


# --- the old tools' options, as facts --------------------------------------------------------------------------

class Old(NamedTuple):
    """One option of an old tool: its flags, where argparse stored it, and how it took its value."""

    short: str
    long: str
    dest: str
    kind: str = "value"  # "value", "append" or "flag"
    choices: Optional[Tuple[str, ...]] = None
    required: bool = False


# pdagent 1.7 bin/pd-send.py: every option also had its short form; -t was required with three choices.
OLD_PD_SEND = (
    Old("-k", "--service-key", "service_key", required=True),
    Old("-t", "--event-type", "event_type", choices=("trigger", "acknowledge", "resolve"), required=True),
    Old("-d", "--description", "description"),
    Old("-i", "--incident-key", "incident_key"),
    Old("-c", "--client", "client"),
    Old("-u", "--client-url", "client_url"),
    Old("-f", "--field", "fields", kind="append"),
    Old("-q", "--quiet", "quiet", kind="flag"),
)
# pdagent-integrations 1.6 bin/pd-nagios: -t took only these three notification types, -n host or service.
OLD_PD_NAGIOS = (
    Old("-k", "--service-key", "service_key", required=True),
    Old("-t", "--event-type", "event_type", choices=("PROBLEM", "ACKNOWLEDGEMENT", "RECOVERY"), required=True),
    Old("-i", "--incident-key", "incident_key"),
    Old("-f", "--field", "fields", kind="append"),
    Old("-n", "--notification-type", "notification_type", choices=("service", "host"), required=True),
)
# pdagent-integrations 1.6 bin/pd-sensu.
OLD_PD_SENSU = (
    Old("-k", "--integration-key", "integration_key", required=True),
    Old("-i", "--incident-key", "incident_key"),
)
# The old pd-send refused, with argparse's exit status 2, a trigger without a (non-blank) description and an
# acknowledge or resolve without an incident key. pd-zabbix had no options: argv[1..3], anything after ignored.
OLD_USAGE_EXIT = 2


def old_parser(options: Tuple[Old, ...]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="old")
    for option in options:
        keywords: Dict[str, Any] = {"dest": option.dest}
        if option.kind == "flag":
            keywords["action"] = "store_true"
        else:
            keywords.update(choices=option.choices, required=option.required)
            if option.kind == "append":
                keywords["action"] = "append"
        parser.add_argument(option.short, option.long, **keywords)
    return parser


def refused(parse: Callable[[], Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """What parse returns, or None if it refuses (argparse's exit 2 or a usage error)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return parse()
    except SystemExit as exit_:
        assert exit_.code == OLD_USAGE_EXIT
        return None
    except UsageError:
        return None


# --- what the old tools made of an argv, and what ours make of it -----------------------------------------------

def old_pd_send(argv: List[str]) -> Dict[str, Any]:
    parser = old_parser(OLD_PD_SEND)
    args = parser.parse_args(argv)
    if args.event_type == "trigger" and not (args.description and args.description.strip()):
        parser.error("trigger needs a description")
    if args.event_type != "trigger" and not args.incident_key:
        parser.error("needs an incident key")
    return dict(vars(args), fields=args.fields or [])


def new_pd_send(argv: List[str]) -> Dict[str, Any]:
    args = send.COMMAND.parse(argv)
    if send.usage_problem(args):
        raise UsageError(str(send.usage_problem(args)))
    return {"service_key": args.key, "event_type": args.event_type, "description": args.description,
            "incident_key": args.incident_key, "client": args.client, "client_url": args.client_url,
            "fields": args.field, "quiet": args.quiet}


def old_pd_nagios(argv: List[str]) -> Dict[str, Any]:
    args = old_parser(OLD_PD_NAGIOS).parse_args(argv)
    return dict(vars(args), fields=args.fields or [])


def new_pd_nagios(argv: List[str]) -> Dict[str, Any]:
    args = parse_args(nagios.parser(), argv, nagios.LEGACY_OPTIONS)
    nagios.action_for(args.notification_type.strip().upper(), "CRITICAL")  # an unknown type: UsageError
    return {"service_key": args.routing_key, "event_type": args.notification_type,
            "incident_key": args.incident_key, "fields": args.field, "notification_type": args.object_type}


def old_pd_sensu(argv: List[str]) -> Dict[str, Any]:
    return vars(old_parser(OLD_PD_SENSU).parse_args(argv))


def new_pd_sensu(argv: List[str]) -> Dict[str, Any]:
    args = parse_args(sensu.parser(), argv, sensu.LEGACY_OPTIONS)
    return {"integration_key": args.routing_key, "incident_key": args.incident_key}


# --- generated command lines ------------------------------------------------------------------------------------

# Values, dash-led ones included where every argparse from Python 3.9 to 3.13 reads them alike: a negative
# number or a word with a space that names no option is a value, "-x" and "-q w" are options.
plain_value = st.one_of(
    st.sampled_from(["trigger", "acknowledge", "resolve", "PROBLEM", "ACKNOWLEDGEMENT", "RECOVERY", "service",
                     "host", "bogus", KEY, "db01/disk", "a=b", "SERVICESTATE=CRITICAL", "=v", "x", "", " ", "é",
                     "-", "-5", "-1.5", "-.5", "-x", "-q", "-k", "-q w", "-z w", "--x", "--de", "a b"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8)
    .filter(lambda text: not text.startswith("-")),
)


def long_spelling(option: Old, draw: Any) -> str:
    """The long name, or a prefix of it (which may be ambiguous among the old names: then both refuse)."""
    length = draw(st.integers(min_value=3, max_value=len(option.long)))
    return option.long[:length]


@st.composite
def command_line(draw: Any, options: Tuple[Old, ...]) -> List[str]:
    argv: List[str] = []
    for _ in range(draw(st.integers(min_value=0, max_value=7))):
        kind = draw(st.sampled_from(["option", "option", "option", "cluster", "stray"]))
        if kind == "stray":
            argv.append(draw(st.sampled_from(["stray", "-z", "--zzz", KEY])))
            continue
        if kind == "cluster":  # flags, then one more option in the same word: -qq, -qk VALUE, -qkVALUE
            flags = [option for option in options if option.kind == "flag"]
            if not flags:
                continue
            last = draw(st.sampled_from(options))
            word = "-" + flags[0].short[1] * draw(st.integers(1, 2)) + last.short[1]
            if last.kind == "flag":
                argv.append(word)
            else:
                # No "=" straight after a cluster (-qk=V): Python 3.12+ drops it from the value, older versions
                # and the old agent's own argparse kept it. The golden test below pins ours (the old agent's).
                value = draw(plain_value.filter(lambda text: not text.startswith("=")))
                argv.extend([word + value] if value and draw(st.booleans()) else [word, value])
            continue
        option = draw(st.sampled_from(options))
        if option.kind == "flag":
            argv.append(draw(st.sampled_from([option.short, option.long, long_spelling(option, draw)])))
            continue
        value = draw(plain_value)
        spelling = draw(st.sampled_from(["-X V", "-XV", "-X=V", "--long V", "--long=V"]))
        name = option.short if spelling.startswith("-X") else long_spelling(option, draw)
        if spelling in ("-X V", "--long V"):
            argv.extend([name, value])
        elif spelling == "-XV":
            argv.append(name + value)
        else:
            argv.append(f"{name}={value}")
    return argv


def _same_or_both_refuse(old: Callable[[List[str]], Dict[str, Any]], new: Callable[[List[str]], Dict[str, Any]],
                         argv: List[str]) -> None:
    expected = refused(lambda: old(argv))
    got = refused(lambda: new(argv))
    assert got == expected, f"argv {argv!r}: the old tool read {expected!r}, ours {got!r}"


@unit
@PROFILE
@given(command_line(OLD_PD_SEND))
def test_pd_send_reads_every_command_line_as_the_old_one_did(argv: List[str]) -> None:
    _same_or_both_refuse(old_pd_send, new_pd_send, argv)


@unit
@PROFILE
@given(command_line(OLD_PD_NAGIOS))
def test_pd_nagios_reads_every_command_line_as_the_old_one_did(argv: List[str]) -> None:
    _same_or_both_refuse(old_pd_nagios, new_pd_nagios, argv)


@unit
@PROFILE
@given(command_line(OLD_PD_SENSU))
def test_pd_sensu_reads_every_command_line_as_the_old_one_did(argv: List[str]) -> None:
    _same_or_both_refuse(old_pd_sensu, new_pd_sensu, argv)


# --- golden cases -----------------------------------------------------------------------------------------------

@unit
@pytest.mark.parametrize("argv, field, value", [
    (["-k", KEY, "-t", "resolve", "-i=db01/disk"], "incident_key", "db01/disk"),
    (["-k", KEY, "-t", "trigger", "-d=text"], "description", "text"),
    ([f"-k={KEY}", "-t", "resolve", "-i", "x"], "key", KEY),
    (["-k", KEY, "-t", "trigger", "-d", "x", "-f=name=value"], "field", ["name=value"]),
    (["-k", KEY, "-tresolve", "-idb01/disk"], "incident_key", "db01/disk"),
    (["--service-key", KEY, "--event-type=resolve", "--incident-key=db01"], "incident_key", "db01"),
    (["-qk", KEY, "-t", "resolve", "-i", "x"], "quiet", True),
    (["-k", KEY, "-qtresolve", "-i", "x"], "event_type", "resolve"),
    # Prefixes unique among the old pd-send's options mean them, though --debug, --image, --socket, --severity
    # and --source have come since.
    (["-k", KEY, "-t", "trigger", "--d", "disk full"], "description", "disk full"),
    (["-k", KEY, "-t", "resolve", "--i", "db01"], "incident_key", "db01"),
    (["--s", KEY, "-t", "resolve", "-i", "x"], "key", KEY),
    (["--se", KEY, "-t", "resolve", "-i", "x"], "key", KEY),
    (["--se=" + KEY, "-t", "resolve", "-i", "x"], "key", KEY),
    # Options only ours have still take their own unique prefixes.
    (["-k", KEY, "-t", "trigger", "-d", "x", "--sev", "info"], "severity", "info"),
    # An empty key given is a key given (the old one queued it; ours the daemon refuses, exit 65).
    (["-k", "", "-t", "resolve", "-i", "x"], "key", ""),
    # The old agent's argparse kept the "=" after a cluster of flags (Python 3.12+ would drop it): so do we.
    (["-qi=x", "-k", KEY, "-t", "resolve"], "incident_key", "=x"),
])
def test_pd_send_reads_what_the_old_one_read(argv: List[str], field: str, value: Any) -> None:
    assert getattr(send.COMMAND.parse(argv), field) == value


@unit
@pytest.mark.parametrize("prefix, dest, value", [
    ("--s", "routing_key", KEY), ("--n", "object_type", "host"), ("--i", "incident_key", "x"),
    ("--e", "notification_type", "RECOVERY"),
])
def test_pd_nagios_reads_the_old_prefixes(prefix: str, dest: str, value: str) -> None:
    argv = {"routing_key": ["-k", KEY], "object_type": ["-n", "host"], "incident_key": ["-i", "x"],
            "notification_type": ["-t", "RECOVERY"]}
    argv[dest] = [prefix, value]
    args = parse_args(nagios.parser(), [word for pair in argv.values() for word in pair], nagios.LEGACY_OPTIONS)
    assert getattr(args, dest) == value


@unit
@pytest.mark.parametrize("argv, message", [
    (["-k", KEY, "-t", "trigger"], "a trigger needs -d/--description"),
    (["-k", KEY, "-t", "trigger", "-d", "  "], "a trigger needs -d/--description"),
    (["-k", KEY, "-t", "resolve"], "-t resolve needs -i/--incident-key"),
    (["-k", KEY, "-t", "acknowledge", "-d", "x"], "-t acknowledge needs -i/--incident-key"),
    (["-k", KEY, "-t", "acknowledge", "-i", ""], "-t acknowledge needs -i/--incident-key"),
    (["-k", KEY, "-d", "x"], "-t/--event-type is required"),
    (["-k", KEY, "--d", "x", "--debu"], "-t/--event-type is required"),
])
def test_usage_errors_of_the_old_pd_send_exit_2(argv: List[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert send.main(argv + ["--socket", "/nonexistent/pdagent.sock"]) == OLD_USAGE_EXIT
    err = capsys.readouterr().err
    assert f"pd-send: error: {message}" in err
    assert KEY not in err


@unit
@pytest.mark.parametrize("main, argv", [
    (send.main, [KEY, "-t", "trigger", "-d", "x"]),  # -k forgotten: argparse names the stray key
    (send.main, ["-k", KEY, "-t", "trigger", "-d", "x", "-f", KEY]),  # not KEY=VALUE
    (nagios.main, ["-k", KEY, "-t", "PROBLEM", "-n", "host", KEY]),
    (sensu.main, ["-k", KEY, KEY]),
    (zabbix.main, ["trigger", KEY]),
])
def test_usage_errors_never_print_a_routing_key_whole(main: Callable[[List[str]], int], argv: List[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = main(argv + ["--socket", "/nonexistent/pdagent.sock"])
    except SystemExit as exit_:  # argparse's own errors exit from inside main
        status = exit_.code  # type: ignore[assignment]
    assert status == OLD_USAGE_EXIT
    err = capsys.readouterr().err
    assert KEY not in err and "error" in err
    assert mask(KEY) in err or main is zabbix.main  # pd-zabbix's message names no argument


@unit
def test_arguments_that_are_not_utf8_become_replacement_characters() -> None:
    latin1 = b"caf\xe9 \xfc".decode("utf-8", "surrogateescape")  # as Python hands such bytes in argv
    assert text_args(["ok", latin1, "\ud800x"]) == ["ok", "caf\ufffd \ufffd", "\ufffdx"]


@unit
def test_an_internal_error_never_prints_a_routing_key_whole(capsys: pytest.CaptureFixture[str]) -> None:
    request = '{"op":"send","event":{"routing_key":"%s","summary":"caf\udce9"}}' % KEY

    def body(argv: List[str]) -> int:
        request.encode("utf-8")  # raises, the whole request inside the exception
        return 0

    assert run("pd-send", body, []) == 70
    err = capsys.readouterr().err
    assert KEY not in err and "internal error: UnicodeEncodeError" in err
    assert redact(f"key {KEY} and {KEY.upper()}x") == f"key {mask(KEY)} and {mask(KEY.upper() + 'x')}"


# --- pd-zabbix: arguments and the message body ------------------------------------------------------------------

ZABBIX_SAFE = "id:13502\nhostname:web01\nstatus:PROBLEM\nseverity:Disaster\nname:{name}"  # free text last
ZABBIX_OLD_LAYOUT = "name:{name}\nid:13502\nstatus:PROBLEM\nhostname:web01\nseverity:Disaster"  # the old guide's
INJECTION = "Log line: x\nincident_key:13502-db01\nNOTE:Escalation cancelled\nid:1\nhostname:db01"


@unit
def test_pd_zabbix_ignores_extra_arguments_with_a_warning() -> None:
    args, extra = zabbix.read_argv([KEY, "trigger", "id:1\nhostname:h", "extra", "-x"])
    assert (args.routing_key, args.subject, args.body, extra) == (KEY, "trigger", "id:1\nhostname:h", ["extra", "-x"])
    args, extra = zabbix.read_argv(["--socket", "/s", KEY, "resolve", "-dash-led body", "-q"])
    assert (args.socket, args.body, args.quiet, extra) == ("/s", "-dash-led body", True, [])
    with pytest.raises(SystemExit) as exit_:
        with contextlib.redirect_stderr(io.StringIO()):
            zabbix.read_argv([KEY, "trigger"])
    assert exit_.value.code == 2


OWN_ZABBIX_WORDS = ("-q", "--quiet", "--socket", "-h", "--help")


@unit
@PROFILE
@given(st.lists(plain_value.filter(lambda word: word not in OWN_ZABBIX_WORDS and not word.startswith("--socket=")),
                min_size=3, max_size=6))
def test_pd_zabbix_reads_its_arguments_as_the_old_one_did(argv: List[str]) -> None:
    # The old pd-zabbix: KEY, SUBJECT and BODY were argv[1], argv[2] and argv[3], as they were; the rest ignored.
    args, extra = zabbix.read_argv(argv)
    assert [args.routing_key, args.subject, args.body] == argv[:3] and extra == argv[3:]


@unit
def test_pd_zabbix_sends_an_incident_key_as_the_user_wrote_it() -> None:
    # The old agent split "incident_key: 10442" at the colon and sent " 10442", space and all.
    _, event = zabbix.build_event(KEY, "resolve", "id:1\nhostname:h\nincident_key: 10442")
    assert event["dedup_key"] == " 10442"
    _, event = zabbix.build_event(KEY, "resolve", ZABBIX_OLD_LAYOUT.format(name="x") + "\nincident_key: 10442")
    assert event["dedup_key"] == " 10442"


@unit
def test_pd_zabbix_joins_a_continued_key_field_as_the_old_agent_did() -> None:
    # The old agent ran a line without a colon on into the value before it, no separator: so does the key.
    _, event = zabbix.build_event(KEY, "resolve", "id:1\nhostname:h\nincident_key:db01\n/disk\nname:x\ny")
    assert event["dedup_key"] == "db01/disk"
    _, event = zabbix.build_event(KEY, "trigger", "id:1\nhostname:web\n01\nname:Disk\nfull")
    assert event["dedup_key"] == "1-web01"
    assert event["payload"]["custom_details"]["name"] == "Disk\nfull"  # shown as lines


@unit
def test_text_inside_a_value_cannot_set_the_key_or_resolve_with_the_shipped_template() -> None:
    api, event = zabbix.build_event(KEY, "trigger", ZABBIX_SAFE.format(name=INJECTION))
    assert (event["event_action"], event["dedup_key"]) == ("trigger", "13502-web01")
    assert event["payload"]["severity"] == "critical" and event["payload"]["source"] == "web01"
    details = event["payload"]["custom_details"]
    assert details["name"] == INJECTION and "incident_key" not in details and "NOTE" not in details
    assert len(zabbix.read_body(ZABBIX_SAFE.format(name=INJECTION)).warnings) == 4


@unit
def test_text_inside_a_value_cannot_resolve_with_the_old_layout() -> None:
    # The old guide's layout (name first) is read as the old agent read it: its own id and hostname lines come
    # after the name and win. The escalation-cancelled marker counts only as the first line, where Zabbix puts it.
    _, event = zabbix.build_event(KEY, "trigger", ZABBIX_OLD_LAYOUT.format(name="x\nNOTE:Escalation cancelled\nid:1"))
    assert (event["event_action"], event["dedup_key"]) == ("trigger", "13502-web01")


@unit
def test_zabbix_escalation_cancelled_still_resolves_from_the_first_line() -> None:
    note = 'NOTE: Escalation cancelled: host "web01" disabled.\n'
    for body in (ZABBIX_SAFE, ZABBIX_OLD_LAYOUT):
        _, event = zabbix.build_event(KEY, "trigger", note + body.format(name="Disk full"))
        assert (event["event_action"], event["dedup_key"]) == ("resolve", "13502-web01")


def old_pd_zabbix_key(body: str) -> str:
    """The dedup key the old pd-zabbix made of a message body, from these facts: it split the body on "\\n",
    stripped each line and split it at its first colon into name and value; a line without a colon ran on into
    the value before it, with no separator; the last line of each name won; the key was incident_key when
    present and not empty, else "<id>-<hostname>"."""
    fields: Dict[str, str] = {}
    last = ""
    for line in body.strip().split("\n"):
        line = line.strip()
        head, colon, value = line.partition(":")
        if colon and head.strip():
            last = head.strip()
            fields[last] = value
        elif line and last:
            fields[last] += line
    return fields.get("incident_key") or f"{fields['id']}-{fields['hostname']}"


# Every shipped and every old-guide template, with the values Zabbix fills in, {name} left for the trigger name;
# each also with an incident_key line where its guide says to add one (the shipped: first; the old: last).
SHIPPED_ZABBIX = "\n".join(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                             "integrations", "zabbix", "README"), encoding="utf-8").read()
                           .split("Default message:", 1)[1].split("\n\n", 1)[0].split())
ZABBIX_TEMPLATES = [
    ZABBIX_SAFE,
    ZABBIX_OLD_LAYOUT,
    "name:{name}\nid:13502\nstatus:PROBLEM\nhostname:Zabbix server\nip:127.0.0.1\nvalue:1\nevent_id:70\n"
    "severity:High",  # the old guide's full message
    SHIPPED_ZABBIX.replace("{TRIGGER.NAME}", "{name}").replace("{TRIGGER.ID}", "7").replace("{HOSTNAME}", "w"),
]
ZABBIX_TEMPLATES += ["incident_key:event-70\n" + ZABBIX_TEMPLATES[0], ZABBIX_TEMPLATES[1] + "\nincident_key:event-70",
                     ZABBIX_TEMPLATES[2] + "\nincident_key: 70"]
FIELD_NAMES = ["id", "hostname", "incident_key", " incident_key ", "NOTE", "name", "status", "Log line", "x"]
trigger_name = st.lists(st.one_of(st.text(max_size=15).map(lambda text: text.replace(":", "")),
                                  st.builds(lambda name, value: f"{name}:{value}", st.sampled_from(FIELD_NAMES),
                                            st.text(max_size=15))), max_size=5).map("\n".join)


def _benign(name: str) -> bool:
    """A trigger name no line of which names a field that decides the key or the action."""
    return all(line.partition(":")[0].strip() not in ("id", "hostname", "incident_key", "NOTE")
               for line in name.split("\n"))


def _own_key(template: str) -> str:
    return old_pd_zabbix_key(template.replace("{name}", "x"))


@unit
@PROFILE
@given(st.sampled_from(ZABBIX_TEMPLATES), trigger_name.filter(_benign))
def test_pd_zabbix_makes_the_old_agents_key_of_every_template(template: str, name: str) -> None:
    body = template.replace("{name}", name)
    assert zabbix.build_event(KEY, "trigger", body)[1]["dedup_key"] == old_pd_zabbix_key(body)


@unit
@PROFILE
@given(st.sampled_from(ZABBIX_TEMPLATES), st.one_of(trigger_name, st.just(INJECTION), st.text(max_size=40)))
def test_no_trigger_name_changes_the_key_of_any_template(template: str, name: str) -> None:
    # The old agent read incident_key from inside a name-first body (the hostile case of issue 18: a Disaster
    # for web01 filed under db01's open incident); ours reads only the template's own lines, in every layout.
    _, event = zabbix.build_event(KEY, "trigger", template.replace("{name}", name))
    assert event["dedup_key"] == _own_key(template)


@unit
def test_an_incident_key_inside_a_name_first_body_is_text_with_a_warning() -> None:
    body = ZABBIX_OLD_LAYOUT.format(name=INJECTION)
    assert old_pd_zabbix_key(body) == "13502-db01", "the old agent was redirected"
    read = zabbix.read_body(body)
    _, event = zabbix.event_from(KEY, "trigger", read)
    assert (event["event_action"], event["dedup_key"]) == ("trigger", "13502-web01")
    assert event["payload"]["severity"] == "critical" and event["payload"]["source"] == "web01"
    assert "incident_key" not in event["payload"]["custom_details"]
    assert [warning for warning in read.warnings if "'incident_key:' before" in warning], read.warnings


@unit
def test_the_shipped_zabbix_template_puts_free_text_last() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "integrations", "zabbix", "README"), encoding="utf-8") as handle:
        readme = handle.read()
    message = readme.split("Default message:", 1)[1].split("\n\n", 1)[0].split()
    assert message[:2] == ["id:{TRIGGER.ID}", "hostname:{HOSTNAME}"]
    assert message[-1] == "name:{TRIGGER.NAME}"
    body = "\n".join(message).replace("{TRIGGER.NAME}", INJECTION)
    _, event = zabbix.build_event(KEY, "trigger", body.replace("{TRIGGER.ID}", "7").replace("{HOSTNAME}", "w"))
    assert (event["event_action"], event["dedup_key"]) == ("trigger", "7-w")


# --- against the real daemon ------------------------------------------------------------------------------------

def _run(agent: Any, module: str, *argv: bytes, stdin: bytes = b"") -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([agent.python.encode(), b"-m", module.encode(), *argv], env=agent.env, input=stdin,
                          capture_output=True, timeout=30)


@pytest.mark.interpreters
@integration
def test_a_resolve_written_dash_i_equals_resolves_the_incident(agent: Any, standin: Any) -> None:
    key = "a" * 16 + "0123456789abcdef"
    trigger = _run(agent, "pdagent_sd.cli.send", b"-k", key.encode(), b"-t", b"trigger", b"-d", b"disk full",
                   b"-i", b"db01/disk")
    resolve = _run(agent, "pdagent_sd.cli.send", b"-k", key.encode(), b"-t", b"resolve", b"-i=db01/disk")
    for result in (trigger, resolve):
        assert (result.returncode, result.stderr) == (0, b"")
        assert result.stdout == b"Event processed. Incident Key: db01/disk\n"
    assert standin.wait_for(2, timeout=15)
    assert [(body["event_action"], body["dedup_key"]) for body in standin.bodies(key)] == [
        ("trigger", "db01/disk"), ("resolve", "db01/disk")]


@pytest.mark.interpreters
@integration
def test_arguments_in_latin1_page_and_exit_0(agent: Any, standin: Any) -> None:
    key = "b" * 16 + "0123456789abcdef"
    runs = [
        _run(agent, "pdagent_sd.cli.send", b"-k", key.encode(), b"-t", b"trigger", b"-d", b"Disk caf\xe9 full",
             b"-i", b"latin1-send", b"-f", b"mount=/caf\xe9"),
        _run(agent, "pdagent_sd.integrations.nagios", b"-k", key.encode(), b"-n", b"host", b"-t", b"PROBLEM",
             b"-f", b"HOSTNAME=h\xe9", b"-f", b"HOSTSTATE=DOWN", b"-f", b"HOSTOUTPUT=ping \xfc"),
        _run(agent, "pdagent_sd.integrations.zabbix", key.encode(), b"trigger",
             b"id:1\nhostname:z\xe9\nname:caf\xe9", b"extra argument"),
        _run(agent, "pdagent_sd.integrations.sensu", b"-k", key.encode(),
             stdin=b'{"client":{"name":"s"},"check":{"name":"c","output":"caf\xe9","status":2},"action":"create"}'),
    ]
    for result in runs:
        assert result.returncode == 0, result.stderr
        assert key.encode() not in result.stderr
    assert runs[2].stderr == (b"pd-zabbix: warning: 1 argument after KEY SUBJECT BODY ignored "
                              b"(as the old pd-zabbix did)\n")
    assert standin.wait_for(4, timeout=15)
    bodies = {body["dedup_key"]: body for body in standin.bodies(key)}
    assert bodies["latin1-send"]["payload"]["summary"] == "Disk caf\ufffd full"
    assert bodies["latin1-send"]["payload"]["custom_details"] == {"mount": "/caf\ufffd"}
    assert bodies["event_source=host;host_name=h\ufffd"]["payload"]["summary"] == "h\ufffd is DOWN: ping \ufffd"
    assert bodies["1-z\ufffd"]["payload"]["custom_details"]["name"] == "caf\ufffd"
    assert bodies["s/c"]["payload"]["summary"] == "s/c : caf\ufffd"


@pytest.mark.interpreters
@integration
def test_zabbix_field_injection_does_not_resolve_another_hosts_incident(agent: Any, standin: Any) -> None:
    key = "c" * 16 + "0123456789abcdef"
    message = ZABBIX_SAFE.format(name="Log: " + INJECTION)
    result = _run(agent, "pdagent_sd.integrations.zabbix", key.encode(), b"trigger", message.encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Event processed. Incident Key: 13502-web01\n"
    assert b"'incident_key:' after the leading fields is read as text of 'name:'" in result.stderr
    assert standin.wait_for(1, timeout=15)
    [body] = standin.bodies(key)
    assert (body["event_action"], body["dedup_key"], body["payload"]["severity"]) == ("trigger", "13502-web01",
                                                                                      "critical")


# --- the fast parser and its own argparse fallback ----------------------------------------------------------------

@st.composite
def pd_send_command_line(draw: Any) -> List[str]:
    """Command lines over all of pd-send's options, the newer ones too, in every spelling argparse takes."""
    argv: List[str] = []
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        option = draw(st.sampled_from(list(send.COMMAND.options)))
        flag = draw(st.sampled_from(option.flags))
        if option.kind == "flag":
            argv.append(flag if flag != "-q" else "-" + "q" * draw(st.integers(1, 3)))
            continue
        value = draw(st.one_of(plain_value, st.sampled_from(option.choices or ("x",))))
        if flag.startswith("--"):
            argv.extend(draw(st.sampled_from([[flag, value], [f"{flag}={value}"]])))
        else:
            # -q clustered before the option: the value not "="-led (there Python 3.12+ differs, see above).
            cluster = ["-q" + flag[1], value] if value.startswith("=") else ["-q" + flag[1] + value]
            argv.extend(draw(st.sampled_from([[flag, value], [f"{flag}={value}"], [flag + value], cluster])))
    return argv


@unit
@PROFILE
@given(pd_send_command_line())
def test_the_fast_parser_reads_as_argparse_does_or_hands_over(argv: List[str]) -> None:
    # Whatever the fast parser reads itself, argparse built from the same table reads alike; the rest it hands
    # to argparse (so pd-send's meaning never depends on which of the two read the command line).
    fast = send.COMMAND._fast_parse(argv)
    if fast is not None:
        assert fast == refused(lambda: vars(send.COMMAND.argparser().parse_args(argv)))


@pytest.mark.interpreters
@integration
def test_a_routing_key_from_the_environment_in_latin1_is_refused_as_invalid_not_a_crash(agent: Any) -> None:
    env_bytes = {key.encode(): value.encode() for key, value in agent.env.items()}
    env_bytes[b"PDAGENT_ROUTING_KEY"] = b"caf\xe9"  # Latin-1: not UTF-8
    result = subprocess.run([agent.python.encode(), b"-m", b"pdagent_sd.cli.send", b"-t", b"trigger", b"-d", b"x"],
                            env=env_bytes, capture_output=True, timeout=30)
    assert result.returncode == 65, result.stderr
    assert result.stderr.startswith(b"pd-send: routing_key must be 32 letters and digits")
