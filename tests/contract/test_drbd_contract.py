"""DrbdAdapter contract: the simulator now; real DRBD in the VM tier (its parameter is skipped
here with the reason). Both nodes start configured but down, as after a first install."""

from __future__ import annotations

import pytest

from reconciler.core.errors import AdapterError
from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role
from tests.contract.envs import DrbdEnv


def state(env: DrbdEnv, node: str) -> ResourceObs:
    (obs,) = env.adapter(node).observe([env.resource])
    assert obs.error is None, obs.error
    return obs


def both_up(env: DrbdEnv) -> None:
    for node in ("node1", "node2"):
        env.adapter(node).up(env.resource)


def test_down_before_up(drbd_env: DrbdEnv) -> None:
    obs = state(drbd_env, "node1")
    assert obs.name == drbd_env.resource.name and obs.up is False


def test_up_connects_both_secondary(drbd_env: DrbdEnv) -> None:
    both_up(drbd_env)
    drbd_env.adapter("node1").up(drbd_env.resource)  # idempotent
    for node in ("node1", "node2"):
        obs = state(drbd_env, node)
        assert (obs.up, obs.role, obs.conn) == (True, Role.SECONDARY, ConnState.CONNECTED)
        assert (obs.disk, obs.peer_disk, obs.peer_role) == (
            DiskState.UPTODATE,
            DiskState.UPTODATE,
            Role.SECONDARY,
        )
        assert obs.split_brain is False


def test_primary_is_seen_by_the_peer(drbd_env: DrbdEnv) -> None:
    both_up(drbd_env)
    node1 = drbd_env.adapter("node1")
    node1.primary(drbd_env.resource)
    node1.primary(drbd_env.resource)  # idempotent
    assert state(drbd_env, "node1").role is Role.PRIMARY
    assert state(drbd_env, "node2").peer_role is Role.PRIMARY


def test_never_two_primaries(drbd_env: DrbdEnv) -> None:
    both_up(drbd_env)
    drbd_env.adapter("node1").primary(drbd_env.resource)
    with pytest.raises(AdapterError):
        drbd_env.adapter("node2").primary(drbd_env.resource)
    assert state(drbd_env, "node2").role is Role.SECONDARY


def test_swap_roles(drbd_env: DrbdEnv) -> None:
    both_up(drbd_env)
    node1, node2 = drbd_env.adapter("node1"), drbd_env.adapter("node2")
    node1.primary(drbd_env.resource)
    node1.secondary(drbd_env.resource)
    node1.secondary(drbd_env.resource)  # idempotent
    node2.primary(drbd_env.resource)
    assert (state(drbd_env, "node1").role, state(drbd_env, "node2").role) == (
        Role.SECONDARY,
        Role.PRIMARY,
    )


def test_disconnect_and_reconnect(drbd_env: DrbdEnv) -> None:
    both_up(drbd_env)
    node1 = drbd_env.adapter("node1")
    node1.disconnect(drbd_env.resource)
    assert state(drbd_env, "node1").conn is ConnState.STANDALONE
    peer = state(drbd_env, "node2")
    assert not peer.conn.is_connected and peer.peer_role is Role.UNKNOWN
    node1.connect(drbd_env.resource)
    assert state(drbd_env, "node1").conn is ConnState.CONNECTED
    assert state(drbd_env, "node2").conn is ConnState.CONNECTED
