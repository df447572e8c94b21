"""The event history: what the agent did and refused, bounded, persisted, read back plainly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.events import Event, EventLog, TickEvents, events_path, from_report, load
from tests.simcluster import SimCluster, demo_spec

RECONCILE = shutil.which("reconcile") or ""
needs_cli = pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed")


def run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), COLUMNS="200")
    env.pop("TANDEM_SPEC", None)
    env.pop("TANDEM_NODE", None)
    return subprocess.run([RECONCILE, *args], capture_output=True, text=True, env=env, timeout=60)


@needs_cli
def test_events_list_the_bring_up_with_reasons(tmp_path: Path) -> None:
    assert run(tmp_path, "--once", "--node", "node1").returncode == 0
    assert run(tmp_path, "--once", "--node", "node2").returncode == 0
    r = run(tmp_path, "events", "--json")
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    mine = [e for e in got if e["node"] == "node1"]
    assert [e["action"] for e in mine] == [
        "promote", "start-target", "export-lun", "add-vip", "announce-vip", "plug-pbd"
    ]  # fmt: skip
    assert all(e["result"] == "ok" and e["reason"] for e in mine)
    assert mine[0]["resource"] == "iscsi1"
    text = run(tmp_path, "events", "--node", "node1")
    assert "promote iscsi1: ok - " in text.stdout
    status = run(tmp_path, "status", "--node", "node1")
    assert "last 5 event(s)" in status.stdout and "plug-pbd" in status.stdout
    # --since in the future: nothing; --last 2: the newest two.
    assert "no events" in run(tmp_path, "events", "--since", "@9999999999").stdout
    last = run(tmp_path, "events", "--node", "node1", "--json", "--last", "2").stdout
    assert [json.loads(x)["action"] for x in last.splitlines()] == ["announce-vip", "plug-pbd"]


def test_refusals_are_recorded_when_they_start_not_every_tick(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.strangers.append("198.51.100.3")  # someone else answers on the VIP
    log = EventLog(tmp_path / "events-node1.jsonl")
    observer = TickEvents(log)
    for _ in range(4):
        observer(c.tick("node1"))
    got, problems = load([log.path])
    assert problems == []
    refused = [e for e in got if e.result == "refused"]
    # Two refusals, each recorded once: the VIP, and the host's PBD (nothing serves).
    assert [e.action for e in refused] == ["add-vip", "plug-pbd"], refused
    assert "answered" in refused[0].reason and "141" in refused[1].reason
    assert next(e.action for e in got if e.result == "ok") == "promote"


def test_a_failed_step_and_the_steps_it_left_unrun(tmp_path: Path) -> None:
    from adapters.sim.world import Fault

    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.faults.append(Fault(node="node1", op="vip-add", kind="terminal", count=1))
    got = {e.action: e for e in from_report(c.tick("node1"))}
    assert got["promote"].result == "ok"
    assert got["add-vip"].result == "failed" and "injected" in (got["add-vip"].error or "")
    assert got["start-target"].result == "ok"  # the VIP comes after the target
    assert got["announce-vip"].result == "not-run"
    assert from_report(c.tick("node1", dry_run=True)) == []  # a dry run did nothing


def test_the_history_is_bounded(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events-node1.jsonl", limit=10)
    for i in range(57):
        log.append([Event(time=float(i), node="node1", action="promote", result="ok",
                          reason=f"#{i}")])  # fmt: skip
        lines = log.path.read_text().splitlines()
        assert len(lines) <= 20
    got, _ = load([log.path])
    assert got[-1].reason == "#56" and len(got) >= 10
    assert got[0].reason != "#0"
    # A second writer object (an agent restarted) counts what is there and keeps the bound.
    again = EventLog(log.path, limit=10)
    for i in range(57, 80):
        again.append([Event(time=float(i), node="node1", action="demote", result="ok",
                            reason=f"#{i}")])  # fmt: skip
    assert len(log.path.read_text().splitlines()) <= 20


@needs_cli
def test_a_corrupt_events_file_is_reported_plainly(tmp_path: Path) -> None:
    assert run(tmp_path, "--once", "--node", "node1").returncode == 0
    path = events_path(tmp_path, "node1")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", '{"time": "x"}', *lines[1:]]) + "\n")
    r = run(tmp_path, "events")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "2 unreadable line(s) skipped (first: line 2)" in r.stderr
    assert len(r.stdout.splitlines()) == len(lines)
    path.write_bytes(b"\xff\xfe garbage \x00\n")
    r = run(tmp_path, "status", "--node", "node1")
    assert "Traceback" not in r.stdout + r.stderr
    assert "unreadable line(s)" in r.stdout
