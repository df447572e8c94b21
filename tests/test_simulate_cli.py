"""`reconcile simulate` as users run it: the shipped scenarios pass on the reference design and
on the demo spec, a wrong expectation fails naming its step, bad scenarios are usage errors,
random runs are reproducible from their seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.simcluster import ROOT

RECONCILE = shutil.which("reconcile") or ""
pytestmark = pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed")
SCENARIOS = sorted((ROOT / "specs" / "scenarios").glob("*.yaml"))
SPECS = [ROOT / "specs" / "xenserver-pool.yaml", ROOT / "specs" / "demo.yaml"]


def simulate(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # This working tree's code, whichever checkout the `reconcile` entry point was installed from.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, COLUMNS="200", PYTHONPATH=path)
    env.pop("TANDEM_SPEC", None)
    return subprocess.run(
        [RECONCILE, "simulate", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


REGRESSIONS = sorted((ROOT / "tests" / "fixtures" / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("scenario", REGRESSIONS, ids=lambda p: p.stem)
def test_recorded_regressions_hold(scenario: Path) -> None:
    """Replays the simulator recorded when it found a violation, kept once fixed."""
    r = simulate("--scenario", scenario)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "every expectation and invariant held" in r.stdout


def test_the_reference_stories_are_shipped() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {"master-failure", "slave-failure", "rolling-maintenance", "split-brain"} <= names


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_passes(scenario: Path, spec: Path) -> None:
    r = simulate("-f", spec, "--scenario", scenario)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "every expectation and invariant held" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_a_wrong_expectation_exits_1_naming_the_step(tmp_path: Path) -> None:
    text = (ROOT / "specs" / "scenarios" / "master-failure.yaml").read_text()
    wrong = text.replace(
        "  - expect: {primary: second, vip: second, serving: second, replication: degraded}",
        "  - expect: {primary: first, vip: second, serving: second, replication: degraded}",
    )
    assert wrong != text
    path = tmp_path / "wrong.yaml"
    path.write_text(wrong)
    line = next(
        i for i, t in enumerate(wrong.splitlines(), 1) if "primary: first, vip: second" in t
    )
    r = simulate("-f", SPECS[0], "--scenario", path)
    assert r.returncode == 1, r.stdout
    assert f"FAILED at step 12 (line {line}) expect" in r.stdout
    assert "primary should be XCP1, is XCP2" in r.stdout
    as_json = simulate("-f", SPECS[0], "--scenario", path, "--json")
    doc = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and doc["ok"] is False
    assert doc["failed_step"]["step"] == 12 and doc["failed_step"]["line"] == line


def test_json_lists_each_step_with_its_timeline() -> None:
    r = simulate("--scenario", SCENARIOS[0], "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["ok"] is True and doc["violations"] == []
    assert doc["failed_step"] is None
    first = doc["steps"][0]
    assert {"step", "line", "kind", "ok", "message", "timeline"} <= set(first)
    ticks = [rec for rec in first["timeline"] if rec["kind"] == "tick"]
    assert ticks and all("world" in rec and "node" in rec for rec in ticks)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("steps:\n  - tick: first\n    crash: second\n", ":6:"),
        ("steps:\n  - expect: {primary: first, bogus: 1}\n", ":6:"),
        ("steps:\n  - inject: {node: first, op: nope}\n", ":6:"),
        ("steps: [\n", ":"),
    ],
)
def test_an_invalid_scenario_exits_2_with_its_line(tmp_path: Path, body: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: tandem/v1\nkind: Scenario\nmetadata:\n  name: bad\n" + body)
    r = simulate("--scenario", path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{path}{where}" in r.stderr and "Traceback" not in r.stderr


def test_a_scenario_naming_an_unknown_node_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: tandem/v1\nkind: Scenario\nmetadata: {name: x}\nsteps:\n"
                    "  - crash: nodeX\n")  # fmt: skip
    r = simulate("--scenario", path)
    assert r.returncode == 2 and "'nodeX' is not a node of the spec" in r.stderr


def test_random_runs_are_reproducible_from_their_seed() -> None:
    a = simulate("--seed", "7", "--steps", "80", "--json")
    b = simulate("--seed", "7", "--steps", "80", "--json")
    assert a.returncode == 0, a.stdout[-2000:]
    assert a.stdout == b.stdout
    doc = json.loads(a.stdout)
    assert doc["seed"] == 7 and doc["ok"] and doc["k"] is not None and doc["k"] <= 3
    text = simulate("--seed", "7", "--steps", "80")
    assert text.returncode == 0 and "every expectation and invariant held" in text.stdout


def test_without_stonith_a_full_partition_fails_and_names_its_step(tmp_path: Path) -> None:
    """The same story with and without STONITH: a full partition of the primary, then HA-Lizard
    moves the pool master. With fencing resource-only the survivor's quorum takeover leaves two
    Primaries (the two-node problem, docs/simulation.md); with STONITH the old one is fenced."""
    body = """apiVersion: tandem/v1
kind: Scenario
metadata: {name: full-partition}
world: {fencing: FENCING}
steps:
  - converge: 3
  - isolate: first
  - replication: down
  - poolMaster: second
  - tick: second
  - expect: {primary: second, serving: second}
"""
    weak, strong = tmp_path / "weak.yaml", tmp_path / "strong.yaml"
    weak.write_text(body.replace("FENCING", "resource-only"))
    strong.write_text(body.replace("FENCING", "resource-and-stonith"))
    r = simulate("--scenario", weak)
    assert r.returncode == 1
    assert "FAILED at step 5 (line 10) tick" in r.stdout
    assert "two primaries for iscsi1: node1, node2" in r.stdout
    ok = simulate("--scenario", strong)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert "STONITH: powered node1 off" in ok.stdout
