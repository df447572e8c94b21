"""The shell around the PBD actions (issue 12): observation of the hypervisor (a failure is
data), the executor's dispatch to ``adapters.hypervisor``, its retries of a transient 141."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adapters.sim.world import Fault
from reconciler.agent import EXIT_FAILED
from reconciler.alerts import alerts_for
from reconciler.core.observed import HypervisorObs, Role
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.spec import Target, Vip
from reconciler.executor import RetryPolicy, apply
from reconciler.observe import observe
from tests.simcluster import SimCluster, demo_spec


class _Broken:
    """A hypervisor adapter with a bug: its observe raises."""

    def observe(self, target: Target, vips: Sequence[Vip]) -> HypervisorObs:
        raise RuntimeError("boom")

    def plug(self, pbd_uuid: str) -> None:
        raise AssertionError("never called")

    def replug(self, pbd_uuid: str) -> None:
        raise AssertionError("never called")


def test_a_raising_hypervisor_adapter_is_an_observation_with_a_reason(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    adapters = c.adapters["node1"]
    adapters.hypervisor = _Broken()
    obs = observe(c.spec, adapters)
    assert obs.hypervisor.enabled and obs.hypervisor.pbds == ()
    assert "RuntimeError: boom" in (obs.hypervisor.error or "")
    assert obs.resources and obs.target.running is False  # the other concerns are unaffected


def test_no_hypervisor_adapter_observes_nothing_to_plug(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    adapters = c.adapters["node1"]
    adapters.hypervisor = None
    assert observe(c.spec, adapters).hypervisor == HypervisorObs()
    plan = Plan(
        node="node1",
        desired_role=Role.PRIMARY,
        role_reason="test",
        actions=(Action(ActionKind.PLUG_PBD, "test", pbd="x"),),
    )
    report = apply(plan, c.spec, adapters, retry=RetryPolicy(attempts=3), sleep=c.sleeps.append)
    assert report.failed is not None and report.failed.attempts == 1  # terminal: no retry
    assert "no hypervisor adapter" in (report.failed.error or "")


def test_a_transient_plug_failure_is_retried(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.faults.append(Fault(node="node1", op="pbd-plug", kind="transient", count=2))
    r = c.tick("node1")
    assert r.result is not None and r.result.failed is None
    step = r.result.steps[-1]
    assert step.action.kind is ActionKind.PLUG_PBD and step.attempts == 3
    assert c.world.pbds_attached("node1")


def test_a_plug_the_world_refuses_fails_the_tick_with_141(tmp_path: Path) -> None:
    """The peer's target died after node2 observed the VIP answering from it: node2's plug
    fails with SR_BACKEND_FAILURE_141 (retried, then given up); the next tick tries again."""
    c = SimCluster.create(demo_spec(), tmp_path)
    c.tick("node1")
    plan = c.tick("node2", dry_run=True).plan
    assert [a.kind for a in plan.actions] == [ActionKind.START_DAEMON, ActionKind.PLUG_PBD]
    c.world.target_stop("node1")
    report = apply(
        plan, c.spec, c.adapters["node2"], retry=RetryPolicy(attempts=2), sleep=c.sleeps.append
    )
    assert report.failed is not None and "SR_BACKEND_FAILURE_141" in (report.failed.error or "")
    assert not c.world.pbds_attached("node2")
    c.tick("node1")  # the target is restarted
    again = c.tick("node2")
    assert [a.kind for a in again.plan.actions] == [ActionKind.PLUG_PBD]
    assert again.exit_code != EXIT_FAILED and c.world.pbds_attached("node2")


def test_the_tick_record_shows_this_hosts_pbds(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    first = c.tick("node1").to_json()
    hyp = first["observed"]["hypervisor"]
    assert hyp["enabled"] is True and hyp["source"] == "sim" and hyp.get("error") is None
    (pbd,) = hyp["pbds"]
    assert pbd["attached"] is False and pbd["uuid"] == c.world.srs[0].pbds["node1"].uuid
    assert [a.get("pbd") for a in first["actions"]][-1] == pbd["uuid"]
    again = c.tick("node1").to_json()
    assert again["observed"]["hypervisor"]["pbds"][0]["attached"] is True


def test_xapi_unreachable_raises_an_alert(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.nodes["node1"].xapi_reachable = False
    alerts = alerts_for(c.tick("node1"))
    (alert,) = [a for a in alerts if "hypervisor-unreadable" in a.key]
    assert "XAPI unreachable" in alert.message and not alert.refusal
