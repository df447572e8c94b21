"""The witness's settle time counted from the disconnect or from the claim (``safety._witness``
through ``may_promote``): where the continuity is known the count from the disconnect decides
(with the key held for the watchdog's hold too), and a heal after the claim voids the claim;
a resource whose continuity is not known (``disconnected_for`` None: a polling adapter) keeps
the claim rule. Per resource: one disconnected long is promoted, one disconnected briefly
waits."""

from __future__ import annotations

import pytest

from reconciler.core.observed import (
    ConnState,
    DiskState,
    Liveness,
    ResourceObs,
    Role,
    WitnessObs,
)
from reconciler.core.plan import BlockKind
from reconciler.core.safety import Verdict, WitnessTiming, may_promote
from reconciler.core.spec import DisconnectedPolicy
from tests.simcluster import witness_spec

ME = "node2"
# specs/witness.yaml's timings: settle (1 + 2 + 3.5 / 0.99) x 1.01 (its watchdog covers a paused
# node), hold (3.5 / 0.99 - 1) x 1.01.
TIMING = WitnessTiming.from_spec(witness_spec().spec)
NO_LIVENESS = Liveness(peer_reachable=None, heuristics_ok=0, heuristics_total=0)


def cut(name: str = "iscsi1", gone: float | None = None) -> ResourceObs:
    return ResourceObs(
        name=name,
        up=True,
        role=Role.SECONDARY,
        conn=ConnState.WF_CONNECTION,
        disk=DiskState.UPTODATE,
        peer_role=Role.UNKNOWN,
        peer_disk=DiskState.DUNKNOWN,
        disconnected_for=gone,
    )


def held(seconds: float | None) -> WitnessObs:
    """This node holds the key, claimed ``seconds`` ago (None: a lease of unknown age)."""
    left = None if seconds is None else TIMING.ttl - seconds
    return WitnessObs(enabled=True, reachable=True, holder=ME, lease_left=left)


def verdict(res: ResourceObs, witness: WitnessObs) -> Verdict:
    return may_promote(
        res,
        policy=DisconnectedPolicy.WITNESS,
        liveness=NO_LIVENESS,
        witness=witness,
        node=ME,
        witness_timing=TIMING,
    )


def test_the_shipped_timings() -> None:
    assert TIMING.settle == pytest.approx((3 + 3.5 / 0.99) * 1.01)  # 6.60 s
    assert TIMING.hold == pytest.approx((3.5 / 0.99 - 1) * 1.01)  # 2.56 s


def test_held_for_the_settle_time_promotes_where_continuity_is_not_known() -> None:
    """The polling adapter (``disconnected_for`` None): today's rule, counted from the claim."""
    v = verdict(cut(gone=None), held(6.7))
    assert v.ok and v.claim
    assert "claimed 6.7 s ago >= settle 6.6 s" in v.reason


def test_a_heal_after_the_claim_voids_the_claim_where_continuity_is_known() -> None:
    """Held for the settle time, but the connection came back and went again since the claim
    (disconnected for less than it has held the key): counted from the re-cut."""
    v = verdict(cut(gone=1.0), held(8.0))
    assert v.refusal is BlockKind.WITNESS_SETTLING and not v.claim
    assert "iscsi1 is disconnected for 1.0 s: waiting until it has been disconnected 6.6 s" in (
        v.reason
    )
    assert verdict(cut(gone=8.0), held(8.0)).ok


def test_disconnected_for_the_settle_time_promotes_once_the_hold_passed() -> None:
    v = verdict(cut(gone=6.7), held(2.6))
    assert v.ok and v.claim  # the claim is refreshed right before the promotion
    assert "iscsi1 has been disconnected for 6.7 s >= settle 6.6 s" in v.reason
    early = verdict(cut(gone=100.0), held(2.5))  # the watchdog's window is not over
    assert early.refusal is BlockKind.WITNESS_SETTLING
    assert "disconnected for 100.0 s" in early.reason and "key held 2.6 s" in early.reason


