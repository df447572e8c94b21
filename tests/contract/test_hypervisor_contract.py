"""HypervisorAdapter contract (issue 12): the simulated pool's XAPI, and (one parametrize entry
away) the XenAPI adapter over the fake XAPI server (both run). XAPI's rules the adapters must keep:
``PBD.plug`` needs the target serving the LUN on the VIP, else SR_BACKEND_FAILURE_141 (a
transient error); plug is a no-op when attached; a re-plug makes an unusable SR usable; observe
never raises."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciler.core.errors import AdapterError, TransientError
from reconciler.core.observed import HypervisorObs, PbdObs
from reconciler.core.spec import StorageCluster
from tests.contract.envs import SIM
from tests.contract.hypervisor_envs import HypervisorEnv, SimHypervisorEnv
from tests.contract.xapi_envs import XAPI, XapiHypervisorEnv


@pytest.fixture(params=[SIM, XAPI])
def hypervisor_env(
    request: pytest.FixtureRequest, cluster: StorageCluster
) -> Iterator[HypervisorEnv]:
    """The simulated pool, and the real XenAPI SDK + tandem's XAPI adapter over the fake XAPI
    server (tests/fakes/xapi.py): the same tests, the same rules."""
    if request.param == SIM:
        yield SimHypervisorEnv(cluster)
        return
    env = XapiHypervisorEnv(cluster.spec.target, cluster.spec.vips)
    try:
        yield env
    finally:
        env.close()


def observe(env: HypervisorEnv, node: str) -> HypervisorObs:
    return env.adapter(node).observe(env.target, env.vips)


def the_pbd(env: HypervisorEnv, node: str) -> PbdObs:
    obs = observe(env, node)
    assert obs.enabled and obs.error is None, obs
    (pbd,) = obs.pbds
    return pbd


def test_observe_lists_this_hosts_pbd_of_the_sr_unplugged(hypervisor_env: HypervisorEnv) -> None:
    obs = observe(hypervisor_env, "node1")
    assert obs.enabled and obs.error is None and obs.source
    (pbd,) = obs.pbds
    assert pbd.attached is False and pbd.sr_uuid and pbd.uuid and pbd.error is None
    other = the_pbd(hypervisor_env, "node2")
    assert other.sr_uuid == pbd.sr_uuid and other.uuid != pbd.uuid  # one PBD per host


def test_observe_skips_srs_of_other_targets(hypervisor_env: HypervisorEnv) -> None:
    mine = the_pbd(hypervisor_env, "node1")
    hypervisor_env.add_other_sr()
    assert observe(hypervisor_env, "node1").pbds == (mine,)


def test_plug_when_served_succeeds_idempotently(hypervisor_env: HypervisorEnv) -> None:
    env = hypervisor_env
    env.serve("node1")
    for node in ("node1", "node2"):  # the primary's own host, and the peer's through the VIP
        pbd = the_pbd(env, node)
        env.adapter(node).plug(pbd.uuid)
        assert the_pbd(env, node).attached is True
        env.adapter(node).plug(pbd.uuid)  # already attached: a no-op
        after = the_pbd(env, node)
        assert after.attached is True and after.usable is not False


def test_plug_when_not_served_fails_transient_with_141(hypervisor_env: HypervisorEnv) -> None:
    env = hypervisor_env
    pbd = the_pbd(env, "node2")
    with pytest.raises(TransientError, match="SR_BACKEND_FAILURE_141"):
        env.adapter("node2").plug(pbd.uuid)
    assert the_pbd(env, "node2").attached is False
    env.serve("node1")
    env.stop_serving()  # served once, not any more: the same refusal
    with pytest.raises(TransientError, match="SR_BACKEND_FAILURE_141"):
        env.adapter("node2").plug(pbd.uuid)


def test_an_attached_pbd_stays_attached_when_the_target_goes(
    hypervisor_env: HypervisorEnv,
) -> None:
    """XAPI keeps a PBD attached while its target moves or dies (I/O stalls)."""
    env = hypervisor_env
    env.serve("node1")
    pbd = the_pbd(env, "node2")
    env.adapter("node2").plug(pbd.uuid)
    env.stop_serving()
    assert the_pbd(env, "node2").attached is True


def test_replug_makes_an_unusable_sr_usable(hypervisor_env: HypervisorEnv) -> None:
    env = hypervisor_env
    env.serve("node1")
    pbd = the_pbd(env, "node1")
    env.adapter("node1").plug(pbd.uuid)
    env.break_sr("node1")
    broken = the_pbd(env, "node1")
    assert broken.attached is True and broken.usable is False
    env.adapter("node1").replug(pbd.uuid)
    fixed = the_pbd(env, "node1")
    assert fixed.attached is True and fixed.usable is True


def test_replug_when_not_served_leaves_it_unplugged(hypervisor_env: HypervisorEnv) -> None:
    env = hypervisor_env
    env.serve("node1")
    pbd = the_pbd(env, "node2")
    env.adapter("node2").plug(pbd.uuid)
    env.break_sr("node2")
    env.stop_serving()
    with pytest.raises(TransientError, match="SR_BACKEND_FAILURE_141"):
        env.adapter("node2").replug(pbd.uuid)
    assert the_pbd(env, "node2").attached is False


def test_an_unplug_by_hand_is_observed(hypervisor_env: HypervisorEnv) -> None:
    env = hypervisor_env
    env.serve("node1")
    pbd = the_pbd(env, "node1")
    env.adapter("node1").plug(pbd.uuid)
    env.unplug_by_hand("node1")
    assert the_pbd(env, "node1").attached is False


def test_xapi_unreachable_observe_never_raises_and_plug_fails(
    hypervisor_env: HypervisorEnv,
) -> None:
    env = hypervisor_env
    env.serve("node1")
    pbd = the_pbd(env, "node1")
    env.xapi_down("node1")
    obs = observe(env, "node1")
    assert obs.enabled and obs.error and obs.pbds == ()
    with pytest.raises(AdapterError):
        env.adapter("node1").plug(pbd.uuid)
    assert the_pbd(env, "node2").attached is False  # the other host's XAPI still answers
