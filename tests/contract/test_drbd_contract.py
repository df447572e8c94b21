"""DrbdAdapter contract: the simulator here, real DRBD 8.4 in the VM tier (the same functions,
collected by ``tests/vm/test_drbd_contract_vm.py``; the ``real`` parameter is skipped here with
the reason). Both nodes start configured but down, as after a clean shutdown.

Real DRBD connects in the background and tells the peer about a demote asynchronously, so a
state that follows from another node's action is awaited (``settled``, bounded by the
environment's ``settle``: 0 for the simulator, which must show it at once)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reconciler.core.errors import AdapterError
from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role
from tests.contract.envs import DrbdEnv
from tests.waiting import wait_for


def state(env: DrbdEnv, node: str) -> ResourceObs:
    (obs,) = env.adapter(node).observe([env.resource])
    assert obs.error is None, obs.error
    return obs


def settled(
    env: DrbdEnv, node: str, check: Callable[[ResourceObs], bool], what: str
) -> ResourceObs:
    """``node``'s state once ``check`` holds, within ``env.settle`` seconds; the failure says
    what was seen last."""
    seen: list[ResourceObs] = []

    def holds() -> bool:
        seen[:] = [state(env, node)]
        return check(seen[0])

    try:
        wait_for(f"{node}: {what}", holds, timeout=env.settle)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen[0] if seen else None}") from None
    return seen[0]


def in_sync(obs: ResourceObs) -> bool:
    return (
        obs.conn is ConnState.CONNECTED
        and obs.disk is DiskState.UPTODATE
        and obs.peer_disk is DiskState.UPTODATE
    )


def both_up(env: DrbdEnv) -> None:
    """Both nodes up and connected, their disks UpToDate (what the other tests start from)."""
    for node in ("node1", "node2"):
        env.adapter(node).up(env.resource)
    for node in ("node1", "node2"):
        settled(env, node, in_sync, "Connected, UpToDate/UpToDate")


def test_down_before_up(drbd_env: DrbdEnv) -> None:
    obs = state(drbd_env, "node1")
    assert obs.name == drbd_env.resource.name and obs.up is False


def test_up_connects_both_secondary(drbd_env: DrbdEnv) -> None:
    for node in ("node1", "node2"):
        drbd_env.adapter(node).up(drbd_env.resource)
    drbd_env.adapter("node1").up(drbd_env.resource)  # idempotent
    for node in ("node1", "node2"):
        obs = settled(drbd_env, node, in_sync, "Connected, UpToDate/UpToDate")
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
    settled(drbd_env, "node2", lambda o: o.peer_role is Role.PRIMARY, "peer seen Primary")


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
    # The peer learns of the demote after `secondary` returned (real DRBD); promoting before
    # it did is refused like any promotion beside a Primary (test_never_two_primaries).
    settled(drbd_env, "node2", lambda o: o.peer_role is Role.SECONDARY, "peer seen Secondary")
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
    settled(
        drbd_env,
        "node2",
        lambda o: not o.conn.is_connected and o.peer_role is Role.UNKNOWN,
        "peer lost (not connected, peer role Unknown)",
    )
    node1.connect(drbd_env.resource)
    for node in ("node1", "node2"):
        settled(drbd_env, node, lambda o: o.conn is ConnState.CONNECTED, "Connected again")
