"""The `reconcile` command as users run it (a real subprocess on the embedded demo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.simcluster import ROOT

RECONCILE = shutil.which("reconcile") or ""
pytestmark = pytest.mark.skipif(
    not RECONCILE, reason="reconcile is not installed (pip install -e .)"
)


def run(state: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state))
    env.pop("TANDEM_SPEC", None)
    env.pop("TANDEM_NODE", None)
    return subprocess.run(
        [RECONCILE, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_readme_story_on_the_embedded_demo(tmp_path: Path) -> None:
    dry = run(tmp_path, "--once", "--node", "node1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "sim-world.json").exists(), "--dry-run must change nothing"
    first = run(tmp_path, "--once", "--node", "node1")
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert out.index("promote") < out.index("start-target") < out.index("add-vip")
    assert dry.stdout.replace(" (dry run: nothing applied)", "").replace(" ok", "") == out.replace(
        " ok", ""
    )
    again = run(tmp_path, "--once", "--node", "node1")
    assert again.returncode == 0 and "converged" in again.stdout
    node2 = run(tmp_path, "--once", "--node", "node2", "--json")
    data = json.loads(node2.stdout)
    assert node2.returncode == 0
    assert data["node"] == "node2" and data["desired_role"] == "Secondary"
    # node2 starts its resident tgtd (no target defined), and its host plugs its PBD of the
    # demo's SR: the VIP answers from node1, which serves.
    assert [a["kind"] for a in data["actions"]] == ["start-daemon", "plug-pbd"]
    assert data["actions"][1]["pbd"] and data["applied"] == data["actions"]
    node2 = run(tmp_path, "--once", "--node", "node2", "--json")
    data = json.loads(node2.stdout)
    assert data["actions"] == [] and data["converged"] is True
    assert {"node", "actions", "blocked", "applied", "errors", "converged"} <= set(data)
    status = json.loads((tmp_path / "status-node2.json").read_text())
    assert status["node"] == "node2" and "time" in status and "version" in status


def test_json_lists_actions_with_kind_resource_reason(tmp_path: Path) -> None:
    r = run(tmp_path, "--once", "--node", "node1", "--json")
    data = json.loads(r.stdout)
    assert [a["kind"] for a in data["actions"]] == [
        "promote",
        "start-target",
        "export-lun",
        "add-vip",
        "announce-vip",
        "plug-pbd",
    ]
    assert data["actions"][0]["resource"] == "iscsi1"
    assert all(a["reason"] for a in data["actions"])
    assert data["applied"] == data["actions"] and data["errors"] == []
    # Timings for the operator: each step, and each concern's read.
    assert [st["kind"] for st in data["steps"]] == [a["kind"] for a in data["actions"]]
    assert set(data["observe_parts_ms"]) == {
        "hypervisor",
        "drbd", "vip", "target", "role", "operator", "liveness"
    }  # fmt: skip
    again = json.loads(run(tmp_path, "--once", "--node", "node1", "--json").stdout)
    # The next process knows the VIP was announced (the record outlives the agent).
    assert again["actions"] == [] and again["observed"]["vips"][0]["announced"] is True


def test_exit_3_when_blocked_and_1_when_an_action_fails(tmp_path: Path) -> None:
    run(tmp_path, "--once", "--node", "node1", "--dry-run")
    world_file = tmp_path / "sim-world.json"
    # Build the world through one harmless tick on node2, then edit it like a test harness.
    run(tmp_path, "--once", "--node", "node2")
    world = json.loads(world_file.read_text())
    world["strangers"] = ["198.51.100.3"]
    world_file.write_text(json.dumps(world))
    r = run(tmp_path, "--once", "--node", "node1")
    # Planned before the VIP's probe answered (nothing else needed it): add-vip's own check
    # refuses the address, an action failed.
    assert r.returncode == 1 and "answered by another host" in r.stdout, r.stdout
    blocked = run(tmp_path, "--once", "--node", "node1")
    assert blocked.returncode == 3, blocked.stdout
    assert "answered by another host" in blocked.stdout
    world = json.loads(world_file.read_text())
    world["strangers"] = []
    world["faults"] = [{"node": "node1", "op": "vip-add", "kind": "terminal", "count": 1}]
    world_file.write_text(json.dumps(world))
    failed = run(tmp_path, "--once", "--node", "node1")
    assert failed.returncode == 1 and "FAILED" in failed.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--once", "--watch", "--node", "node1"),
        ("--once", "--node", "nodeX"),
        ("--watch", "--dry-run", "--node", "node1"),
        ("--once", "--node", "node1", "-f", "/nonexistent/spec.yaml"),
        ("--bogus",),
        (),
    ],
)
def test_usage_errors_exit_2_without_traceback(tmp_path: Path, args: tuple[str, ...]) -> None:
    r = run(tmp_path, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr


def test_spec_and_state_dir_from_environment(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        TANDEM_STATE_DIR=str(tmp_path),
        TANDEM_SPEC=str(ROOT / "specs" / "demo.yaml"),
        TANDEM_NODE="node1",
    )
    r = subprocess.run([RECONCILE, "--once"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "status-node1.json").exists()


def test_watch_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, TANDEM_STATE_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [RECONCILE, "--watch", "--node", "node1", "--interval", "0.05", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "status-node1.json").exists():
            assert time.monotonic() < deadline, "the agent never ticked"
            time.sleep(0.05)
        # A second agent for the same node is refused while the first holds the lock.
        second = run(tmp_path, "--once", "--node", "node1")
        assert second.returncode == 2 and "another reconcile agent" in second.stderr
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    ticks = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert ticks and ticks[0]["applied"] and ticks[-1]["converged"]


def test_manual_mode_swap_story(tmp_path: Path) -> None:
    assert run(tmp_path, "--once", "--node", "node1").returncode == 0
    refused = run(tmp_path, "become-primary", "--node", "node2")
    assert refused.returncode == 3 and "not in manual mode" in refused.stderr
    for node in ("node1", "node2"):
        assert run(tmp_path, "manual-mode", "enable", "--node", node).returncode == 0
    busy = run(tmp_path, "become-primary", "--node", "node2")
    assert busy.returncode == 3 and "peer is Primary" in busy.stderr
    assert run(tmp_path, "become-secondary", "--node", "node1").returncode == 0
    swap = run(tmp_path, "become-primary", "--node", "node2")
    assert swap.returncode == 0, swap.stdout + swap.stderr
    assert "promote" in swap.stdout
    # Leaving manual mode on node2 would move storage back: refused until roles are native.
    leave = run(tmp_path, "manual-mode", "disable", "--node", "node2")
    assert leave.returncode == 3 and "native role" in leave.stderr
    assert run(tmp_path, "become-secondary", "--node", "node2").returncode == 0
    assert run(tmp_path, "become-primary", "--node", "node1").returncode == 0
    for node in ("node1", "node2"):
        r = run(tmp_path, "manual-mode", "disable", "--node", node)
        assert r.returncode == 0, r.stderr


def test_help_explains_commands_and_exit_codes(tmp_path: Path) -> None:
    r = run(tmp_path, "--help")
    assert r.returncode == 0
    for word in ("--once", "--watch", "--dry-run", "validate", "Exit codes", "become-primary"):
        assert word in r.stdout


def test_get_prints_every_effective_setting(tmp_path: Path) -> None:
    r = run(tmp_path, "get")
    assert r.returncode == 0, r.stderr
    # Defaults that the demo spec does not write are filled in.
    for key in ("commandTimeout: 10.0", "screenTime: 1800.0", "quietTicks: 5", "tid: 1"):
        assert key in r.stdout


def test_operator_command_defers_to_a_running_agent(tmp_path: Path) -> None:
    env = dict(os.environ, TANDEM_STATE_DIR=str(tmp_path))
    assert run(tmp_path, "--once", "--node", "node1").returncode == 0
    for node in ("node1", "node2"):
        assert run(tmp_path, "manual-mode", "enable", "--node", node).returncode == 0
    # The --once run left a status record: remove it so its reappearance proves the watching
    # agent ticked (and so holds the node's lock).
    (tmp_path / "status-node1.json").unlink()
    agent = subprocess.Popen(
        [RECONCILE, "--watch", "--node", "node1", "--interval", "0.05"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "status-node1.json").exists():
            assert time.monotonic() < deadline, "the agent never ticked"
            time.sleep(0.05)
        r = run(tmp_path, "become-secondary", "--node", "node1")
        assert r.returncode == 0 and "running agent" in r.stdout, r.stdout
        # The running agent, not the command, demotes node1.
        while json.loads((tmp_path / "status-node1.json").read_text())["desired_role"] != (
            "Secondary"
        ):
            assert time.monotonic() < deadline, "the agent never applied the choice"
            time.sleep(0.05)
    finally:
        agent.terminate()
        agent.wait(timeout=20)
