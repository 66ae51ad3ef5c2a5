"""Configuration: one table of settings from which the INI parser, the environment overrides and the defaults
(and docs/configuration.md) are all built.

Order: built-in defaults, then /etc/pdagent/agent.conf, then agent.conf.d/*.conf in name order, then
PDAGENT_<KEY> environment variables. A bad value stops the daemon with the file and key named.
"""

from __future__ import annotations

import configparser
import dataclasses
import glob
import ipaddress
import logging
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from pdagent_sd import keys as keys_module
from pdagent_sd.errors import ConfigError
from pdagent_sd.keys import KeyBook

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/pdagent/agent.conf"
SECTION = "Agent"
# The alerts about failed units (pd-unit-alert): their settings are rows of the same table, but the daemon ignores
# them, and a bad value there keeps its default (a typo must not cost a page); `pdagentd --check-config` reports it.
UNIT_ALERTS = "UnitAlerts"
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d|w)?\s*$")
UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
                "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    match = DURATION.match(text)
    if not match:
        raise ValueError("expected a duration such as 30, 30s, 5min, 12h or 7d")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected yes or no")


def parse_count(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_positive(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.I)
SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_size(text: str) -> int:
    match = SIZE.match(text)
    if not match:
        raise ValueError("expected a size in bytes such as 1048576, 512K, 256M or 1G")
    return int(match.group(1)) * SIZE_UNITS[(match.group(2) or "")[:1].lower()]


GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")


def parse_groups(text: str) -> str:
    names = text.replace(",", " ").split()
    for name in names:
        if not GROUP_NAME.match(name):
            raise ValueError(f"{name!r} is not a group name")
    return " ".join(names)


def parse_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError("expected an http:// or https:// URL")
    return url


KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)


def parse_key_name(text: str) -> str:
    name = text.strip().lstrip("@")
    if not KEY_NAME.fullmatch(name):
        raise ValueError("expected the name of a key in [Keys]: letters, digits, '_', '.', '-'")
    return name


SEVERITIES = ("critical", "error", "warning", "info")


def parse_severity(text: str) -> str:
    value = text.strip().lower()
    if value not in SEVERITIES:
        raise ValueError(f"expected one of {', '.join(SEVERITIES)}")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    section: str = SECTION


