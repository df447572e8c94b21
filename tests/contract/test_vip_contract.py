"""VipAdapter contract: SimVip and IpVip (iproute2 + in-process ARP in a lab namespace)."""

from __future__ import annotations

import pytest

from reconciler.core.observed import VipObs
from tests.contract.envs import OTHER_VIP, VIP, VipEnv
from tests.waiting import wait_for


def test_add_then_observe_local(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    node1.add(VIP)
    assert node1.observe([VIP]) == (VipObs(address=VIP.ip, local=True, announced=False),)


def test_announced_only_after_an_announcement_that_follows_the_add(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    node1.add(VIP)
    assert node1.observe([VIP])[0].announced is False
    node1.announce(VIP)
    assert node1.observe([VIP])[0].announced is True
    node1.add(VIP)  # added again (even if it was there): not announced until announced again
    assert node1.observe([VIP])[0].announced is False
    node1.announce(VIP)
    node1.remove(VIP)
    assert node1.observe([VIP])[0].announced is None
    vip_env.add_by_hand("node1", VIP)  # an operator's address: never announced by the agent
    assert node1.observe([VIP])[0] == VipObs(address=VIP.ip, local=True, announced=False)


def test_add_twice_is_idempotent(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    node1.add(VIP)
    node1.add(VIP)
    assert node1.observe([VIP])[0].local is True
    node1.remove(VIP)  # one remove undoes both adds: the address was configured once
    assert node1.observe([VIP])[0].local is False


def test_remove_absent_is_ok(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    node1.remove(VIP)
    node1.add(VIP)
    node1.remove(VIP)
    node1.remove(VIP)
    assert node1.observe([VIP]) == (VipObs(address=VIP.ip, local=False, answered_elsewhere=False),)


def test_free_address_is_not_answered(vip_env: VipEnv) -> None:
    assert vip_env.adapter("node2").observe([VIP]) == (
        VipObs(address=VIP.ip, local=False, answered_elsewhere=False),
    )


def test_vip_held_by_the_peer_answers(vip_env: VipEnv) -> None:
    vip_env.add_by_hand("node1", VIP)
    (seen,) = vip_env.adapter("node2").observe([VIP])
    assert seen.local is False
    assert seen.answered_elsewhere is True


def test_a_peer_holding_the_vip_is_not_an_error(
    vip_env: VipEnv, request: pytest.FixtureRequest
) -> None:
    """Another host answering is an answer, not a failed observation: ``error`` stays None
    (every VIP error becomes a 'vip-unknown' alert, so a healthy secondary would log a
    warning every tick)."""
    vip_env.add_by_hand("node1", VIP)
    (seen,) = vip_env.adapter("node2").observe([VIP])
    assert (seen.address, seen.local, seen.answered_elsewhere, seen.error) == (
        VIP.ip,
        False,
        True,
        None,
    )


def test_observe_reports_each_vip_in_order(vip_env: VipEnv) -> None:
    node1 = vip_env.adapter("node1")
    node1.add(OTHER_VIP)
    got = node1.observe([VIP, OTHER_VIP])
    assert [(o.address, o.local) for o in got] == [(VIP.ip, False), (OTHER_VIP.ip, True)]
    assert node1.observe([]) == ()


def test_announce_moves_the_client(vip_env: VipEnv) -> None:
    node1, node2 = vip_env.adapter("node1"), vip_env.adapter("node2")
    node1.add(VIP)
    node1.announce(VIP)
    vip_env.client_contacts(VIP)
    assert vip_env.client_sees(VIP) == "node1"
    node1.remove(VIP)
    node2.add(VIP)
    # Moving the address alone leaves the client's cache on the old holder (the field's
    # stale-ARP complaint): only the announcement moves it.
    assert vip_env.client_sees(VIP) == "node1"
    node2.announce(VIP)
    wait_for(
        "the client to follow the announcement",
        lambda: vip_env.client_sees(VIP) == "node2",
        timeout=vip_env.settle,
    )


def test_announce_without_holding_the_vip(vip_env: VipEnv) -> None:
    """A gratuitous ARP claims the address whether or not it is configured: the real tool
    moves the client's cache anyway (to a node that then drops the traffic), and so does the
    simulated wire."""
    node1, node2 = vip_env.adapter("node1"), vip_env.adapter("node2")
    node1.add(VIP)
    vip_env.client_contacts(VIP)
    node2.announce(VIP)
    wait_for(
        "the client to follow the announcement",
        lambda: vip_env.client_sees(VIP) == "node2",
        timeout=vip_env.settle,
    )


def test_a_released_vip_is_not_announced_any_more(vip_env: VipEnv) -> None:
    """Releasing the VIP ends this node's announcement. Its later gratuitous ARP rounds would
    otherwise drag the client back after the new holder announced it: seen in the lab when
    the new primary's agent was SIGKILLed after its first frames (its own later rounds died
    with it); the old primary's round 200-400 ms later won, the client's entry pointed at a
    node without the VIP and went FAILED, and its I/O timed out."""
    node1 = vip_env.adapter("node1")
    node1.add(VIP)
    node1.announce(VIP)  # on the wire: more rounds are due after this returns
    node1.remove(VIP)
    vip_env.add_by_hand("node2", VIP)
    vip_env.client_learns(VIP, "node2")  # node2's announcement, its later rounds never sent
    vip_env.announcements_over("node1")  # node1's later rounds were due by now
    assert vip_env.client_sees(VIP) == "node2"
