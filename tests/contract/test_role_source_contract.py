"""RoleSourceAdapter contract: the simulated pool and XenServer's pool.conf files."""

from __future__ import annotations

from reconciler.core.observed import Role
from tests.contract.envs import RoleEnv


def test_master_is_primary_and_slave_secondary(role_env: RoleEnv) -> None:
    role_env.make_master("node1")
    one, two = role_env.adapter("node1").observe(), role_env.adapter("node2").observe()
    assert (one.role, two.role) == (Role.PRIMARY, Role.SECONDARY)
    assert one.detail and two.detail


def test_a_new_master_is_seen_at_the_next_observation(role_env: RoleEnv) -> None:
    node1, node2 = role_env.adapter("node1"), role_env.adapter("node2")
    role_env.make_master("node1")
    assert node1.observe().role is Role.PRIMARY
    role_env.make_master("node2")
    assert (node1.observe().role, node2.observe().role) == (Role.SECONDARY, Role.PRIMARY)


def test_unreadable_view_is_unknown(role_env: RoleEnv) -> None:
    role_env.make_master("node1")
    role_env.unreadable("node1")
    verdict = role_env.adapter("node1").observe()
    assert verdict.role is Role.UNKNOWN and verdict.detail


def test_no_view_is_unknown(role_env: RoleEnv) -> None:
    role_env.no_view("node1")
    for node in ("node1", "node2"):
        verdict = role_env.adapter(node).observe()
        assert verdict.role is Role.UNKNOWN and verdict.detail
