"""The executor: retries only transient errors, with backoff; runs the plan per dependency chain
(a failed step skips what depends on it, never the other chains), and a plan without chains stops
at the first failure."""

from __future__ import annotations

from pathlib import Path

from adapters.sim.world import Fault
from reconciler.agent import EXIT_FAILED
from reconciler.core.observed import Role
from reconciler.core.plan import Action, ActionKind, BlockKind, Plan
from reconciler.executor import apply
from tests.simcluster import NO_SLEEP_RETRY, SimCluster, demo_spec, two_resource_spec


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
    # The target comes before the VIP; the VIP's chain stopped at its failure (not announced).
    assert kinds(r.result.applied) == ["promote", "start-target", "export-lun"]
    assert kinds(s.action for s in r.result.skipped) == ["announce-vip", "plug-pbd"]
    assert c.world.nodes["node1"].vips == []


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


# --- dependency chains: one failing resource does not block the others ---------------------------


def test_a_failed_promote_skips_only_what_depends_on_it(tmp_path: Path) -> None:
    c = SimCluster.create(two_resource_spec(), tmp_path)
    c.world.faults.append(
        Fault(node="node1", op="drbd-primary", kind="terminal", count=-1, resource="iscsi2")
    )
    r = c.tick("node1")
    assert r.exit_code == EXIT_FAILED and r.result is not None
    assert r.result.failed is not None and r.result.failed.action.describe() == "promote iscsi2"
    # The VIP, the target and LUN 1 do not need iscsi2: they ran. LUN 2 needs it: skipped.
    assert kinds(r.result.applied) == [
        "promote",
        "start-target",
        "export-lun",
        "add-vip",
        "announce-vip",
    ]
    assert [s.action.describe() for s in r.result.skipped] == ["export-lun LUN 2 (iscsi2)"]
    skipped = r.result.skipped[0]
    assert skipped.attempts == 0 and "depends on promote iscsi2, which failed" in (
        skipped.error or ""
    )
    assert "export-lun LUN 2 (iscsi2): not run" in " ".join(r.result.errors)
    n1 = c.world.nodes["node1"]
    assert n1.exported == {1: "iscsi1"} and n1.vips == ["198.51.100.3"]
    assert c.world.serving_node("iscsi1") == "node1"
    assert c.world.serving_node("iscsi2") is None


def test_when_every_promote_fails_no_vip_and_no_target_start(tmp_path: Path) -> None:
    c = SimCluster.create(two_resource_spec(), tmp_path)
    c.world.faults.append(Fault(node="node1", op="drbd-primary", kind="terminal", count=-1))
    r = c.tick("node1")
    assert r.result is not None
    assert [s.action.describe() for s in r.result.steps if not s.skipped] == [
        "promote iscsi1",
        "promote iscsi2",
    ]
    assert kinds(s.action for s in r.result.skipped) == [
        "start-target",
        "export-lun",
        "export-lun",
        "add-vip",
        "announce-vip",
    ]
    n1 = c.world.nodes["node1"]
    assert n1.vips == [] and not n1.target_running and n1.exported == {}


def test_a_plan_without_chains_stops_at_its_first_failure(tmp_path: Path) -> None:
    """Hand-built plans (the guided recovery) leave ``after`` unset: one chain, as always."""
    spec = demo_spec()
    c = SimCluster.create(spec, tmp_path)
    c.world.faults.append(Fault(node="node1", op="drbd-primary", kind="terminal", count=1))
    p = Plan(
        node="node1",
        desired_role=Role.PRIMARY,
        role_reason="test",
        actions=(
            Action(ActionKind.PROMOTE, "r", resource="iscsi1"),
            Action(ActionKind.ADD_VIP, "r", vip="198.51.100.3"),
        ),
    )
    report = apply(p, spec, c.adapters["node1"], retry=NO_SLEEP_RETRY, sleep=c.sleeps.append)
    assert [s.action.kind for s in report.steps] == [ActionKind.PROMOTE]
    assert report.failed is not None and report.skipped == ()
    assert c.world.nodes["node1"].vips == []


def test_a_dead_tgtd_is_restarted_while_another_resource_cannot_start(tmp_path: Path) -> None:
    c = SimCluster.create(two_resource_spec(), tmp_path)
    # iscsi2 is not configured on node1 (drbdadm up fails for good there).
    c.world.nodes["node1"].resources["iscsi2"].up = False
    c.world.settle()
    c.world.faults.append(
        Fault(node="node1", op="drbd-up", kind="terminal", count=-1, resource="iscsi2")
    )
    first = c.tick("node1")
    assert first.result is not None
    assert first.result.failed is not None
    assert first.result.failed.action.describe() == "start-drbd iscsi2"
    assert c.world.serving_node("iscsi1") == "node1"
    # LUN 2 is not exported, and the plan says so (a refusal the alerts report).
    assert [(b.kind, b.what, b.resource) for b in first.plan.blocked] == [
        (BlockKind.NOT_PRIMARY_HERE, "export-lun", "iscsi2")
    ]
    assert "LUN 2 is not exported" in first.plan.blocked[0].reason
    c.world.target_stop("node1")  # tgtd dies
    again = c.tick("node1")
    assert again.result is not None
    assert [s.action.describe() for s in again.result.steps] == [
        "start-drbd iscsi2",
        "start-target",
        "export-lun LUN 1 (iscsi1)",
    ]
    assert kinds(again.result.applied) == ["start-target", "export-lun"]
    assert c.world.nodes["node1"].target_running
    assert c.world.serving_node("iscsi1") == "node1"
