"""The faults of the environment (what ``Simulation.fault`` applies to the simulated world).

Each fault changes the world the way the real event would (power loss, a cut link, a disk
failing, a VIP added by hand...), and returns its timeline text. No invariant is checked here:
the engine checks them after every fault.

Per-resource faults: ``disconnect``, ``detachDisk``, ``failDisk``, ``replaceDisk`` and ``inject``
take ``resource=NAME`` (one DRBD resource; None: every resource, as before). An unknown
resource is a ``ValueError`` (a caller's bug, or a scenario the loader should have refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapters.sim.world import Fault

if TYPE_CHECKING:
    from reconciler.simulation.engine import Simulation


def fault_label(name: str, kw: Mapping[str, Any]) -> str:
    """The fault class a step counts as (``Simulation.counts``)."""
    if name in ("replication", "management", "stranger"):
        return f"{name} {'up' if kw['value'] else 'down'}"
    one = " (one resource)" if kw.get("resource") is not None else ""
    if name == "inject":
        count = int(kw.get("count", 1))
        kind = kw.get("kind", "transient")
        return f"inject {kind}{' persistent' if count < 0 else ''}{one}"
    return name + one


PER_RESOURCE = ("disconnect", "detachDisk", "failDisk", "replaceDisk", "inject")
"""The faults that take ``resource=``."""


def _resources(sim: Simulation, name: str, kw: Mapping[str, Any]) -> tuple[list[str], str]:
    """The resources a fault applies to, and the words naming them in its timeline text."""
    resource = kw.get("resource")
    if resource is None:
        return list(sim.resources), ""
    if name not in PER_RESOURCE:
        raise ValueError(f"fault {name!r} does not take a resource")
    if resource not in sim.resources:
        raise ValueError(f"fault {name!r}: no resource {resource!r} in the spec")
    return [str(resource)], f" for {resource}"


def apply_fault(
    sim: Simulation,
    name: str,
    node: str | None,
    kw: Mapping[str, Any],
) -> str:
    """Apply fault ``name`` (on ``node``, with ``kw``) to the world; returns what happened.
    ``kw["resource"]``: the DRBD resource a disk, connection or injected fault is restricted
    to (absent or None: every resource; see ``PER_RESOURCE``)."""
    w = sim.w
    n = node or ""
    targets, which = _resources(sim, name, kw)
    if name == "crash":
        w.crash(n)
        sim.pending[n] = []
        return f"{n} crashed (power lost)"
    if name == "boot":
        w.boot(n)
        return f"{n} booted"
    if name == "replication":
        w.set_links(replication=bool(kw["value"]))
        return f"replication link {'healed' if kw['value'] else 'cut'}"
    if name == "management":
        w.set_links(management=bool(kw["value"]))
        return f"management path between the nodes {'healed' if kw['value'] else 'cut'}"
    if name == "isolate":
        w.isolate(n, True)
        return f"{n} isolated from the switch (no clients, heuristics or peer management)"
    if name == "rejoin":
        w.isolate(n, False)
        return f"{n} back on the switch"
    if name == "killTarget":
        if w.nodes[n].alive:
            w.target_daemon_dies(n)
        return f"tgtd died on {n}"
    if name == "removeVip":
        for v in sim.spec.spec.vips:
            if w.nodes[n].alive:
                w.vip_remove(n, v.ip)
        return f"VIP removed by hand on {n}"
    if name == "addVip":
        for v in sim.spec.spec.vips:
            if w.nodes[n].alive:
                w.vip_add(n, v.ip)
                sim.hand_vips.add((n, v.ip))
        return f"VIP added by hand on {n}"
    if name == "stranger":
        w.strangers = [v.ip for v in sim.spec.spec.vips] if kw["value"] else []
        return "another host answers on the VIP" if kw["value"] else "the VIP stranger left"
    if name == "disconnect":
        for r in targets:
            if w.nodes[n].alive and w.nodes[n].resources[r].up:
                w.drbd_disconnect(n, r)
        return f"DRBD disconnected by hand on {n}{which} (StandAlone)"
    if name == "detachDisk":
        for r in targets:
            w.detach_disk(n, r)
        return f"disk detached on {n}{which} (Diskless)"
    if name == "failDisk":
        for r in targets:
            w.fail_disk(n, r)
        return f"disk failed on {n}{which} (Failed, data gone)"
    if name == "replaceDisk":
        for r in targets:
            w.replace_disk(n, r)
        return f"disk attached again / replaced on {n}{which}"
    if name == "unplugPbd":
        w.unplug_pbds(n)
        return f"{n}'s host: every PBD of the SR(s) unplugged"
    if name == "breakSr":
        w.break_sr(n)
        return f"{n}'s host: SR volume group missing while the PBD stays attached (unusable)"
    if name == "xapiDown":
        w.nodes[n].xapi_reachable = False
        return f"XAPI unreachable on {n}"
    if name == "xapiUp":
        w.nodes[n].xapi_reachable = True
        return f"XAPI answers again on {n}"
    if name == "inject":
        op, kind, count = kw["op"], kw.get("kind", "transient"), int(kw.get("count", 1))
        resource = kw.get("resource")
        w.faults.append(Fault(node=n, op=op, kind=kind, count=count, resource=resource))
        times = "every time" if count < 0 else f"{count} time(s)"
        return f"{op}{which} on {n} will fail: {kind}, {times}"
    if name == "clearFaults":
        w.faults = []
        return "injected command faults cleared"
    if name in WITNESS_FAULTS:
        return _witness_fault(sim, name, n, kw)
    raise ValueError(f"unknown fault {name!r}")


WITNESS_FAULTS = (
    "etcdMemberDown",
    "etcdMemberUp",
    "etcdDown",
    "etcdUp",
    "etcdCut",
    "etcdRejoin",
    "pause",
    "resume",
)
"""The witness's faults: one etcd member down/up (``value``: the member 0-2; else the first
that can change), every member down/up, one node cut from etcd (or back), the node's agent paused
(a long GC pause, SIGSTOP) or resumed."""


def _witness_fault(sim: Simulation, name: str, n: str, kw: Mapping[str, Any]) -> str:
    w = sim.w
    members = w.witness.members
    if name in ("etcdMemberDown", "etcdMemberUp"):
        up = name == "etcdMemberUp"
        member = kw.get("value")
        if isinstance(member, bool) or not isinstance(member, int):
            member = next((i for i, m in enumerate(members) if m != up), 0)
        members[int(member) % len(members)] = up
        state = "up" if up else "down"
        return f"etcd member {int(member) % len(members)} {state} ({sum(members)}/3 up)"
    if name in ("etcdDown", "etcdUp"):
        w.witness.members = [name == "etcdUp"] * len(members)
        return "etcd fully down" if name == "etcdDown" else "etcd back (3/3 members)"
    if name in ("etcdCut", "etcdRejoin"):
        w.nodes[n].etcd_cut = name == "etcdCut"
        return f"{n} cut from etcd" if name == "etcdCut" else f"{n} reaches etcd again"
    if name == "pause":
        if not w.nodes[n].alive:
            return f"{n} is down: no agent to pause"
        w.nodes[n].agent_paused = True
        return f"{n}'s agent paused (a long GC pause / SIGSTOP): it observes, acts, pets nothing"
    w.nodes[n].agent_paused = False
    return f"{n}'s agent resumes (its pending plan, if any, goes on from where it stopped)"
