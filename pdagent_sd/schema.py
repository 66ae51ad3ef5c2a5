"""queue.db's tables and indexes, and how a file from an earlier version is brought up to date in place: run
at every open, before the file's quick_check; on a file already current it changes nothing.
"""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    routing_key TEXT NOT NULL,
    api TEXT NOT NULL,
    action TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    event_id INTEGER NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts (event_id);
-- Events imported from the old agent's outqueue, by their file name there: an import never queues one twice.
CREATE TABLE IF NOT EXISTS legacy_imports (
    name TEXT PRIMARY KEY,
    event_id INTEGER NOT NULL,
    imported REAL NOT NULL
);
"""
# Columns added after 0.1, each (name, declaration): a queue.db from before gets them at open, in place.
# priority, superseded_by: coalescing (issue 15). sender_uid: who queued the event (SO_PEERCRED); -1 for events
# queued before it was recorded. party: whose the event is for coalescing and fair delivery (issue 18): the
# sender's uid, or -1 for every trusted sender together (and for events from before, which only root could
# have imported or which were sent before parties existed).
ADDED_COLUMNS = (("priority", "INTEGER NOT NULL DEFAULT 1"), ("superseded_by", "INTEGER"),
                 ("sender_uid", "INTEGER NOT NULL DEFAULT -1"), ("party", "INTEGER NOT NULL DEFAULT -1"))
# events_by_party is the only index by (state, routing_key): every insert writes a page of each index, and a
# third one (events_by_state_key, from 0.1; later events_by_priority beside events_by_party) cost the writer a
# fifth of its time per event. It holds a key's events per party (a sender uid, or all trusted senders) in
# delivery order, for fair delivery between the senders on one key (issue 18); a key's events in id order are
# read from it as three runs per party, one per priority, merged (store._oldest_ids).
# events_by_party_incident: an incident's events of one party (coalescing never crosses senders).
COALESCING_INDEXES = """
CREATE INDEX IF NOT EXISTS events_by_party_incident ON events (routing_key, dedup_key, party, state);
CREATE INDEX IF NOT EXISTS events_by_party ON events (state, routing_key, party, priority DESC, id);
DROP INDEX IF EXISTS events_by_state_key;
DROP INDEX IF EXISTS events_by_incident;
DROP INDEX IF EXISTS events_by_priority;
"""

# Heartbeats (issue 20, heartbeat_store.py): one row per (owner uid, name); times are Unix times; incident is the
# dedup key of the trigger of a page while it is open (the resolve goes to it, whatever the hostname is by then).
HEARTBEATS = """
CREATE TABLE IF NOT EXISTS heartbeats (
    uid INTEGER NOT NULL,
    name TEXT NOT NULL,
    user TEXT NOT NULL,
    every REAL NOT NULL,
    grace REAL NOT NULL,
    last_checkin REAL NOT NULL,
    routing_key TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL DEFAULT 'error',
    paused_until REAL,
    paged INTEGER NOT NULL DEFAULT 0,
    incident TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (uid, name)
);
"""


def apply(conn: sqlite3.Connection) -> None:
    """Create what a new queue.db lacks and upgrade one from an earlier version in place: tables, then the
    columns it lacks, then the indexes (which need the columns)."""
    conn.executescript(SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    for name, declaration in ADDED_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE events ADD COLUMN {name} {declaration}")
    conn.executescript(COALESCING_INDEXES)
    conn.executescript(HEARTBEATS)
