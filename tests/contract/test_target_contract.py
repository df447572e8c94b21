"""TargetAdapter contract: SimTarget and TgtAdapter (a real tgtd in a lab namespace)."""

from __future__ import annotations

import pytest

from reconciler.core.errors import TransientError
from reconciler.core.observed import TargetObs
from tests.contract.envs import TargetEnv

NONE: frozenset[int] = frozenset()


def test_observe_before_start(target_env: TargetEnv) -> None:
    assert target_env.adapter("node1").observe(target_env.target) == TargetObs(running=False)


def test_start_runs_an_empty_target_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    assert tgt.observe(spec) == TargetObs(running=True, exported_luns=NONE)
    tgt.start(spec)
    assert tgt.observe(spec) == TargetObs(running=True, exported_luns=NONE)


def test_export_lun_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.observe(spec) == TargetObs(running=True, exported_luns=frozenset({1}))
    tgt.start(spec)  # starting a running target keeps its LUNs
    assert tgt.observe(spec).exported_luns == {1}


def test_unexport_lun_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.unexport_lun(spec, target_env.lun)  # no daemon: nothing to do
    tgt.start(spec)
    tgt.unexport_lun(spec, target_env.lun)  # no LUN: nothing to do
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    tgt.unexport_lun(spec, target_env.lun)
    assert tgt.observe(spec) == TargetObs(running=True, exported_luns=NONE)


def test_stop_drops_everything_idempotently(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.stop(spec)  # never started
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    tgt.stop(spec)
    assert tgt.observe(spec) == TargetObs(running=False)
    tgt.stop(spec)
    tgt.start(spec)  # a restarted target comes back empty: LUNs are exported again
    assert tgt.observe(spec) == TargetObs(running=True, exported_luns=NONE)


def test_export_without_a_daemon_is_transient(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    with pytest.raises(TransientError):
        tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.observe(spec) == TargetObs(running=False)


def test_a_dead_daemon_is_observed_and_restarted(target_env: TargetEnv) -> None:
    tgt, spec = target_env.adapter("node1"), target_env.target
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    target_env.daemon_dies("node1")
    assert tgt.observe(spec) == TargetObs(running=False)
    tgt.start(spec)
    tgt.export_lun(spec, target_env.lun, target_env.resource)
    assert tgt.observe(spec) == TargetObs(running=True, exported_luns=frozenset({1}))
