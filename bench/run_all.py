"""`make bench`: every benchmark script in turn; each prints its figures against a baseline of the same run.

Usage: python bench/run_all.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ("bench_core.py", "bench_systemd.py", "bench_queue.py", "bench_storm.py", "bench_heartbeat.py")


def main() -> int:
    failed = []
    for script in SCRIPTS:
        path = os.path.join(HERE, script)
        if not os.path.exists(path):
            continue
        print(f"\n##### {script}", flush=True)
        if subprocess.run([sys.executable, path, *sys.argv[1:]], cwd=HERE).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
