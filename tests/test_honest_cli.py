"""Issue 11, points 1, 3, 4 and 5, through the real `reconcile` command (a subprocess).

Each test was written to reproduce the wrong behaviour first (status --json exit 0 when stale,
"converged: nothing to do" with exit 0 on a split brain, a missing drbdsetup as exit 3, a spec
without ``adapters`` run on the simulator, a traceback for an unusable state dir, --dry-run
alone dumping the help, --once --interval 5 silently ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.simcluster import ROOT, SimCluster, demo_spec

RECONCILE = shutil.which("reconcile") or ""
pytestmark = pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed")
DEMO = (ROOT / "specs" / "demo.yaml").read_text()


def run(
    state: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, TANDEM_STATE_DIR=str(state), COLUMNS="200")
    full.pop("TANDEM_SPEC", None)
    full.pop("TANDEM_NODE", None)
    full.update(env or {})
    return subprocess.run(
        [RECONCILE, *args], capture_output=True, text=True, env=full, timeout=timeout
    )


def age_record(state: Path, node: str, seconds: float) -> None:
    path = state / f"status-{node}.json"
    record = json.loads(path.read_text())
    record["time"] -= seconds
    path.write_text(json.dumps(record))


# --- point 1: honest status and exit codes ------------------------------------------------------


def test_status_json_says_age_and_stale_and_exits_1_when_stale(tmp_path: Path) -> None:
    run(tmp_path, "--once", "--node", "node1")
    fresh = run(tmp_path, "status", "--node", "node1", "--json")
    assert fresh.returncode == 0, fresh.stderr
    data = json.loads(fresh.stdout)
    assert data["stale"] is False and 0 <= data["age_seconds"] < 60
    assert data["node"] == "node1" and data["desired_role"] == "Primary"
    age_record(tmp_path, "node1", 3600)
    stale = run(tmp_path, "status", "--node", "node1", "--json")
    data = json.loads(stale.stdout)
    assert stale.returncode == 1
    assert data["stale"] is True and data["age_seconds"] >= 3600
    assert data["stale_limit_seconds"] > 0


def test_status_reports_a_corrupt_record_as_corrupt_in_both_modes(tmp_path: Path) -> None:
    (tmp_path / "status-node1.json").write_text('{"node": "node1", "desired_')
    text = run(tmp_path, "status", "--node", "node1")
    assert text.returncode == 1
    assert "unreadable status record" in text.stdout and "no status record yet" not in text.stdout
    js = run(tmp_path, "status", "--node", "node1", "--json")
    assert js.returncode == 1
    data = json.loads(js.stdout)
    assert data["record"] == "corrupt" and "not JSON" in data["problem"]
    assert data["path"].endswith("status-node1.json")
    missing = json.loads(run(tmp_path, "status", "--node", "node2", "--json").stdout)
    assert missing["record"] == "missing"


def degraded_state(tmp_path: Path) -> None:
    """The demo converged (node1 Primary), then the replication link down: node1 keeps serving
    with its peer's disk unknown (degraded, nothing the agent can do)."""
    c = SimCluster.create(demo_spec(), tmp_path)
    c.converge()
    w = c.world
    w.set_links(replication=False, management=True)
    (tmp_path / "sim-world.json").write_text(w.model_dump_json())


def test_a_converged_but_degraded_node_exits_4_and_says_why(tmp_path: Path) -> None:
    degraded_state(tmp_path)
    text = run(tmp_path, "--once", "--node", "node1")
    assert text.returncode == 4, text.stdout + text.stderr
    assert "converged: nothing to do" not in text.stdout
    assert "degraded" in text.stdout
    js = run(tmp_path, "--once", "--node", "node1", "--json")
    assert js.returncode == 4
    data = json.loads(js.stdout)
    assert data["exit_code"] == 4 and data["actions"] == []
    assert [d["kind"] for d in data["degraded"]] == ["degraded"]
    assert data["degraded"][0]["resource"] == "iscsi1"
    status = run(tmp_path, "status", "--node", "node1")
    assert "DEGRADED" in status.stdout and "replication of iscsi1" in status.stdout
    assert json.loads(run(tmp_path, "status", "--node", "node1", "--json").stdout)["degraded"]
    # An operator command that did what it was asked says DEGRADED but does not fail for it.
    assert run(tmp_path, "manual-mode", "enable", "--node", "node1").returncode == 0
    held = run(tmp_path, "become-primary", "--node", "node1")
    assert held.returncode == 0 and "DEGRADED" in held.stdout, held.stdout + held.stderr


