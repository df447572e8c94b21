"""HypervisorAdapter contract: this host's PBDs of the SR served through the VIP and IQN,
plugged once the target serves, re-plugged when the SR broke on the host.

``hypervisor_env`` (tests/contract/conftest.py) offers: ``adapter(node)``, ``target`` and
``vips`` (what the spec serves), ``target_serves(bool)`` (whether a PBD.plug reaches the
target), ``sr_breaks(node)`` (the SR's volume group vanishes on the host while XAPI still
reports the PBD attached), ``attached(node)`` (the pool's view, from outside the adapter) and
``xapi_down()`` (every call answers garbage)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core.errors import TerminalError, TransientError

Env = Any  # the environments share a vocabulary, not a base class (see envs.py)


def _pbd(env: Env, node: str) -> Any:
    obs = env.adapter(node).observe(env.target, env.vips)
    assert obs.enabled and obs.error is None, obs
    (pbd,) = obs.pbds
    return pbd


def test_each_host_sees_its_own_unplugged_pbd(hypervisor_env: Env) -> None:
    one, two = _pbd(hypervisor_env, "node1"), _pbd(hypervisor_env, "node2")
    assert one.uuid != two.uuid and one.sr_uuid == two.sr_uuid and one.sr_name
    assert (one.attached, one.usable) == (False, None)


def test_plug_attaches_once_the_target_serves(hypervisor_env: Env) -> None:
    env = hypervisor_env
    env.target_serves(False)
    pbd = _pbd(env, "node1")
    with pytest.raises(TransientError):
        env.adapter("node1").plug(pbd.uuid)
    assert not env.attached("node1") and _pbd(env, "node1").attached is False
    env.target_serves(True)
    env.adapter("node1").plug(pbd.uuid)
    env.adapter("node1").plug(pbd.uuid)  # idempotent
    after = _pbd(env, "node1")
    assert (after.attached, after.usable) == (True, True)
    assert env.attached("node1") and not env.attached("node2")


def test_a_broken_sr_is_seen_and_replugged(hypervisor_env: Env) -> None:
    env = hypervisor_env
    pbd = _pbd(env, "node2")
    env.adapter("node2").plug(pbd.uuid)
    env.sr_breaks("node2")
    broken = _pbd(env, "node2")
    assert (broken.attached, broken.usable) == (True, False)
    env.adapter("node2").replug(pbd.uuid)
    fixed = _pbd(env, "node2")
    assert (fixed.attached, fixed.usable) == (True, True)


def test_plug_of_an_unknown_pbd_is_terminal(hypervisor_env: Env) -> None:
    with pytest.raises(TerminalError):
        hypervisor_env.adapter("node1").plug("00000000-0000-0000-0000-000000000000")


def test_an_unreadable_hypervisor_is_an_observation_with_a_reason(hypervisor_env: Env) -> None:
    hypervisor_env.xapi_down()
    obs = hypervisor_env.adapter("node1").observe(hypervisor_env.target, hypervisor_env.vips)
    assert obs.enabled and obs.pbds == () and obs.error
