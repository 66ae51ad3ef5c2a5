#!/usr/bin/env python3
"""A sender for the reliability tests: raw protocol requests, one connection per event (as pd-send does),
and one JSON line on stdout per event saying what became of it.

    python chaos_sender.py --socket PATH --name s0 --keys K1,K2 --count N [--threads T] [--seed S] [--stop-file F]

Outcomes: ``acked`` (the reply said ok and gave an id: the daemon promised the event), ``rejected`` (an error
reply: it was not queued), ``refused`` (connecting failed: the daemon never saw it) and ``in_doubt`` (the request
may have reached the daemon, but no reply came back: it may or may not have been committed). A refused or
rejected event is tried again until it is acknowledged or in doubt. Every try has its own tag, used as its dedup
key and summary, so nothing is ambiguous.

Standard library only: it must not share anything with the daemon it is testing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentproc import read_line  # noqa: E402  (a script run by path: tests/ is put on sys.path above)

PAUSE_AFTER_REFUSAL_SEC = 0.02  # the daemon is down: do not spin while it restarts


def body(key: str, tag: str) -> Dict[str, Any]:
    return {"routing_key": key, "event_action": "trigger", "dedup_key": tag,
            "payload": {"summary": tag, "source": "chaos", "severity": "info"}}


def send_one(path: str, key: str, tag: str, timeout: float) -> Dict[str, Any]:
    line = json.dumps({"op": "send", "api": "v2", "event": body(key, tag)}).encode() + b"\n"
    t0 = time.monotonic()
    record: Dict[str, Any] = {"tag": tag, "key": key, "t0": t0}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            record.update(outcome="refused", error=type(exc).__name__)
            return record
        try:
            sock.sendall(line)
            reply = read_line(sock)
        except OSError as exc:
            record.update(outcome="in_doubt", error=type(exc).__name__)
            return record
        if not reply.endswith(b"\n"):
            record.update(outcome="in_doubt", error="closed without a reply")
            return record
        answer = json.loads(reply)
        if answer.get("ok") and isinstance(answer.get("id"), int):
            record.update(outcome="acked", id=answer["id"])
        else:
            record.update(outcome="rejected", code=answer.get("code"), error=answer.get("error"))
        return record
    finally:
        sock.close()
        record["t1"] = time.monotonic()


def run(path: str, name: str, keys: List[str], count: int, seed: int, timeout: float,
        out_lock: threading.Lock, stop_file: Optional[str]) -> None:
    rng = random.Random(seed)
    for index in range(count):
        key = rng.choice(keys)
        for attempt in range(1000000):
            if stop_file and os.path.exists(stop_file):
                return
            # A refused event is certainly not queued, so it is sent again, as a monitoring tool would after
            # pd-send's exit 69 or 75; under a tag of its own, so that the refused try can be checked too.
            tag = f"{name}-{index}" if attempt == 0 else f"{name}-{index}.{attempt}"
            record = send_one(path, key, tag, timeout)
            with out_lock:
                sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()
            if record["outcome"] not in ("refused", "rejected"):
                break
            time.sleep(PAUSE_AFTER_REFUSAL_SEC)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--name", required=True, help="prefix of this sender's tags")
    parser.add_argument("--keys", required=True, help="routing keys, comma-separated; each event picks one")
    parser.add_argument("--count", type=int, required=True, help="events per thread")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--stop-file", help="stop sending (after the event in hand) once this file exists")
    args = parser.parse_args(argv)
    keys = args.keys.split(",")
    lock = threading.Lock()
    threads = [threading.Thread(target=run, args=(args.socket, f"{args.name}.{n}", keys, args.count,
                                                  args.seed * 1000 + n, args.timeout, lock, args.stop_file))
               for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
