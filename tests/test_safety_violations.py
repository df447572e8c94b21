"""The cluster-wide checks of reconciler.core.safety return typed violations: a kind and the
nodes/resource/VIP/LUN involved (what decisions read) and a message for people (what golden
outputs show)."""

from __future__ import annotations

from reconciler.core.observed import Role
from reconciler.core.safety import (
    DataFacts,
    NodeFacts,
    Violation,
    ViolationKind,
    data_violations,
    invariant_violations,
)

VIP = "198.51.100.3"


def node(name: str, role: Role, *, vips: frozenset[str] = frozenset(), **kw: object) -> NodeFacts:
    return NodeFacts(
        name=name,
        roles={"iscsi1": role},
        vips=vips,
        target_running=bool(kw.get("exported")),
        exported=kw.get("exported", {}),  # type: ignore[arg-type]
        on_network=bool(kw.get("on_network", True)),
    )


def test_a_safe_cluster_has_no_violation() -> None:
    facts = [node("node1", Role.PRIMARY, vips=frozenset({VIP}), exported={1: "iscsi1"}),
             node("node2", Role.SECONDARY)]  # fmt: skip
    assert invariant_violations(facts) == []


def test_each_structural_violation_names_its_kind_and_subjects() -> None:
    facts = [
        node("node1", Role.PRIMARY, vips=frozenset({VIP})),
        node("node2", Role.PRIMARY, vips=frozenset({VIP})),
        node("node3", Role.SECONDARY, vips=frozenset({VIP}), exported={1: "iscsi1"}),
    ]
    got = invariant_violations(facts)
    assert [(v.kind, v.nodes, v.resource, v.vip, v.lun) for v in got] == [
        (ViolationKind.TWO_PRIMARIES, ("node1", "node2"), "iscsi1", None, None),
        (ViolationKind.VIP_ON_TWO_NODES, ("node1", "node2", "node3"), None, VIP, None),
        (ViolationKind.VIP_NOT_ON_PRIMARY, ("node3",), None, None, None),
        (ViolationKind.LUN_NOT_ON_PRIMARY, ("node3",), "iscsi1", None, 1),
    ]
    # The text people (and the golden outputs) read: unchanged by the typing.
    assert [str(v) for v in got] == [
        "two primaries for iscsi1: node1, node2",
        f"VIP {VIP} on two nodes: node1, node2, node3",
        "VIP on node3, which is not Primary",
        "node3 exports LUN 1 from iscsi1, which is not Primary",
    ]


def test_a_vip_off_the_client_network_conflicts_with_nobody() -> None:
    facts = [
        node("node1", Role.PRIMARY, vips=frozenset({VIP})),
        node("node2", Role.PRIMARY, vips=frozenset({VIP}), on_network=False),
    ]
    kinds = [v.kind for v in invariant_violations(facts)]
    assert kinds == [ViolationKind.TWO_PRIMARIES]


def test_data_violations_are_typed_too() -> None:
    facts = DataFacts(
        resource="iscsi1",
        acked=(1, 2, 3),
        destroyed=frozenset(),
        serves={"node2": frozenset({1})},
        disks={"node2": frozenset({1})},
    )
    stale, gone = data_violations(facts)
    assert stale == Violation(
        ViolationKind.SERVES_STALE_DATA,
        "node2 serves iscsi1 without 2 acknowledged write(s) (e.g. #2): stale data was "
        "promoted or acknowledged writes are lost",
        nodes=("node2",),
        resource="iscsi1",
    )
    assert (gone.kind, gone.resource, gone.nodes) == (ViolationKind.WRITES_ON_NO_DISK, "iscsi1", ())
    assert str(gone) == (
        "2 acknowledged write(s) of iscsi1 (e.g. #2) are on no disk any more: overwritten or "
        "discarded"
    )
