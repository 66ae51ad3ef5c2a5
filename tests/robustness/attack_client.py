#!/usr/bin/env python3
"""What a hostile local user does to the agent's capacity, for running as another user (standard library
only). Prints one JSON object of what happened.

    python attack_client.py flood SOCKET COUNT SECONDS KEYS    COUNT events (0: no limit) for at most SECONDS,
                                                               pipelined on one connection; KEYS=one: all on
                                                               one made-up routing key, KEYS=many: each on
                                                               its own
    python attack_client.py hold SOCKET CONNECTIONS SECONDS    keep CONNECTIONS idle connections open for
                                                               SECONDS, opening a new one whenever one closes
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import sys
import time
from collections import Counter
from typing import Any, Dict, List

WINDOW = 64  # requests in flight on the connection


def junk_key(index: int) -> str:
    return f"{index:016x}" + "0123456789abcdef"


def event_line(index: int, many_keys: bool) -> bytes:
    key = junk_key(index if many_keys else 0)
    body = {"routing_key": key, "event_action": "trigger",
            "payload": {"summary": f"junk {index}", "source": "junk", "severity": "info"}}
    return json.dumps({"op": "send", "api": "v2", "event": body}).encode() + b"\n"


def flood(path: str, count: int, seconds: float, keys: str) -> Dict[str, Any]:
    outcomes: Counter = Counter()  # type: ignore[type-arg]
    first_refusal = ""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    stream = sock.makefile("rb")
    started = time.monotonic()
    sent = answered = 0
    while True:
        done = (count and sent >= count) or time.monotonic() - started >= seconds
        if done and answered == sent:
            break
        if not done and sent - answered < WINDOW:
            batch = min(WINDOW - (sent - answered), (count - sent) if count else WINDOW)
            sock.sendall(b"".join(event_line(sent + n, keys == "many") for n in range(batch)))
            sent += batch
            continue
        line = stream.readline()
        if not line:
            outcomes["closed"] += 1
            break
        answered += 1
        reply = json.loads(line)
        if reply.get("ok"):
            outcomes["ok"] += 1
        else:
            outcomes[reply.get("code", "?")] += 1
            first_refusal = first_refusal or reply.get("error", "")
    sock.close()
    elapsed = time.monotonic() - started
    return {"sent": sent, "answered": answered, "outcomes": dict(outcomes), "first_refusal": first_refusal,
            "seconds": round(elapsed, 2), "per_second": round(answered / elapsed, 1) if elapsed else 0}


def hold(path: str, connections: int, seconds: float) -> Dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = selectors.DefaultSelector()
    stats: Counter = Counter()  # type: ignore[type-arg]
    open_socks: List[socket.socket] = []
    deadline = time.monotonic() + seconds
    peak = 0

    def connect() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except (BlockingIOError, InterruptedError):  # the listen backlog is full: try again later
            sock.close()
            stats["backlog_full"] += 1
            return
        except OSError:
            sock.close()
            stats["connect_failed"] += 1
            return
        stats["connects"] += 1
        selector.register(sock, selectors.EVENT_READ)
        open_socks.append(sock)

    while time.monotonic() < deadline:
        while len(open_socks) < connections:
            before = len(open_socks)
            connect()
            if len(open_socks) == before:
                break
        peak = max(peak, len(open_socks))
        for key, _ in selector.select(0.01):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if b'"busy"' in data:
                stats["told_busy"] += 1
            selector.unregister(sock)
            open_socks.remove(sock)
            sock.close()
            stats["closed_by_daemon"] += 1
    for sock in open_socks:
        sock.close()
    return {"peak_open": peak, **dict(stats)}


if __name__ == "__main__":
    mode, socket_path = sys.argv[1], sys.argv[2]
    if mode == "flood":
        result = flood(socket_path, int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif mode == "hold":
        result = hold(socket_path, int(sys.argv[3]), float(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)
