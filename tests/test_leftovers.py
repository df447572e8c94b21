"""Issue 10, point 3 (remove what the spec no longer declares) and point 5's planner half
(repairs are flagged): stories on the simulated cluster, and the pure planner on crafted
observations. Each story first shows what the old planner did (the old address stayed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from adapters.sim.world import World
from reconciler.core.observed import (
    Leftovers,
    LeftoverTarget,
    LeftoverVip,
    ObservedState,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.plan import ActionKind
from reconciler.core.planner import plan
from reconciler.core.safety import invariant_violations
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import load_spec
from tests.simcluster import DEMO_TEXT, SimCluster, demo_spec

OLD_VIP = "198.51.100.3"
NEW_VIP = "198.51.100.9"
OLD_IQN = "iqn.2024-01.org.example.tandem:iscsi1"
NEW_IQN = "iqn.2024-01.org.example.tandem:renamed"


def edited(old: str, new: str) -> StorageCluster:
    assert old in DEMO_TEXT
    return load_spec(DEMO_TEXT.replace(old, new), filename="specs/demo.yaml")


def steps(c: SimCluster, node: str) -> list[str]:
    return [a.describe() for a in c.tick(node).plan.actions]


def served(tmp_path: Path) -> SimCluster:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.converge()
    assert c.world.serving_node("iscsi1") == "node1"
    return c


def with_spec(c: SimCluster, spec: StorageCluster, tmp_path: Path) -> SimCluster:
    """The same world under an edited spec (what an agent does once it reads the new file)."""
    return SimCluster.create(spec, tmp_path / "edited", world=c.world)


def test_a_changed_vip_address_is_removed_and_the_new_one_serves(tmp_path: Path) -> None:
    c = with_spec(served(tmp_path), edited(f"{OLD_VIP}/24", f"{NEW_VIP}/24"), tmp_path)
    assert steps(c, "node1") == [
        f"remove-old-vip {OLD_VIP}/24",
        f"add-vip {NEW_VIP}",
        f"announce-vip {NEW_VIP}",
    ]
    assert c.world.nodes["node1"].vips == [NEW_VIP]
    assert c.world.serving_node("iscsi1") == "node1"
    for node in ("node1", "node2"):
        assert steps(c, node) == []
    assert invariant_violations(c.world.facts()) == []


def test_an_address_tandem_did_not_create_is_never_removed(tmp_path: Path) -> None:
    c = served(tmp_path)
    c.world.vip_add("node1", "198.51.100.50")  # added by hand
    c = with_spec(c, edited(f"{OLD_VIP}/24", f"{NEW_VIP}/24"), tmp_path)
    c.converge()
    assert sorted(c.world.nodes["node1"].vips) == ["198.51.100.50", NEW_VIP]


def test_the_old_vip_goes_from_a_node_that_became_secondary(tmp_path: Path) -> None:
    c = served(tmp_path)
    c.world.pool_master = "node2"
    c = with_spec(c, edited(f"{OLD_VIP}/24", f"{NEW_VIP}/24"), tmp_path)
    c.converge()
    assert c.world.nodes["node1"].vips == []
    assert c.world.nodes["node2"].vips == [NEW_VIP]
    assert c.world.serving_node("iscsi1") == "node2"


def test_a_changed_iqn_deletes_the_old_target_then_defines_the_new(tmp_path: Path) -> None:
    c = with_spec(served(tmp_path), edited(OLD_IQN, NEW_IQN), tmp_path)
    assert steps(c, "node1") == [
        f"delete-old-target {OLD_IQN} (tid 1)",
        "start-target",
        "export-lun LUN 1 (iscsi1)",
    ]
    assert c.world.serving_node("iscsi1") == "node1"
    assert steps(c, "node1") == []


def test_a_dropped_lun_is_unexported(tmp_path: Path) -> None:
    resources = DEMO_TEXT.replace(
        "      disk: /dev/vdb\n",
        "      disk: /dev/vdb\n    - name: iscsi2\n      minor: 2\n      disk: /dev/vdc\n",
    )
    two = resources.replace(
        "    initiators: [ALL]",
        "      - lun: 2\n        resource: iscsi2\n        scsiId: tandem-two\n"
        "        scsiSn: TANDEM0002\n    initiators: [ALL]",
    )
    c = SimCluster.create(load_spec(two, filename="two.yaml"), tmp_path)
    c.converge()
    assert c.world.nodes["node1"].exported == {1: "iscsi1", 2: "iscsi2"}
    c = with_spec(c, load_spec(resources, filename="one-lun.yaml"), tmp_path)
    assert steps(c, "node1") == ["unexport-old-lun LUN 2"]
    assert c.world.nodes["node1"].exported == {1: "iscsi1"}
    assert steps(c, "node1") == []


def test_a_killed_target_daemon_is_restarted_as_a_repair(tmp_path: Path) -> None:
    c = served(tmp_path)
    c.world.target_stop("node1")  # tgtd killed behind the agent's back
    report = c.tick("node1")
    kinds = [(a.kind, a.repair) for a in report.plan.actions]
    assert kinds == [(ActionKind.START_TARGET, True), (ActionKind.EXPORT_LUN, False)]
    assert c.world.serving_node("iscsi1") == "node1"


def test_a_removed_vip_is_re_added_as_a_repair(tmp_path: Path) -> None:
    c = served(tmp_path)
    c.world.vip_remove("node1", OLD_VIP)
    report = c.tick("node1")
    assert [(a.kind, a.repair) for a in report.plan.actions] == [
        (ActionKind.ADD_VIP, True),
        (ActionKind.ANNOUNCE_VIP, False),
    ]


def test_a_bring_up_is_no_repair(tmp_path: Path) -> None:
    spec = demo_spec()
    c = SimCluster.create(spec, tmp_path, world=World.fresh(spec, drbd_up=False))
    for _ in range(6):
        for node in spec.node_names:
            assert not any(a.repair for a in c.tick(node).plan.actions)
    assert c.world.serving_node("iscsi1") == "node1"


# --- the pure planner --------------------------------------------------------------------

SECONDARY = ObservedState(
    node="node2",
    resources=(ResourceObs(name="iscsi1", up=True, role=Role.SECONDARY, peer_role=Role.PRIMARY),),
    vips=(VipObs(address=OLD_VIP, local=False, answered_elsewhere=True),),
    target=TargetObs(running=False),
    role_source=RoleVerdict(Role.SECONDARY, "pool slave of node1"),
)


def test_leftovers_are_removed_on_a_secondary_in_tear_down_order() -> None:
    left = Leftovers(
        vips=(LeftoverVip("198.51.100.7/24", "eth0"),),
        targets=(LeftoverTarget(2, "iqn.2024-01.org.example.tandem:old"),),
    )
    p = plan(demo_spec(), replace(SECONDARY, leftovers=left))
    assert [a.kind for a in p.actions] == [ActionKind.DELETE_OLD_TARGET, ActionKind.REMOVE_OLD_VIP]
    assert p.actions[1].interface == "eth0" and p.actions[1].vip == "198.51.100.7/24"
    assert all("spec no longer declares" in a.reason for a in p.actions)


def test_no_leftovers_no_removal() -> None:
    assert plan(demo_spec(), SECONDARY).actions == ()