SETTINGS: Tuple[Setting, ...] = (
    Setting("events_url", parse_url, "https://events.pagerduty.com",
            "Base URL of the Events API; EU accounts use https://events.eu.pagerduty.com."),
    Setting("allow_insecure_http", parse_bool, False,
            "Allow a plain http:// events_url that is not on loopback (never needed in production)."),
    Setting("ca_bundle", str, "",
            "CA certificates file for a TLS-inspecting proxy or private CA; empty = the system store."),
    Setting("rate_limit_per_minute", parse_count, 110,
            "Events sent per minute per routing key, just under PagerDuty's ~120; 0 turns the throttle off."),
    Setting("rate_limit_burst", parse_count, 20,
            "Events a routing key may send at once before the per-minute rate applies."),
    Setting("coalesce", parse_bool, True,
            "Skip pending events a later event of the same incident makes redundant, and send first triggers and "
            "resolves before updates (see README, How delivery works); no = strict FIFO per routing key."),
    Setting("max_pending_events", parse_count, 1000000,
            "Pending events the queue holds; past it a send is refused with queue_full (never dropped)."),
    Setting("reserved_pending_events", parse_count, 100000,
            "Part of max_pending_events only trusted senders may fill: root, the service's user, group pdagent "
            "and trusted_groups; other senders are refused with queue_full once the rest is taken."),
    Setting("sender_max_events", parse_count, 100000,
            "Pending and failed events one sender (a uid outside the trusted ones) may have in the queue; "
            "past it that sender's events are refused with queue_full. 0 = no limit."),
    Setting("sender_max_bytes", parse_size, 256 * 1024 ** 2,
            "Bytes of event bodies one sender outside the trusted ones may have stored, pending, failed or "
            "delivered and kept (K, M, G suffixes); past it its events are refused with queue_full. 0 = no limit."),
    Setting("trusted_groups", parse_groups, "",
            "Groups whose members are trusted senders like root and group pdagent (e.g. nagios zabbix): "
            "no per-sender quota, and the reserved queue room and connection slots are theirs too."),
    Setting("max_attempts", parse_count, 0,
            "Attempts before a retryable event is given up as failed; 0 = retry for as long as it takes."),
    Setting("keep_delivered", parse_duration, 7 * 86400.0, "How long delivered events stay in the queue."),
    Setting("keep_failed", parse_duration, 30 * 86400.0, "How long failed events stay in the queue."),
    Setting("idle_exit_sec", parse_duration, 60.0,
            "A socket-activated daemon exits after this long with an empty queue and no client; 0 = never."),
    Setting("backoff_min_sec", parse_positive, 1.0, "Smallest delay before a retry."),
    Setting("backoff_max_sec", parse_positive, 300.0,
            "Largest delay before a retry (exponential, full jitter); also caps a Retry-After."),
    Setting("connect_timeout_sec", parse_positive, 5.0, "Time allowed to connect to the Events API."),
    Setting("request_timeout_sec", parse_positive, 15.0,
            "Time allowed for the Events API to answer. A request left unanswered may still be processed: the "
            "next event of its incident waits until connect_timeout_sec + 2 x this after it was sent."),
    Setting("delivery_workers", parse_count, 8, "Routing keys delivered in parallel."),
    Setting("max_connections", parse_count, 256, "Client connections served at once; more wait."),
    Setting("reserved_connections", parse_count, 64,
            "Part of max_connections only trusted senders may use; other senders are told to come back "
            "(pd-send retries) once the rest is taken."),
    Setting("sender_max_connections", parse_count, 32,
            "Connections one sender outside the trusted ones may hold at once; more are told to come back "
            "(pd-send retries)."),
    Setting("first_line_timeout_sec", parse_positive, 2.0,
            "A client that has not sent a whole request line this long after connecting is closed."),
    Setting("client_timeout_sec", parse_positive, 30.0,
            "A client that has not sent its next whole request line this long after its last reply, or not "
            "read a reply this long, is closed."),
    Setting("watchdog", parse_bool, True, "Send WATCHDOG=1 when systemd asks for it (WatchdogSec=)."),
    Setting("heartbeat_max_per_user", parse_count, 20,
            "Heartbeats (pd-heartbeat) one user outside the trusted ones may have; past it a new one is refused "
            "with queue_full (exit 75). 0 = no limit."),
    Setting("key", parse_key_name, "systemd", "The [Keys] name unit alerts go to.", UNIT_ALERTS),
    Setting("service_severity", parse_severity, "critical", "Severity of an alert about a failed service.",
            UNIT_ALERTS),
    Setting("timer_severity", parse_severity, "error", "Severity of an alert about a service started by a .timer.",
            UNIT_ALERTS),
    Setting("rate_limit_sec", parse_duration, 300.0,
            "At most one trigger per unit in this time while its incident is open.", UNIT_ALERTS),
    Setting("journal_lines", parse_count, 50, "Journal lines of the failed run in the event.", UNIT_ALERTS),
    Setting("stay_up_sec", parse_duration, 10.0,
            "How long a restarted service must stay up to count as recovered.", UNIT_ALERTS),
    Setting("recovery_timeout_sec", parse_duration, 3600.0,
            "How long a new start is watched before giving up (the incident stays open).", UNIT_ALERTS),
)
AGENT_SETTINGS = tuple(setting for setting in SETTINGS if setting.section == SECTION)
SETTINGS_BY_NAME = {setting.name: setting for setting in AGENT_SETTINGS}
UNIT_ALERT_SETTINGS = {setting.name: setting for setting in SETTINGS if setting.section == UNIT_ALERTS}


