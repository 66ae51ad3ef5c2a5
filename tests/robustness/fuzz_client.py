#!/usr/bin/env python3
"""Fuzz frames (fuzzlib) sent one after another on one connection, each reply checked; for running the fuzz
as another user (standard library only, next to a copy of fuzzlib.py).

    python fuzz_client.py SOCKET SEED COUNT

Prints one JSON object: frames, replies, outcomes (ok or refusal code: count) and the first failures.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import Counter
from typing import Any, Dict, List

from fuzzlib import FrameMaker, check_reply


def fuzz(path: str, seed: int, count: int) -> Dict[str, Any]:
    outcomes: Counter = Counter()  # type: ignore[type-arg]
    failures: List[str] = []
    replies = 0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    buffer = b""
    for frame in FrameMaker(seed).frames(count):
        sock.sendall(frame.data)
        for _ in range(frame.replies):
            while b"\n" not in buffer:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    failures.append(f"connection closed before the reply to {frame.describe()}")
                    return {"frames": count, "replies": replies, "outcomes": dict(outcomes), "failures": failures}
                buffer += chunk
            line, _, buffer = buffer.partition(b"\n")
            replies += 1
            problem = check_reply(frame, line)
            if problem:
                failures.append(f"{problem} for {frame.describe()}")
                continue
            reply = json.loads(line)
            outcomes["ok" if reply["ok"] else reply["code"]] += 1
    sock.close()
    return {"frames": count, "replies": replies, "outcomes": dict(outcomes), "failures": failures[:20]}


if __name__ == "__main__":
    print(json.dumps(fuzz(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
