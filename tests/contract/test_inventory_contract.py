"""Inventory contract (issue 10, point 3): the VIP and target adapters, simulated and real,
record what they created and report as leftovers only that, once the spec no longer declares
it; ``remove_old`` / ``unexport_old_lun`` / ``delete_old_target`` remove it and forget it."""

from __future__ import annotations

from reconciler.core.observed import LeftoverLun, Leftovers, LeftoverTarget, LeftoverVip, TargetObs
from reconciler.core.spec import Lun, Target
from tests.contract.envs import OTHER_VIP, VIP, TargetEnv, VipEnv

NEW_IQN = "iqn.2024-01.org.example.tandem:renamed"
OTHER_LUN = Lun(lun=2, resource="iscsi1", scsi_id="tandem-other", scsi_sn="TANDEM0002")


def test_an_added_vip_is_a_leftover_once_undeclared(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    assert node1.leftovers([VIP]) == Leftovers()
    node1.add(VIP)
    assert node1.leftovers([VIP]) == Leftovers()  # still declared
    assert node1.leftovers([OTHER_VIP]) == Leftovers(
        vips=(LeftoverVip(address=str(VIP.address), interface=VIP.interface),)
    )
    node1.remove_old(str(VIP.address), VIP.interface)
    assert node1.observe([VIP])[0].local is False
    assert node1.leftovers([OTHER_VIP]) == Leftovers()
    node1.remove_old(str(VIP.address), VIP.interface)  # idempotent


def test_an_address_added_by_hand_is_never_a_leftover(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    vip_env.add_by_hand("node1", VIP)
    assert node1.leftovers([]) == Leftovers()
    node1.add(VIP)  # found already there: the agent did not create it
    assert node1.leftovers([OTHER_VIP]) == Leftovers()
    assert node1.observe([VIP])[0].local is True


def test_remove_forgets_a_declared_vip(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    node1.add(VIP)
    node1.remove(VIP)
    assert node1.leftovers([OTHER_VIP]) == Leftovers()


def test_an_undeclared_lun_is_a_leftover_until_unexported(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.leftovers(spec) == Leftovers()
    without = Target(iqn=spec.iqn, tid=spec.tid, luns=(OTHER_LUN,))
    assert tgt.leftovers(without) == Leftovers(
        luns=(LeftoverLun(tid=spec.tid, iqn=spec.iqn, lun=target_env.lun.lun),)
    )
    tgt.unexport_old_lun(spec.tid, spec.iqn, target_env.lun.lun)
    assert tgt.observe(without) == TargetObs(running=True, daemon=True, exported_luns=frozenset())
    assert tgt.leftovers(without) == Leftovers()


def test_a_target_with_a_changed_iqn_is_a_leftover_until_deleted(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    renamed = Target(iqn=NEW_IQN, tid=spec.tid, luns=spec.luns)
    assert tgt.leftovers(renamed) == Leftovers(
        targets=(LeftoverTarget(tid=spec.tid, iqn=spec.iqn),)
    )
    tgt.delete_old_target(spec.tid, spec.iqn)
    assert tgt.leftovers(renamed) == Leftovers()
    assert tgt.observe(spec).exported_luns == frozenset()
    tgt.start(renamed)
    tgt.export_lun(renamed, target_env.lun, target_env.resource)
    assert tgt.observe(renamed) == TargetObs(
        running=True, daemon=True, exported_luns=frozenset({1})
    )
    assert tgt.leftovers(renamed) == Leftovers()
    assert tgt.leftovers(spec) == Leftovers(targets=(LeftoverTarget(tid=spec.tid, iqn=NEW_IQN),))


def test_stop_forgets_every_target(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    tgt.stop(spec)
    renamed = Target(iqn=NEW_IQN, tid=spec.tid, luns=(OTHER_LUN,))
    assert tgt.leftovers(renamed) == Leftovers()
