"""Property-based tests of the planner and the executor over the simulated cluster.

- plan() is deterministic: equal inputs give equal plans (it is pure).
- plan() never emits an action a safety predicate refuses, for arbitrary observations.
- Executing any prefix of any plan, from any state reachable by the agents and by faults,
  never breaks a cluster-wide invariant (checked after every executed action).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sim.world import Fault, World
from reconciler.core.observed import (
    ConnState,
    DiskState,
    Liveness,
    ObservedState,
    OperatorState,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.plan import ActionKind
from reconciler.core.planner import plan
from reconciler.core.safety import invariant_violations
from reconciler.executor import apply
from tests.simcluster import NO_SLEEP_RETRY, SimCluster, demo_spec

SPEC = demo_spec()

roles = st.sampled_from(list(Role))
resource_obs = st.builds(
    ResourceObs,
    name=st.just("iscsi1"),
    up=st.booleans(),
    role=roles,
    conn=st.sampled_from(list(ConnState)),
    disk=st.sampled_from(list(DiskState)),
    peer_role=roles,
    peer_disk=st.sampled_from(list(DiskState)),
    split_brain=st.booleans(),
    sync_percent=st.none() | st.floats(0, 100),
    known=st.booleans(),
    error=st.none() | st.just("boom"),
)
observations = st.builds(
    ObservedState,
    node=st.sampled_from(["node1", "node2"]),
    resources=st.tuples(resource_obs),
    vips=st.tuples(
        st.builds(
            VipObs,
            address=st.just("198.51.100.3"),
            local=st.none() | st.booleans(),
            answered_elsewhere=st.none() | st.booleans(),
        )
    ),
    target=st.builds(
        TargetObs,
        running=st.none() | st.booleans(),
        exported_luns=st.frozensets(st.sampled_from([1, 2]), max_size=2),
    ),
    role_source=st.builds(RoleVerdict, role=roles, detail=st.text(max_size=5)),
    operator=st.builds(
        OperatorState,
        manual_mode=st.booleans(),
        chosen_role=st.none() | st.sampled_from([Role.PRIMARY, Role.SECONDARY]),
        force=st.booleans(),
    ),
    liveness=st.builds(
        Liveness,
        peer_reachable=st.none() | st.booleans(),
        heuristics_ok=st.integers(0, 2),
        heuristics_total=st.integers(0, 2),
    ),
)


@given(observations)
def test_plan_is_deterministic(obs: ObservedState) -> None:
    assert plan(SPEC, obs) == plan(SPEC, obs)


@given(observations)
def test_plan_never_emits_a_refused_action(obs: ObservedState) -> None:
    p = plan(SPEC, obs)
    kinds = [a.kind for a in p.actions]
    res = obs.resources[0]
    if ActionKind.PROMOTE in kinds:
        assert res.known and res.up and res.role is Role.SECONDARY
        assert res.peer_role is not Role.PRIMARY and not res.split_brain
        assert res.disk is DiskState.UPTODATE
    if ActionKind.ADD_VIP in kinds:
        assert obs.vips[0].answered_elsewhere is False
        assert ActionKind.PROMOTE in kinds or res.role is Role.PRIMARY
    if ActionKind.EXPORT_LUN in kinds:
        assert ActionKind.PROMOTE in kinds or res.role is Role.PRIMARY
    # The way down is ordered: the target stops before the VIP goes and before any demote.
    for first, then in (
        (ActionKind.STOP_TARGET, ActionKind.DEMOTE),
        (ActionKind.REMOVE_VIP, ActionKind.DEMOTE),
        (ActionKind.PROMOTE, ActionKind.ADD_VIP),
        (ActionKind.ADD_VIP, ActionKind.START_TARGET),
    ):
        if first in kinds and then in kinds:
            assert kinds.index(first) < kinds.index(then)
    assert not (ActionKind.PROMOTE in kinds and ActionKind.DEMOTE in kinds)


# --- prefixes of plans over reachable states --------------------------------------------------

NODES = ("node1", "node2")
ops = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from(NODES), st.integers(0, 6)),
    st.tuples(st.just("master"), st.sampled_from([*NODES, None])),
    st.tuples(st.just("crash"), st.sampled_from(NODES)),
    st.tuples(st.just("boot"), st.sampled_from(NODES)),
    st.tuples(st.just("replication"), st.booleans()),
    st.tuples(st.just("stranger"), st.booleans()),
    st.tuples(st.just("vip-removed-by-hand"), st.sampled_from(NODES)),
    st.tuples(st.just("kill-target"), st.sampled_from(NODES)),
    st.tuples(
        st.just("write"),
    ),
    st.tuples(
        st.just("fault"),
        st.sampled_from(NODES),
        st.sampled_from(
            [
                "drbd-primary",
                "drbd-secondary",
                "vip-add",
                "target-start",
                "target-stop",
                "drbd-observe",
                "target-observe",
            ]
        ),
        st.sampled_from(["transient", "terminal", "garbage"]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, min_size=1, max_size=40))
def test_any_prefix_of_any_plan_keeps_the_invariants(sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        c = SimCluster.create(SPEC, Path(tmp), world=World.fresh(SPEC))
        w = c.world

        def check(_step: object = None) -> None:
            problems = invariant_violations(w.facts())
            assert not problems, f"after {sequence}: {problems}"
            # No acknowledged write is lost: whoever is Primary holds every acked write.
            acked = set(w.acked["iscsi1"])
            for name, nd in w.nodes.items():
                res = nd.resources["iscsi1"]
                if nd.alive and res.up and res.role is Role.PRIMARY:
                    missing = acked - set(res.history)
                    assert not missing, f"{name} is Primary without acked writes {missing}"

        for op in sequence:
            kind = op[0]
            if kind == "tick":
                node, prefix = op[1], op[2]
                from reconciler.observe import observe

                adapters = c.adapters[node]
                p = plan(SPEC, observe(SPEC, adapters))
                cut = type(p)(p.node, p.desired_role, p.role_reason, p.actions[:prefix])
                apply(
                    cut,
                    SPEC,
                    adapters,
                    retry=NO_SLEEP_RETRY,
                    sleep=lambda s: None,
                    after_step=check,
                )
            elif kind == "master":
                w.pool_master = op[1]
            elif kind == "crash":
                w.crash(op[1])
            elif kind == "boot":
                w.boot(op[1])
            elif kind == "replication":
                w.set_links(replication=op[1])
            elif kind == "stranger":
                w.strangers = ["198.51.100.3"] if op[1] else []
            elif kind == "vip-removed-by-hand":
                if w.nodes[op[1]].alive:
                    w.vip_remove(op[1], "198.51.100.3")
            elif kind == "kill-target":
                if w.nodes[op[1]].alive:
                    w.target_stop(op[1])
            elif kind == "write":
                w.client_write("iscsi1")
            elif kind == "fault":
                w.faults.append(Fault(node=op[1], op=op[2], kind=op[3], count=1))
            check()