def test_a_split_brained_node_exits_4_not_converged(tmp_path: Path) -> None:
    from tests.test_operator_cli import split_brained_world

    (tmp_path / "sim-world.json").write_text(split_brained_world(tmp_path).model_dump_json())
    r = run(tmp_path, "--once", "--node", "node2", "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 4, r.stdout
    assert "split-brain" in [d["kind"] for d in data["degraded"]]


def test_help_documents_exit_4(tmp_path: Path) -> None:
    r = run(tmp_path, "--help")
    assert re.search(r"4 converged but degraded", " ".join(r.stdout.split()))


def test_every_json_tick_has_a_timestamp(tmp_path: Path) -> None:
    before = time.time()
    data = json.loads(run(tmp_path, "--once", "--node", "node1", "--json").stdout)
    assert before - 1 <= data["time"] <= time.time() + 1
    stamp = datetime.fromisoformat(data["timestamp"])
    offset = stamp.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert data["timestamp"].endswith("Z")
    assert abs(stamp.timestamp() - data["time"]) < 0.001
    dry = json.loads(run(tmp_path, "--once", "--node", "node2", "--dry-run", "--json").stdout)
    assert "timestamp" in dry and "time" in dry


def test_watch_text_lines_carry_a_timestamp(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [RECONCILE, "--watch", "--node", "node1", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TANDEM_STATE_DIR=str(tmp_path)),
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    assert all(re.match(stamp, line) for line in lines), lines
    # The journald-friendly log lines (reconciler.agentlog): time, level, fields, message.
    assert re.match(stamp + r"INFO node=node1 SIMULATED", lines[0]), lines
    assert re.match(stamp + r"INFO node=node1 should be Primary", lines[1]), lines


def spec_with(tmp_path: Path, adapters: str | None) -> Path:
    """The demo spec with its ``adapters`` section replaced (None: removed)."""
    head, _ = DEMO.split("  adapters:\n")
    path = tmp_path / "spec.yaml"
    path.write_text(head + (adapters or ""))
    return path


def test_a_missing_tool_is_a_configuration_error_naming_the_package(tmp_path: Path) -> None:
    spec = spec_with(
        tmp_path,
        "  adapters:\n    drbd: drbd\n    vip: sim\n    target: sim\n    roleSource: sim\n",
    )
    bare = tmp_path / "bin"
    bare.mkdir()  # a PATH without drbdsetup (the reconcile script names its python itself)
    state = tmp_path / "state"
    r = run(state, "--once", "--node", "node1", "-f", str(spec), env={"PATH": str(bare)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "drbdsetup" in r.stderr and "drbd-utils" in r.stderr
    assert "Traceback" not in r.stderr and "safety" not in r.stdout + r.stderr
    op = run(state, "manual-mode", "enable", "--node", "node1", "-f", str(spec),
             env={"PATH": str(bare)})  # fmt: skip
    assert op.returncode == 2 and "drbd-utils" in op.stderr


def test_status_right_after_manual_mode_enable_does_not_say_off(tmp_path: Path) -> None:
    run(tmp_path, "--once", "--node", "node1")
    assert run(tmp_path, "manual-mode", "enable", "--node", "node1").returncode == 0
    text = run(tmp_path, "status", "--node", "node1")
    assert "manual mode off" not in text.stdout
    assert "manual mode on" in text.stdout
    data = json.loads(run(tmp_path, "status", "--node", "node1", "--json").stdout)
    assert data["operator"]["manual_mode"] is True


# --- point 3: defaults that can't fool ----------------------------------------------------------


def test_a_spec_without_adapters_uses_the_real_ones(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, None)
    state = tmp_path / "state"
    r = run(state, "--once", "--node", "node1", "-f", str(spec), "--dry-run", "--json",
            env={"PATH": str(tmp_path)})  # fmt: skip
    # Real adapters: the real tools are looked for (and missing on this PATH), no fake world.
    assert r.returncode == 2, r.stdout
    assert "drbd-utils" in r.stderr
    assert not (state / "sim-world.json").exists()
    got = run(state, "get", "-f", str(spec))
    assert "drbd: drbd" in got.stdout and "roleSource: pool-conf" in got.stdout


def test_every_output_of_a_simulated_run_says_so(tmp_path: Path) -> None:
    text = run(tmp_path, "--once", "--node", "node1")
    assert text.stdout.splitlines()[0].startswith("SIMULATED"), text.stdout
    js = json.loads(run(tmp_path, "--once", "--node", "node1", "--json").stdout)
    assert js["simulated"] is True
    status = run(tmp_path, "status", "--node", "node1")
    assert "SIMULATED" in status.stdout
    assert json.loads(run(tmp_path, "status", "--node", "node1", "--json").stdout)["simulated"]
    op = run(tmp_path, "manual-mode", "enable", "--node", "node1")
    assert "SIMULATED" in op.stdout


# --- point 4: an unusable state dir -------------------------------------------------------------


def unusable_dirs(tmp_path: Path) -> list[tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    return [(a_file, "not a directory"), (a_file / "sub", "not a directory")]


COMMANDS = [
    ("--once", "--node", "node1"),
    ("--watch", "--node", "node1"),
    ("manual-mode", "enable", "--node", "node1"),
    ("manual-mode", "show", "--node", "node1"),
    ("become-primary", "--node", "node1"),
    ("become-secondary", "--node", "node1"),
    ("split-brain", "iscsi1", "--survivor", "node2", "--node", "node1", "--dry-run"),
    ("status", "--node", "node1"),
    ("status", "--node", "node1", "--json"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_an_unusable_state_dir_is_exit_2_with_the_path(tmp_path: Path, args: tuple[str]) -> None:
    for path, problem in unusable_dirs(tmp_path):
        r = run(path, *args, timeout=30)
        assert r.returncode == 2, (path, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert f"state directory {path}" in r.stderr and problem in r.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_a_state_dir_without_write_permission_for_the_user(tmp_path: Path) -> None:
    """Root ignores permission bits: the agent runs as ``nobody`` on a root-owned 0755 dir."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    python = sys.executable
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*as_nobody, python, "-c", "import click, pydantic"],
                           capture_output=True, env=dict(os.environ), cwd="/")  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("user nobody cannot import tandem's dependencies here (root-only install)")
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            python,
            "-m",
            "reconciler.cli",
            "--once",
            "--node",
            "node1",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, TANDEM_STATE_DIR=str(locked), PYTHONPATH=str(ROOT)),
        timeout=60,
        cwd="/",
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"state directory {locked}" in r.stderr and "not writable" in r.stderr
    assert "Traceback" not in r.stderr


# --- point 5: usage that explains itself --------------------------------------------------------


def test_dry_run_without_once_explains_itself(tmp_path: Path) -> None:
    r = run(tmp_path, "--dry-run")
    assert r.returncode == 2
    assert "--dry-run goes with --once" in r.stderr
    assert "Quick tour" not in r.stdout + r.stderr  # not the whole help


def test_once_with_interval_is_refused(tmp_path: Path) -> None:
    r = run(tmp_path, "--once", "--node", "node1", "--interval", "5")
    assert r.returncode == 2
    assert "--interval is for --watch" in r.stderr
    assert not (tmp_path / "status-node1.json").exists()
