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
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable, Mapping, Optional, Tuple

from pdagent_sd.errors import ConfigError, InvalidEvent

PREFIX = "@"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
KEY = re.compile(r"[A-Za-z0-9]{32}", re.ASCII)
SECTION = "Keys"
CREDENTIAL_PREFIX = "key."
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-'"


def is_name(value: str) -> bool:
    return value.startswith(PREFIX)


def check_key(name: str, key: str, where: str) -> str:
    """A configured key must be a whole routing key; the message names the name and the place, never the value."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}: key name {name!r} is not valid: a name is {NAME_RULE}")
    key = key.strip()
    if not KEY.fullmatch(key):
        raise ConfigError(f"{where}: the key for @{name} is not 32 letters and digits ({len(key)} characters)")
    return key


class KeyBook:
    """name -> routing key. Its repr shows names only, so no log line or traceback can print a key."""

    __slots__ = ("_keys", "_sources")

    def __init__(self, keys: Optional[Mapping[str, str]] = None,
                 sources: Optional[Mapping[str, str]] = None) -> None:
        self._keys: Dict[str, str] = dict(keys or {})
        self._sources: Dict[str, str] = dict(sources or {})

    def __repr__(self) -> str:
        return f"KeyBook({', '.join(PREFIX + name for name in sorted(self._keys))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyBook) and other._keys == self._keys

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._keys)))

    def __len__(self) -> int:
        return len(self._keys)

    def names(self) -> Tuple[str, ...]:
        return tuple(sorted(self._keys))

    def source(self, name: str) -> str:
        return self._sources.get(name, "")

    def resolve(self, value: str, field: str = "routing_key") -> str:
        """`@name` -> its key; anything else is returned as it is (the caller checks it as a key)."""
        if not is_name(value):
            return value
        name = value[len(PREFIX):]
        if not NAME.fullmatch(name):
            raise InvalidEvent(f"{field} starts with {PREFIX} but is not a key name: a name is {NAME_RULE}")
        try:
            return self._keys[name]
        except KeyError:
            raise InvalidEvent(
                f"{field} @{name} is not a configured key name",
                hint=f"add '{name} = <integration key>' to the [{SECTION}] section of /etc/pdagent/agent.conf "
                     f"(or a credential {CREDENTIAL_PREFIX}{name}) and restart pdagent.service",
            ) from None


def from_credentials(directory: str) -> Iterable[Tuple[str, str, str]]:
    """(name, key, where) for every `key.NAME` credential in a $CREDENTIALS_DIRECTORY."""
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
        yield name, check_key(name, text, where), where