def test_disconnected_shorter_than_the_settle_time_waits() -> None:
    v = verdict(cut(gone=6.5), held(2.9))
    assert v.refusal is BlockKind.WITNESS_SETTLING and not v.claim
    assert "claimed the witness key 2.9 s ago and iscsi1 is disconnected for 6.5 s" in v.reason
    assert verdict(cut(gone=6.5), held(5.0)).refusal is BlockKind.WITNESS_SETTLING


def test_continuity_not_known_keeps_the_claim_rule() -> None:
    """A polling adapter (``drbdsetup status`` only) cannot see a heal between two polls."""
    v = verdict(cut(gone=None), held(6.5))
    assert v.refusal is BlockKind.WITNESS_SETTLING
    assert "not known to have been continuously disconnected" in v.reason


def test_a_lease_of_unknown_age_or_a_free_key_never_promotes_on_the_disconnect() -> None:
    assert verdict(cut(gone=100.0), held(None)).refusal is BlockKind.WITNESS_SETTLING
    free = WitnessObs(enabled=True, reachable=True)
    assert verdict(cut(gone=100.0), free).refusal is BlockKind.WITNESS_CLAIM
    other = WitnessObs(enabled=True, reachable=True, holder="node1")
    assert verdict(cut(gone=100.0), other).refusal is BlockKind.WITNESS_HELD
    down = WitnessObs(enabled=True, reachable=False, lease_left=9.0, error="no majority")
    assert verdict(cut(gone=100.0), down).refusal is BlockKind.WITNESS_UNREACHABLE


def test_per_resource_one_disconnected_long_is_promoted_one_disconnected_briefly_waits() -> None:
    witness = held(2.6)
    long, short = verdict(cut("iscsi1", 30.0), witness), verdict(cut("iscsi2", 1.0), witness)
    assert long.ok and long.claim
    assert short.refusal is BlockKind.WITNESS_SETTLING
    assert "iscsi2 is disconnected for 1.0 s" in short.reason


def test_without_a_watchdog_the_hold_is_zero() -> None:
    timing = WitnessTiming.from_spec(witness_spec(watchdog=False).spec)
    assert timing.hold == 0.0 and timing.settle == pytest.approx(4.04)
    v = may_promote(
        cut(gone=4.1),
        policy=DisconnectedPolicy.WITNESS,
        liveness=NO_LIVENESS,
        witness=held(0.5),
        node=ME,
        witness_timing=timing,
    )
    assert v.ok and v.claim


def test_the_default_timing_grants_nothing_beyond_the_claim_rule() -> None:
    """Without a spec (``DEFAULT_WITNESS_TIMING``) the hold equals the settle time."""
    v = may_promote(
        cut(gone=100.0),
        policy=DisconnectedPolicy.WITNESS,
        liveness=NO_LIVENESS,
        witness=WitnessObs(enabled=True, reachable=True, holder=ME, lease_left=10.0 - 4.0),
        node=ME,
    )
    assert v.refusal is BlockKind.WITNESS_SETTLING


def test_a_free_key_is_claimed_and_promoted_on_in_one_plan_when_nothing_is_left_to_wait() -> None:
    """No watchdog (no hold) and the resource continuously disconnected for the settle time:
    the claim and the promotion are one plan (the promotion after the claim succeeded), one
    tick sooner than claiming and promoting at the next tick. Otherwise the free key is
    claimed alone, as before."""
    timing = WitnessTiming.from_spec(witness_spec(watchdog=False).spec)
    free = WitnessObs(enabled=True, reachable=True)

    def on_free(res: ResourceObs, t: WitnessTiming) -> Verdict:
        return may_promote(
            res,
            policy=DisconnectedPolicy.WITNESS,
            liveness=NO_LIVENESS,
            witness=free,
            node=ME,
            witness_timing=t,
        )

    v = on_free(cut(gone=4.1), timing)
    assert v.ok and v.claim
    assert "key is free and is claimed in this plan right before the promotion" in v.reason
    assert on_free(cut(gone=4.0), timing).refusal is BlockKind.WITNESS_CLAIM  # < settle 4.04
    assert on_free(cut(gone=None), timing).refusal is BlockKind.WITNESS_CLAIM  # polling
    assert on_free(cut(gone=100.0), TIMING).refusal is BlockKind.WITNESS_CLAIM  # a watchdog
