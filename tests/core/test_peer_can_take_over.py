"""``safety.peer_can_take_over``: the rule "never demote into an outage", one row per reason."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from reconciler.core.observed import (
    ConnState,
    DiskState,
    Liveness,
    ObservedState,
    ResourceObs,
    Role,
)
from reconciler.core.plan import BlockKind
from reconciler.core.safety import peer_can_take_over

HEALTHY = ResourceObs(
    name="iscsi1",
    up=True,
    role=Role.PRIMARY,
    conn=ConnState.CONNECTED,
    disk=DiskState.UPTODATE,
    peer_role=Role.SECONDARY,
    peer_disk=DiskState.UPTODATE,
)


def obs(*resources: ResourceObs, reachable: bool | None = True) -> ObservedState:
    return ObservedState(
        node="node1", resources=resources, liveness=Liveness(peer_reachable=reachable)
    )


def res(**change: Any) -> ResourceObs:
    return replace(HEALTHY, **change)


def test_a_connected_peer_with_uptodate_data_can_take_over() -> None:
    assert peer_can_take_over(obs(HEALTHY), peer="node2").ok


@pytest.mark.parametrize(
    ("resource", "reachable", "text"),
    [
        (res(conn=ConnState.WF_CONNECTION, peer_disk=DiskState.DUNKNOWN), True, "WFConnection"),
        (res(conn=ConnState.STANDALONE, peer_disk=DiskState.DUNKNOWN), True, "StandAlone"),
        (res(peer_disk=DiskState.OUTDATED), True, "its disk of iscsi1 is Outdated"),
        (res(peer_disk=DiskState.INCONSISTENT), True, "its disk of iscsi1 is Inconsistent"),
        (res(peer_disk=DiskState.DISKLESS), True, "its disk of iscsi1 is Diskless"),
        (
            res(conn=ConnState.SYNC_SOURCE, peer_disk=DiskState.INCONSISTENT, sync_percent=40.0),
            True,
            "still a SyncTarget (resyncing from this node, 40.0% done)",
        ),
        (HEALTHY, False, "it is unreachable"),
    ],
)
def test_the_peer_cannot_take_over(resource: ResourceObs, reachable: bool, text: str) -> None:
    verdict = peer_can_take_over(obs(resource, reachable=reachable), peer="node2")
    assert not verdict.ok and verdict.refusal is BlockKind.HOLDING
    assert verdict.reason.startswith("node2 cannot take over: ") and text in verdict.reason


def test_one_resource_the_peer_cannot_take_is_enough_to_hold() -> None:
    two = obs(HEALTHY, res(name="iscsi2", peer_disk=DiskState.OUTDATED))
    verdict = peer_can_take_over(two, peer="node2")
    assert not verdict.ok and "iscsi2" in verdict.reason


def test_what_this_node_cannot_serve_itself_gives_no_reason_to_hold() -> None:
    # Disconnected and diskless: reads fail here anyway; stepping down loses nothing.
    lost = res(conn=ConnState.WF_CONNECTION, disk=DiskState.DISKLESS, peer_disk=DiskState.DUNKNOWN)
    assert peer_can_take_over(obs(lost), peer="node2").ok
    # Not Primary here: nothing to hold.
    assert peer_can_take_over(obs(res(role=Role.SECONDARY, peer_disk=DiskState.OUTDATED))).ok
