"""The executor: retries only transient errors, with backoff, and stops at the first failure."""

from __future__ import annotations

from pathlib import Path

from adapters.sim.world import Fault
from reconciler.agent import EXIT_FAILED
from reconciler.core.plan import ActionKind
from tests.simcluster import SimCluster, demo_spec


def kinds(actions) -> list[str]:  # type: ignore[no-untyped-def]
    return [a.kind.value for a in actions]


def test_transient_error_is_retried_with_backoff(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.faults.append(Fault(node="node1", op="vip-add", kind="transient", count=2))
    r = c.tick("node1")
    assert r.result is not None and r.result.failed is None
    step = next(s for s in r.result.steps if s.action.kind is ActionKind.ADD_VIP)
    assert step.attempts == 3
    assert len(c.sleeps) == 2 and all(s > 0 for s in c.sleeps)


def test_persistent_transient_error_gives_up_and_stops(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.faults.append(Fault(node="node1", op="vip-add", kind="timeout", count=-1))
    r = c.tick("node1")
    assert r.exit_code == EXIT_FAILED
    assert r.result is not None and r.result.failed is not None
    assert r.result.failed.action.kind is ActionKind.ADD_VIP
    assert r.result.failed.attempts == 3
    assert "timed out" in (r.result.failed.error or "")
    # Stopped at the first failure: no target was started after the failed VIP.
    assert kinds(r.result.applied) == ["promote"]
    assert c.world.nodes["node1"].target_running is False


def test_terminal_error_is_not_retried_and_nothing_follows_a_failed_promote(
    tmp_path: Path,
) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.faults.append(Fault(node="node1", op="drbd-primary", kind="terminal", count=1))
    r = c.tick("node1")
    assert r.exit_code == EXIT_FAILED
    assert r.result is not None and r.result.failed is not None
    assert r.result.failed.attempts == 1 and c.sleeps == []
    assert kinds(r.result.applied) == []
    w = c.world.nodes["node1"]
    assert w.vips == [] and not w.target_running
    # The next tick re-observes and retries from scratch.
    again = c.tick("node1")
    assert again.result is not None and again.result.failed is None
    assert c.world.serving_node("iscsi1") == "node1"


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    before = c.world.model_dump_json(exclude={"step_count"})
    r = c.tick("node1", dry_run=True)
    assert r.result is None and len(r.plan.actions) == 6  # the bring-up and plug-pbd
    assert c.world.model_dump_json(exclude={"step_count"}) == before


def test_garbage_observation_blocks_instead_of_acting(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.faults.append(Fault(node="node1", op="drbd-observe", kind="garbage", count=1))
    r = c.tick("node1")
    assert kinds(r.plan.actions) == []
    # Nothing serves yet either: the host's unplugged PBD waits.
    assert [b.what for b in r.plan.blocked] == ["observe", "plug-pbd"]
    assert "unparseable" in r.plan.blocked[0].reason
