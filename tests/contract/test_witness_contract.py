"""WitnessAdapter contract: the real 3-member etcd (``EtcdWitness``) and the simulated witness
pass the same tests (environments in ``witness_envs.py``)."""

from __future__ import annotations

import pytest

from reconciler.core.errors import TransientError
from tests.contract.witness_envs import WitnessEnv


def test_a_free_key_is_observed_free(witness_env: WitnessEnv) -> None:
    obs = witness_env.adapter("node1").observe()
    assert obs.enabled and obs.reachable is True
    assert obs.holder is None and obs.lease_left is None and obs.error is None


def test_claim_refresh_release(witness_env: WitnessEnv) -> None:
    node1 = witness_env.adapter("node1")
    node1.claim()
    held = node1.observe()
    assert held.reachable is True and held.holder == "node1"
    assert held.lease_left is not None and 0 < held.lease_left <= witness_env.ttl
    node1.claim()  # a refresh of its own lease
    again = node1.observe()
    assert again.holder == "node1" and again.lease_left is not None and again.lease_left > 0
    node1.release()
    free = node1.observe()
    assert free.reachable is True and free.holder is None and free.lease_left is None
    node1.release()  # idempotent
    assert witness_env.adapter("node2").observe().holder is None


def test_the_other_node_is_refused_while_the_lease_lives(witness_env: WitnessEnv) -> None:
    witness_env.adapter("node1").claim()
    node2 = witness_env.adapter("node2")
    with pytest.raises(TransientError, match="node1"):
        node2.claim()
    seen = node2.observe()
    assert seen.reachable is True and seen.holder == "node1" and seen.lease_left is None
    node2.release()  # holds nothing: releases nothing, and leaves node1's key alone
    assert witness_env.adapter("node1").observe().holder == "node1"


def test_takeover_after_the_lease_expired(witness_env: WitnessEnv) -> None:
    node1, node2 = witness_env.adapter("node1"), witness_env.adapter("node2")
    node1.claim()
    witness_env.expired()  # node1 stopped refreshing (paused, cut, dead)
    assert node2.observe().holder is None
    node2.claim()
    assert node2.observe().holder == "node2"
    late = node1.observe()
    assert late.holder == "node2" and late.lease_left is None
    with pytest.raises(TransientError, match="node2"):
        node1.claim()


def test_lost_majority_is_unreachable(witness_env: WitnessEnv) -> None:
    node1, node2 = witness_env.adapter("node1"), witness_env.adapter("node2")
    node1.claim()
    witness_env.lose_majority()
    try:
        obs = node1.observe()
        assert obs.enabled and obs.reachable is False and obs.error
        assert obs.holder is None  # unknown, not the last holder seen
        # What node1 can still count on, from its own last refresh: the deadline to stop by.
        assert obs.lease_left is not None and obs.lease_left <= witness_env.ttl
        assert node2.observe().reachable is False
        with pytest.raises(TransientError):
            node2.claim()
        with pytest.raises(TransientError):
            node1.claim()
    finally:
        witness_env.restore_majority()
    assert node2.observe().reachable is True


def test_a_node_cut_from_etcd_sees_it_unreachable_the_other_does_not(
    witness_env: WitnessEnv,
) -> None:
    node1, node2 = witness_env.adapter("node1"), witness_env.adapter("node2")
    node1.claim()
    witness_env.cut("node1")
    try:
        cut = node1.observe()
        assert cut.reachable is False and cut.holder is None and cut.lease_left is not None
        with pytest.raises(TransientError):
            node1.claim()
        assert node2.observe().reachable is True
        witness_env.expired()  # node1 cannot refresh: its lease runs out
        node2.claim()
        assert node2.observe().holder == "node2"
    finally:
        witness_env.heal("node1")
    healed = node1.observe()
    assert healed.reachable is True and healed.holder == "node2" and healed.lease_left is None


def test_full_outage(witness_env: WitnessEnv) -> None:
    node1, node2 = witness_env.adapter("node1"), witness_env.adapter("node2")
    node1.claim()
    witness_env.outage()
    try:
        for adapter in (node1, node2):
            obs = adapter.observe()
            assert obs.enabled and obs.reachable is False and obs.holder is None and obs.error
            with pytest.raises(TransientError):
                adapter.claim()
        with pytest.raises(TransientError):
            node1.release()
    finally:
        witness_env.recover()
    assert node2.observe().reachable is True


def test_a_restarted_agent_refreshes_and_releases_the_same_lease(witness_env: WitnessEnv) -> None:
    witness_env.adapter("node1").claim()
    restarted = witness_env.adapter("node1")  # a new process on the same state directory
    obs = restarted.observe()
    assert obs.holder == "node1" and obs.lease_left is not None
    restarted.claim()
    assert restarted.observe().lease_left is not None
    again = witness_env.adapter("node1")
    again.release()
    assert witness_env.adapter("node2").observe().holder is None


def test_a_lost_lease_record_is_recovered_from_etcd(witness_env: WitnessEnv) -> None:
    witness_env.adapter("node1").claim()
    witness_env.forget_lease("node1")
    wiped = witness_env.adapter("node1")
    obs = wiped.observe()
    # Nothing decided from memory: the key names node1, but what it can count on is unknown
    # until it refreshed the key's own lease.
    assert obs.holder == "node1" and obs.lease_left is None
    wiped.claim()
    assert wiped.observe().lease_left is not None
    wiped.release()
    assert witness_env.adapter("node2").observe().holder is None
