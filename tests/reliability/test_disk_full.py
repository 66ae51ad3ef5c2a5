"""Disk full: the state directory on a small filesystem the test mounts (tmpfs, and ext4 on a loop device) and
unmounts, pass or fail, filled to the last byte while the daemon runs and while it starts. pd-send exits 75
and says why, nothing acknowledged is lost, the daemon stays up and recovers by itself once space returns.
Needs root (mount); skipped otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from pdagent_sd.keys import mask

from agentproc import Agent, trigger
from chaoslib import routing_key, runs
from tiers import missing

KEYS = [routing_key(n) for n in range(2)]
SETTINGS = {"PDAGENT_BACKOFF_MIN_SEC": "0.2", "PDAGENT_BACKOFF_MAX_SEC": "1"}


class SmallFilesystem:
    """Small filesystems made for one test: tmpfs, or ext4 in an image file on a loop device (what a real disk
    does: journal, block allocation, fsync). Every one is unmounted by path at the end, its loop device freed."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.mounted: List[str] = []
        self.images: List[str] = []

    def mount(self, path: str, kind: str, size_mib: int) -> str:
        os.makedirs(path, exist_ok=True)
        if kind == "tmpfs":
            run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", path])
        else:
            image = os.path.join(self.workdir, f"{kind}-{len(self.images)}.img")
            with open(image, "wb") as handle:
                handle.truncate(size_mib << 20)
            self.images.append(image)
            run(["mkfs." + kind, "-q", "-F", "-m", "0", image])  # -m 0: no blocks kept back for root
            run(["mount", "-o", "loop", image, path])
        self.mounted.append(path)
        os.chmod(path, 0o700)
        return path

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            if subprocess.run(["umount", path], capture_output=True).returncode != 0:
                run(["umount", "--lazy", path])  # still held by a process we did not start
        self.mounted.clear()
        for image in self.images:  # mount -o loop detaches on umount (autoclear); make sure of it
            attached = subprocess.run(["losetup", "-j", image], capture_output=True, text=True).stdout
            for line in attached.splitlines():
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)


