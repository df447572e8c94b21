"""Operator commands on the simulated cluster: status (fresh and stale) and the guided
split-brain recovery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from adapters.sim.world import World
from tests.simcluster import SimCluster, demo_spec

RECONCILE = shutil.which("reconcile") or ""
pytestmark = pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed")


def run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), COLUMNS="200")
    return subprocess.run([RECONCILE, *args], capture_output=True, text=True, env=env, timeout=30)


def test_status_fresh_then_stale(tmp_path: Path) -> None:
    missing = run(tmp_path, "status", "--node", "node1")
    assert missing.returncode == 1 and "no status record" in missing.stdout
    run(tmp_path, "--once", "--node", "node1")
    fresh = run(tmp_path, "status", "--node", "node1")
    assert fresh.returncode == 0, fresh.stdout
    assert "Primary" in fresh.stdout and "target: running (expected running)" in fresh.stdout
    assert "tgtd: running" in fresh.stdout
    assert "VIP 198.51.100.3: local" in fresh.stdout
    record_file = tmp_path / "status-node1.json"
    record = json.loads(record_file.read_text())
    record["time"] = time.time() - 60  # tickInterval 2 + staleness 5 = 7 s limit
    record_file.write_text(json.dumps(record))
    stale = run(tmp_path, "status", "--node", "node1")
    assert stale.returncode == 1
    assert "STALE" in stale.stdout and "agent is stopped" in stale.stdout


def test_status_reports_a_corrupt_record_plainly(tmp_path: Path) -> None:
    run(tmp_path, "--once", "--node", "node1")
    record_file = tmp_path / "status-node1.json"
    record_file.write_text(record_file.read_text()[:40])  # torn, as by a full disk
    torn = run(tmp_path, "status", "--node", "node1")
    assert torn.returncode == 1 and "Traceback" not in torn.stdout + torn.stderr
    assert "unreadable status record" in torn.stdout and "not JSON" in torn.stdout
    record_file.write_text(json.dumps({"node": "node1", "state": "fine"}))  # someone else's
    foreign = run(tmp_path, "status", "--node", "node1")
    assert foreign.returncode == 1 and "Traceback" not in foreign.stdout + foreign.stderr
    assert "not a status record" in foreign.stdout and "desired_role" in foreign.stdout
    raw = run(tmp_path, "status", "--node", "node1", "--json")
    data = json.loads(raw.stdout)
    assert raw.returncode == 1 and data["record"] == "corrupt"
    assert data["content"] == {"node": "node1", "state": "fine"}
    assert "desired_role" in data["problem"]
    run(tmp_path, "--once", "--node", "node1")  # the next tick replaces it
    assert run(tmp_path, "status", "--node", "node1").returncode == 0


def split_brained_world(tmp_path: Path) -> World:
    spec = demo_spec()
    c = SimCluster.create(spec, tmp_path)
    c.converge()
    w = c.world
    w.set_links(replication=False, management=False)
    w.client_write("iscsi1")
    w.drbd_primary("node2", "iscsi1")
    w.nodes["node2"].resources["iscsi1"].history.append(999)
    w.drbd_secondary("node2", "iscsi1")
    w.set_links(replication=True, management=True)
    assert w.nodes["node1"].resources["iscsi1"].split_brain
    return w


def test_guided_split_brain_recovery(tmp_path: Path) -> None:
    w = split_brained_world(tmp_path)
    (tmp_path / "sim-world.json").write_text(w.model_dump_json())
    survivor_data = list(w.nodes["node1"].resources["iscsi1"].history)

    healthy = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2")
    assert healthy.returncode == 2 and "VICTIM" in healthy.stderr and "--yes" in healthy.stderr
    victim = run(
        tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2", "--yes"
    )
    assert victim.returncode == 0, victim.stderr
    survivor = run(
        tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node1", "--yes"
    )
    assert survivor.returncode == 0, survivor.stderr
    for _ in range(3):
        run(tmp_path, "--once", "--node", "node1")
        run(tmp_path, "--once", "--node", "node2")
    world = World.model_validate_json((tmp_path / "sim-world.json").read_text())
    n1, n2 = (world.nodes[n].resources["iscsi1"] for n in ("node1", "node2"))
    assert not n1.split_brain and not n2.split_brain
    assert n1.connected and n2.connected and n2.disk.value == "UpToDate"
    assert n2.history == survivor_data and 999 not in n2.history
    assert run(tmp_path, "manual-mode", "disable", "--node", "node2").returncode == 0


def test_split_brain_recovery_refused_when_connected(tmp_path: Path) -> None:
    run(tmp_path, "--once", "--node", "node1")
    r = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2", "--yes")
    assert r.returncode == 3 and "not in split brain" in r.stderr
