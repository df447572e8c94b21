"""TargetAdapter contract: SimTarget and TgtAdapter (a real tgtd in a lab namespace).

The daemon is resident: ``start_daemon`` starts it with no target, ``start`` defines the
target (starting the daemon only when it is down), ``stop`` deletes the target and leaves the
daemon. ``TargetObs.running`` is the target, ``TargetObs.daemon`` the daemon."""

from __future__ import annotations

import pytest

from reconciler.core.errors import TransientError
from reconciler.core.observed import TargetObs
from tests.contract.envs import TargetEnv

NONE: frozenset[int] = frozenset()
DOWN = TargetObs(running=False, daemon=False)
IDLE = TargetObs(running=False, daemon=True)  # the resident daemon, no target defined


def serving(*luns: int) -> TargetObs:
    return TargetObs(running=True, daemon=True, exported_luns=frozenset(luns))


def test_observe_before_start(target_env: TargetEnv) -> None:
    assert target_env.adapter("node1").observe(target_env.target) == DOWN


def test_start_daemon_runs_no_target_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start_daemon()
    assert tgt.observe(spec) == IDLE
    tgt.start_daemon()
    assert tgt.observe(spec) == IDLE
    tgt.start(spec)  # a takeover: the target defined on the resident daemon
    assert tgt.observe(spec) == serving()
    tgt.start_daemon()  # keeps the target
    assert tgt.observe(spec) == serving()


def test_start_runs_an_empty_target_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    assert tgt.observe(spec) == serving()
    tgt.start(spec)
    assert tgt.observe(spec) == serving()


def test_export_lun_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.observe(spec) == serving(1)
    tgt.start(spec)  # starting a running target keeps its LUNs
    assert tgt.observe(spec).exported_luns == {1}


def test_unexport_lun_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.unexport_lun(spec, target_env.lun)  # no daemon: nothing to do
    tgt.start(spec)
    tgt.unexport_lun(spec, target_env.lun)  # no LUN: nothing to do
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    tgt.unexport_lun(spec, target_env.lun)
    assert tgt.observe(spec) == serving()


def test_stop_deletes_the_target_and_keeps_the_daemon_idempotently(
    target_env: TargetEnv,
) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.stop(spec)  # never started
    assert tgt.observe(spec) == DOWN
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    tgt.stop(spec)
    assert tgt.observe(spec) == IDLE
    tgt.stop(spec)
    assert tgt.observe(spec) == IDLE
    tgt.start(spec)  # a target defined again comes back empty: LUNs are exported again
    assert tgt.observe(spec) == serving()


def test_export_without_a_daemon_is_transient(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    with pytest.raises(TransientError):
        tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.observe(spec) == DOWN


def test_a_dead_daemon_is_observed_and_restarted(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.observe(spec) == serving(1)
    target_env.daemon_dies("node1")
    assert tgt.observe(spec) == DOWN
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.observe(spec) == serving(1)
    target_env.daemon_dies("node1")
    tgt.start_daemon()  # on a node that does not serve: the daemon alone
    assert tgt.observe(spec) == IDLE