def run(command: List[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


def fill(directory: str) -> str:
    """Write a file until the filesystem has not one byte left; return its path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                continue
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free == 0
    return path


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request, tmp_path) -> Iterator[Tuple[SmallFilesystem, str]]:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        missing("mounting a small filesystem needs root")
    needed = ["mount", "umount"] + (["mkfs.ext4", "losetup"] if request.param == "ext4" else [])
    if not all(shutil.which(tool) for tool in needed):
        missing(f"needs {', '.join(needed)}")
    mounts = SmallFilesystem(str(tmp_path))
    try:
        yield mounts, request.param
    finally:
        mounts.unmount_all()


@pytest.fixture
def agent_on_small_fs(tmp_path, standin, small_fs) -> Iterator[Agent]:  # type: ignore[no-untyped-def]
    """pdagentd whose state directory is a small filesystem of its own; stopped by PID before the unmount."""
    mounts, kind = small_fs
    agent = Agent(str(tmp_path / "agent"), standin.url, **SETTINGS)
    mounts.mount(agent.state_dir, kind, 2 if kind == "tmpfs" else 8)
    try:
        yield agent
    finally:
        agent.stop()


def send(agent: Agent, key: str, tag: str) -> Dict[str, Any]:
    return agent.request({"op": "send", "api": "v2", "event": trigger(key, tag + " " + "x" * 400, tag)})


@pytest.mark.parametrize("size", runs({"sends_while_full": 200, "full_sec": 4.0},
                                      {"sends_while_full": 5000, "full_sec": 60.0}))
def test_full_disk_refuses_with_75_keeps_what_was_acknowledged_and_recovers(
        size, agent_on_small_fs, standin, figures) -> None:  # type: ignore[no-untyped-def]
    agent = agent_on_small_fs
    standin.refuse_connections()
    agent.start()
    acked: Dict[str, int] = {}
    for n in range(40):
        reply = send(agent, KEYS[n % 2], f"before-{n}")
        assert reply["ok"], reply
        acked[f"before-{n}"] = reply["id"]
    filler = fill(agent.state_dir)

    refusals: List[Dict[str, Any]] = []
    for n in range(size["sends_while_full"]):
        reply = send(agent, KEYS[n % 2], f"full-{n}")
        if reply["ok"]:  # room left in the WAL: committed, so it counts like any other
            acked[f"full-{n}"] = reply["id"]
        else:
            refusals.append(reply)
    assert refusals, "the full disk refused nothing"
    assert {reply["code"] for reply in refusals} == {"storage_error"}
    assert "database or disk is full" in refusals[0]["error"]
    result = agent.pd_send("-k", KEYS[0], "-t", "trigger", "-d", "disk full?")
    assert result.returncode == 75, result.stderr
    assert "pd-send: cannot write the queue at" in result.stderr and "disk is full" in result.stderr
    assert "pd-send: hint: check free space" in result.stderr
    assert "Traceback" not in result.stderr
    assert agent.status()["totals"]["pending"] == len(acked)
    assert os.path.exists(os.path.join(agent.state_dir, "pending"))

    # The Events API comes back while the disk is still full: deliveries go out, but their results cannot be
    # recorded, so each is sent again later. That must stay a trickle, not a flood.
    standin.accept_connections()
    time.sleep(size["full_sec"])
    requests_while_full = [standin.request_count_for(key) for key in KEYS]
    assert agent.proc is not None and agent.proc.poll() is None, "the daemon died on a full disk"
    assert agent.status()["totals"]["pending"] == len(acked)

    os.unlink(filler)
    recovered_at = time.monotonic()
    deadline = recovered_at + 30
    while True:
        reply = send(agent, KEYS[0], "after")  # refused ones were not stored: the tag is committed once
        if reply["ok"]:
            acked["after"] = reply["id"]
            break
        assert time.monotonic() < deadline, "sends still refused after space returned"
        time.sleep(0.1)
    assert agent.wait_until(lambda: agent.pending() == 0, timeout=30), agent.log()[-3000:]
    recovery_sec = time.monotonic() - recovered_at
    received = [event.body["dedup_key"] for event in standin.events]
    figures.update(acknowledged_before_full=40, acknowledged_while_full=len(acked) - 41, refused=len(refusals),
                   requests_per_key_while_full=requests_while_full, full_sec=size["full_sec"],
                   recovery_sec=round(recovery_sec, 2), duplicates=len(received) - len(set(received)))
    assert set(acked) <= set(received)
    assert not os.path.exists(os.path.join(agent.state_dir, "pending"))
    # every wait is at least backoff_min_sec (0.2 s); a turn that cannot record its results stops after at most
    # the event whose result failed and the one already on the wire
    turns = size["full_sec"] / 0.2 + 1
    assert all(count <= 2 * turns for count in requests_while_full), requests_while_full
    for key in KEYS:
        firsts: List[str] = []
        for event in standin.received(key):
            if event.body["dedup_key"] not in firsts:
                firsts.append(event.body["dedup_key"])
        assert firsts == sorted((tag for tag in acked if tag in firsts), key=lambda tag: acked[tag])
    log = agent.log()
    assert "Traceback" not in log
    # Deferrals and storage errors were logged, each naming its routing key (a keys.RoutingKey): masked only.
    assert " deferred " in log and "delivery goes on in" in log, log[-3000:]
    for key in KEYS:
        assert key not in log and mask(key) in log


@pytest.mark.integration
def test_start_on_a_full_disk_keeps_the_queue_refuses_with_75_and_opens_it_once_there_is_room(
        agent_on_small_fs, standin) -> None:  # type: ignore[no-untyped-def]
    """A full disk at start is not a damaged queue: the queue stays where it is (it used to be moved aside, and
    the acknowledged events in it were never delivered). Nor is it a reason to exit: under systemd that would
    be restarts until the start limit failed pdagent.socket, and nothing would recover with the disk. The
    daemon answers every request with why, and opens the queue by itself once there is room."""
    agent = agent_on_small_fs
    standin.refuse_connections()
    agent.start()
    tags = [f"kept-{n}" for n in range(20)]
    for n, tag in enumerate(tags):
        assert send(agent, KEYS[n % 2], tag)["ok"]
    assert agent.stop() == 0  # a clean stop removes the WAL and its index: a new start must create them
    filler = fill(agent.state_dir)
    agent.start(timeout=15)  # up and answering, though without its queue
    pid = agent.pid
    refused = send(agent, KEYS[0], "while-full")
    # SQLite cannot create the WAL index (-shm): "disk I/O error"; or cannot grow a file: "disk is full"
    assert refused["ok"] is False and refused["code"] == "storage_error", refused
    assert "cannot open the queue at" in refused["error"] and "check free space" in refused["hint"]
    assert agent.status()["code"] == "storage_error"
    result = agent.pd_send("-k", KEYS[0], "-t", "trigger", "-d", "while full")
    assert result.returncode == 75 and "cannot open the queue at" in result.stderr, result.stderr
    log = agent.log()
    assert "trying again every" in log and "Traceback" not in log
    assert not [name for name in os.listdir(agent.state_dir) if ".corrupt-" in name]
    os.unlink(filler)
    standin.accept_connections()
    assert agent.wait_until(lambda: agent.status()["ok"], timeout=20), agent.log()[-3000:]
    assert agent.pid == pid and agent.proc is not None and agent.proc.poll() is None  # no restart needed
    assert agent.status()["warnings"] == []
    assert agent.wait_until(lambda: agent.pending() == 0, timeout=30), agent.log()[-3000:]
    assert sorted(event.body["dedup_key"] for event in standin.events) == sorted(tags)
    assert "queue opened after" in agent.log()