@dataclass(frozen=True)
class Config:
    events_url: str
    allow_insecure_http: bool
    ca_bundle: str
    rate_limit_per_minute: int
    rate_limit_burst: int
    coalesce: bool
    max_pending_events: int
    reserved_pending_events: int
    sender_max_events: int
    sender_max_bytes: int
    trusted_groups: str
    max_attempts: int
    keep_delivered: float
    keep_failed: float
    idle_exit_sec: float
    backoff_min_sec: float
    backoff_max_sec: float
    connect_timeout_sec: float
    request_timeout_sec: float
    delivery_workers: int
    max_connections: int
    reserved_connections: int
    sender_max_connections: int
    first_line_timeout_sec: float
    client_timeout_sec: float
    watchdog: bool
    heartbeat_max_per_user: int
    keys: KeyBook = field(default_factory=KeyBook)  # named routing keys ([Keys], credentials key.NAME)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class UnitAlertSettings:
    """The [UnitAlerts] section of agent.conf (read by pd-unit-alert, not by the daemon)."""

    key: str = UNIT_ALERT_SETTINGS["key"].default
    service_severity: str = UNIT_ALERT_SETTINGS["service_severity"].default
    timer_severity: str = UNIT_ALERT_SETTINGS["timer_severity"].default
    rate_limit_sec: float = UNIT_ALERT_SETTINGS["rate_limit_sec"].default
    journal_lines: int = UNIT_ALERT_SETTINGS["journal_lines"].default
    stay_up_sec: float = UNIT_ALERT_SETTINGS["stay_up_sec"].default
    recovery_timeout_sec: float = UNIT_ALERT_SETTINGS["recovery_timeout_sec"].default


def config_files(main: str) -> List[str]:
    files = [main] if os.path.exists(main) else []
    return files + sorted(glob.glob(os.path.join(main + ".d", "*.conf")))


