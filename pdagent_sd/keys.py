"""Named routing keys: a client sends `@name` as the routing key and the daemon puts the real key in its place.

A key on a command line is readable by every local user in /proc/<pid>/cmdline while the command runs, and a
key in a monitoring tool's configuration is one more copy to guard. The daemon (user pdagent) reads the real
keys from two places that only root and pdagent can read:

- a `[Keys]` section in /etc/pdagent/agent.conf and agent.conf.d/*.conf: `name = <32-character key>`, files
  0640 root:pdagent;
- systemd credentials: `LoadCredential=key.NAME:/path` (or `LoadCredentialEncrypted=`, `SetCredential=`) in a
  drop-in for pdagent.service; the credential `key.NAME` in $CREDENTIALS_DIRECTORY holds the key for `@NAME`.

Credentials come last and win over a file. A name is 1-64 of A-Z a-z 0-9 _ . - ; an unknown name is an invalid
event naming the name, never a key. This module imports only the standard library and errors.py.

Who may use a name: a routing key is shared by everyone who sends on it, so a name belongs to whom the admin
says. By default only trusted senders (root, the service's user, group pdagent, trusted_groups) may use it;
the entry grants it to more after the key, in words separated by spaces:

    nagios = <32-character key> user:nagios group:developers
    legacy = <32-character key> everyone

`user:NAME` (or `user:UID`), `group:NAME` (or `group:GID`), `everyone` (every local user, the old behaviour). A
key.NAME credential takes the same words after its key. Any other sender is refused (forbidden, exit 77) with
the name, never the key. Users and groups are looked up at start; one that does not exist is named in the log
and grants nothing.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from pdagent_sd.errors import ConfigError, Forbidden, InvalidEvent


def mask(key: str) -> str:
    """A routing key as logs and non-admins may see it: enough to tell keys apart, not to use one."""
    if len(key) < 12:
        return "*" * len(key)
    return f"{key[:4]}…{key[-4:]}"


class RoutingKey:
    """A routing key as it travels between modules (pip's HiddenText is the model): str() and repr() are the
    masked form, so no log line, message or traceback can show it whole by accident; the value must be asked
    for with reveal(), which two places do: the event body that is posted (events.validate) and the queue that
    stores it (store.py's SQLite adapter). Equal, hashed and ordered by value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return mask(self._value)

    def __repr__(self) -> str:
        return f"RoutingKey({mask(self._value)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutingKey) and other._value == self._value

    def __lt__(self, other: "RoutingKey") -> bool:
        return self._value < other._value

    def __hash__(self) -> int:
        return hash(self._value)


PREFIX = "@"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
KEY = re.compile(r"[A-Za-z0-9]{32}", re.ASCII)
SECTION = "Keys"
CREDENTIAL_PREFIX = "key."
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-'"
EVERYONE = "everyone"
GRANT_RULE = f"after the key: user:NAME, group:NAME (or a number) or {EVERYONE}, separated by spaces"


@dataclass(frozen=True)
class Grant:
    """Who besides the trusted senders may use a name: uids, gids, or every local user."""

    uids: FrozenSet[int] = frozenset()
    gids: FrozenSet[int] = frozenset()
    everyone: bool = False
    unknown: Tuple[str, ...] = ()  # `user:x`/`group:x` words naming no user or group here (grant nothing)

    def allows(self, caller: "Caller") -> bool:
        return caller.trusted or self.everyone or caller.uid in self.uids or bool(self.gids & caller.groups)


TRUSTED_ONLY = Grant()


@dataclass(frozen=True)
class Caller:
    """Who uses a name: a uid, its groups (SO_PEERGROUPS), and whether it is a trusted sender."""

    uid: int
    groups: FrozenSet[int] = frozenset()
    trusted: bool = False


TRUSTED = Caller(-1, frozenset(), True)


def _lookup(kind: str, value: str) -> Optional[int]:
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
    except KeyError:
        return None


def parse_grant(name: str, words: Iterable[str], where: str) -> Grant:
    """The words after a key; a word that is none of them stops the daemon naming the place and the name."""
    uids: List[int] = []
    gids: List[int] = []
    everyone = False
    unknown: List[str] = []
    for word in words:
        kind, _, value = word.partition(":")
        if word == EVERYONE:
            everyone = True
        elif kind in ("user", "group") and value and len(value) <= 64 and "\x00" not in value:
            found = _lookup(kind, value)
            if found is None:
                unknown.append(word)
            else:
                (uids if kind == "user" else gids).append(found)
        else:
            raise ConfigError(f"{where}: @{name}: cannot read a grant word ({len(word)} characters): "
                              f"grants are {GRANT_RULE}")
    return Grant(frozenset(uids), frozenset(gids), everyone, tuple(unknown))


def is_name(value: str) -> bool:
    return value.startswith(PREFIX)


def check_entry(name: str, value: str, where: str) -> Tuple[str, Grant]:
    """`<key> [grant words]` -> the key and its grant; messages name the name and the place, never the key."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}: key name {name!r} is not valid: a name is {NAME_RULE}")
    key, *words = value.split() or [""]
    if not KEY.fullmatch(key):
        raise ConfigError(f"{where}: the key for @{name} is not 32 letters and digits ({len(key)} characters)")
    return key, parse_grant(name, words, where)


class KeyBook:
    """name -> routing key. Its repr shows names only, so no log line or traceback can print a key."""

    __slots__ = ("_keys", "_sources", "_grants")

    def __init__(self, keys: Optional[Mapping[str, str]] = None,
                 sources: Optional[Mapping[str, str]] = None, grants: Optional[Mapping[str, Grant]] = None) -> None:
        self._keys: Dict[str, str] = dict(keys or {})
        self._sources: Dict[str, str] = dict(sources or {})
        self._grants: Dict[str, Grant] = dict(grants or {})

    def __repr__(self) -> str:
        return f"KeyBook({', '.join(PREFIX + name for name in sorted(self._keys))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyBook) and other._keys == self._keys and other._grants == self._grants

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._keys)))

    def __len__(self) -> int:
        return len(self._keys)

    def names(self) -> Tuple[str, ...]:
        return tuple(sorted(self._keys))

    def source(self, name: str) -> str:
        return self._sources.get(name, "")

    def grant(self, name: str) -> Grant:
        return self._grants.get(name, TRUSTED_ONLY)

    def resolve(self, value: str, field: str = "routing_key", caller: Caller = TRUSTED) -> RoutingKey:
        """`@name` -> its key, if `caller` may use it; anything else is returned as it is (the caller checks it
        as a key). A name the caller may not use is Forbidden, naming the name, never the key."""
        if not is_name(value):
            return RoutingKey(value)
        name = value[len(PREFIX):]
        if not NAME.fullmatch(name):
            raise InvalidEvent(f"{field} starts with {PREFIX} but is not a key name: a name is {NAME_RULE}")
        try:
            key = self._keys[name]
        except KeyError:
            raise InvalidEvent(
                f"{field} @{name} is not a configured key name",
                hint=f"add '{name} = <integration key>' to the [{SECTION}] section of /etc/pdagent/agent.conf "
                     f"(or a credential {CREDENTIAL_PREFIX}{name}) and restart pdagent.service",
            ) from None
        if not self.grant(name).allows(caller):
            raise Forbidden(
                f"{field} @{name}: uid {caller.uid} may not use this key name",
                hint=f"a named key is for trusted senders (root, group pdagent, trusted_groups) and whom its "
                     f"[{SECTION}] entry grants it to: '{name} = <key> user:NAME group:NAME'; restart "
                     "pdagent.service after a change")
        return RoutingKey(key)


def from_credentials(directory: str) -> Iterable[Tuple[str, Tuple[str, Grant], str]]:
    """(name, (key, grant), where) for every `key.NAME` credential in a $CREDENTIALS_DIRECTORY."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"cannot read the credentials directory {directory}: {exc.strerror}") from None
    for entry in entries:
        if not entry.startswith(CREDENTIAL_PREFIX):
            continue
        name = entry[len(CREDENTIAL_PREFIX):]
        path = os.path.join(directory, entry)
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                text = handle.read(4096)
        except OSError as exc:
            raise ConfigError(f"cannot read the credential {entry}: {exc.strerror}") from None
        where = f"credential {entry}"
        yield name, check_entry(name, text, where), where