def _parse(setting: Setting, raw: str, where: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: bad value {raw!r} for {setting.name}: {exc}") from None


def load(path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Build the Config from defaults, the files and the environment; raise ConfigError naming file and key."""
    env = os.environ if environ is None else environ
    main = path or env.get("PDAGENT_CONFIG") or DEFAULT_CONFIG
    values: Dict[str, Any] = {setting.name: setting.default for setting in AGENT_SETTINGS}
    named: Dict[str, str] = {}
    sources: Dict[str, str] = {}
    grants: Dict[str, keys_module.Grant] = {}
    for filename in config_files(main):
        settings, file_keys = _read_file(filename)
        values.update(settings)
        for name, (key, grant) in file_keys.items():
            named[name], grants[name], sources[name] = key, grant, filename
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials:
        for name, (key, grant), where in keys_module.from_credentials(credentials):
            named[name], grants[name], sources[name] = key, grant, where
    for name, grant in sorted(grants.items()):
        for word in grant.unknown:
            logger.warning("%s: @%s grants %s, which does not exist on this system; it grants nothing",
                           sources[name], name, word)
    for setting in AGENT_SETTINGS:
        raw = env.get("PDAGENT_" + setting.name.upper())
        if raw is not None:
            values[setting.name] = _parse(setting, raw, "environment PDAGENT_" + setting.name.upper())
    if values["backoff_min_sec"] > values["backoff_max_sec"]:
        raise ConfigError("backoff_min_sec must not be larger than backoff_max_sec")
    if values["delivery_workers"] < 1:
        raise ConfigError("delivery_workers must be at least 1")
    if not values["allow_insecure_http"] and not is_safe_url(values["events_url"]):
        raise ConfigError(
            f"events_url {values['events_url']} is plain http:// to a host that is not loopback; "
            "use https://, or set allow_insecure_http = yes if you really mean it",
        )
    return Config(**values, keys=KeyBook(named, sources, grants))


def is_safe_url(url: str) -> bool:
    """https://, or http:// to this machine only (tests and local stand-ins): the host must be localhost or a
    loopback address literal, and nothing may precede it. A prefix test took http://127.0.0.1.nip.io and
    http://127.0.0.1@evil.example, both of which send events in the clear to another machine."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or "@" in parts.netloc:  # userinfo: the real host is after the @
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def _read_file(filename: str) -> Tuple[Dict[str, Any], Dict[str, Tuple[str, keys_module.Grant]]]:
    """The [Agent] settings and the [Keys] of one file."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # key names keep their case
    try:
        with open(filename, encoding="utf-8") as handle:
            parser.read_file(handle)
            mode = os.fstat(handle.fileno()).st_mode
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        # configparser quotes the offending line, which in [Keys] may hold a key: say where, not what
        line = getattr(exc, "lineno", None)
        reason = f"a syntax error at line {line}" if line else getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{filename}: cannot read: {reason}") from None
    values: Dict[str, Any] = {}
    named: Dict[str, Tuple[str, keys_module.Grant]] = {}
    for section in parser.sections():
        if section == keys_module.SECTION:
            for name, raw in parser.items(section):
                named[name] = keys_module.check_entry(name, raw, f"{filename} [{keys_module.SECTION}]")
            continue
        if section == UNIT_ALERTS:
            continue
        if section != SECTION:
            logger.warning("%s: ignoring unknown section [%s]", filename, section)
            continue
        for key, raw in parser.items(section):
            setting = SETTINGS_BY_NAME.get(key.lower())
            if setting is None:
                logger.warning("%s: ignoring unknown key %s in [%s]", filename, key, SECTION)
                continue
            values[setting.name] = _parse(setting, raw, f"{filename} [{SECTION}]")
    if named and mode & stat.S_IROTH:
        logger.warning("%s holds routing keys and every local user can read it: chmod 0640 and chown "
                       "root:pdagent", filename)
    return values, named


def load_unit_alerts(path: Optional[str] = None) -> Tuple[UnitAlertSettings, List[str]]:
    """[UnitAlerts] from agent.conf and agent.conf.d/*.conf; a bad value keeps its default and is reported
    (an alert about a failed unit must not be lost to a typo in the agent's configuration)."""
    main = path or os.environ.get("PDAGENT_CONFIG") or DEFAULT_CONFIG
    values: Dict[str, Any] = {}
    warnings: List[str] = []
    for filename in config_files(main):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(filename, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, UnicodeDecodeError, configparser.Error) as exc:
            warnings.append(f"{filename}: cannot read, unit alert defaults used: {exc}")
            continue
        if not parser.has_section(UNIT_ALERTS):
            continue
        for name, raw in parser.items(UNIT_ALERTS):
            setting = UNIT_ALERT_SETTINGS.get(name)
            if setting is None:
                warnings.append(f"{filename} [{UNIT_ALERTS}]: ignoring unknown key {name}")
                continue
            try:
                values[name] = setting.parse(raw)
            except ValueError as exc:
                warnings.append(f"{filename} [{UNIT_ALERTS}]: bad value {raw!r} for {name} ({exc}); "
                                f"using {setting.default!r}")
    return UnitAlertSettings(**values), warnings


def render_markdown(section: str = SECTION) -> str:
    """The reference table of one section for docs/configuration.md, so the docs cannot drift from the code."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        if setting.section != section:
            continue
        lines.append(f"| `{setting.name}` | `{setting.default}` | {setting.help} |")
    return "\n".join(lines) + "\n"


def shown_default(setting: Setting) -> str:
    """A setting's default as it is written in agent.conf."""
    default = setting.default
    if isinstance(default, bool):
        return "yes" if default else "no"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def render_ini() -> str:
    """The shipped /etc/pdagent/agent.conf: every key, commented out at its default."""
    lines = ["# pdagent-sd configuration. Every key is shown at its default, commented out.",
             "# Drop-ins in /etc/pdagent/agent.conf.d/*.conf are read after this file, in name order;",
             "# PDAGENT_<KEY> environment variables (e.g. in a unit drop-in) override both.",
             "# Durations take s, min, h, d suffixes. See docs/configuration.md.", "", f"[{SECTION}]"]
    for setting in AGENT_SETTINGS:
        lines += ["", f"# {setting.help}", f"#{setting.name} = {shown_default(setting)}"]
    lines += ["", "# Alerts about failed systemd units (pd-unit-alert; docs/systemd-alerts.md). The daemon ignores",
              "# this section; a bad value keeps its default there, and `pdagentd --check-config` reports it.",
              f"#[{UNIT_ALERTS}]"]
    for setting in UNIT_ALERT_SETTINGS.values():
        lines += ["", f"# {setting.help}", f"#{setting.name} = {shown_default(setting)}"]
    lines += ["", "# Named routing keys: `pd-send -k @ops` sends the key named ops, so no key is on a command line",
              "# that other users can read. Keep keys in a file only root and group pdagent can read (this one",
              "# is 0640 root:pdagent), or in systemd credentials key.NAME. See docs/security.md.",
              "# A name may be used only by trusted senders (root, group pdagent, trusted_groups) unless its",
              "# entry grants it to more after the key: user:NAME, group:NAME, or everyone. Nagios runs as",
              "# user nagios, so its key is granted to it (or put nagios in trusted_groups):",
              f"#[{keys_module.SECTION}]", "#ops = 0123456789abcdef0123456789abcdef",
              "#nagios = fedcba9876543210fedcba9876543210 user:nagios"]
    return "\n".join(lines) + "\n"
