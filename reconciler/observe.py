"""Gather one ``ObservedState`` from the adapters.

Invariant: never raises. An adapter that raises anyway (a bug, an unexpected OS error) turns
into UNKNOWN data for its concern, with the error text, like unparseable output would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from adapters.base import NodeAdapters
from reconciler.core.observed import (
    HypervisorObs,
    Leftovers,
    Liveness,
    ObservedState,
    OperatorState,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
    WitnessObs,
)
from reconciler.core.safety import probes_can_wait
from reconciler.core.spec import StorageCluster

_T = TypeVar("_T")
# The permissive target for the DRBD-only check of ``probes_can_wait`` (see ``observe``).
_NOT_DEFINED = TargetObs(running=False)


def observe(
    spec: StorageCluster,
    adapters: NodeAdapters,
    *,
    executor: Executor | None = None,
    timings: dict[str, float] | None = None,
    defer_probes: bool = False,
) -> ObservedState:
    """One observation of every concern. With an ``executor`` (the watch loop passes one)
    the VIPs and the hypervisor are read first, concurrently, then DRBD, the target and
    liveness, concurrently, once the VIPs' addresses are in. The ARP probe of a VIP that is not
    here is the one read that waits on the network (the others are caches fed by event
    streams: DRBD events2, the resident tgtd's target list, the pinger); it is waited for only
    when the plan needs its answer: always, unless ``defer_probes`` (the tick's observation,
    ``reconciler.agent.tick``; an operator command's or a status read's is complete) and
    ``safety.probes_can_wait`` (every resource connected with a peer that is not Primary, no
    target here). Then DRBD is read again after the wait, the
    freshest state (in a planned swap the new primary's tick that was probing while the peer
    stepped down sees the peer Secondary in that tick, not the next one; measured in the VM
    tier). Otherwise the VIP stays ``probe_pending`` and the tick goes on: the node taking over
    in a planned swap promotes and defines its target while its probe listens, and add-vip
    checks the answer itself. The VIPs' addresses and liveness are read in the calling thread
    while the others run on the executor: the tick waits for each group anyway, and a hand-off
    to a worker is two thread wakes. Without an executor, in order (deterministic, for simulations
    that share one in-memory world). Either way the role source and the operator's choices are
    read last (see below). ``timings``, when given, receives the seconds each concern's read
    took (keys: drbd, vip (with the probes' wait), target, role, operator, liveness, and
    hypervisor and witness when configured). The witness is read very last: its
    ``lease_left`` is then as fresh as it can be when the plan acts on it."""
    s = spec.spec

    def drbd_unknown(exc: Exception) -> tuple[ResourceObs, ...]:
        return tuple(ResourceObs.unknown(r.name, _err("DRBD", exc)) for r in s.resources)

    def vip_unknown(exc: Exception) -> tuple[VipObs, ...]:
        return tuple(VipObs(address=v.ip, error=_err("VIP", exc)) for v in s.vips)

    def here(
        name: str, read: Callable[[], _T], fallback: Callable[[Exception], _T]
    ) -> Callable[[], _T]:
        value = _guarded(name, read, fallback, timings)
        return lambda: value

    def start(
        name: str, read: Callable[[], _T], fallback: Callable[[Exception], _T]
    ) -> Callable[[], _T]:
        if executor is None:
            return here(name, read, fallback)
        return executor.submit(_guarded, name, read, fallback, timings).result

    def read_drbd() -> Callable[[], tuple[ResourceObs, ...]]:
        return start("drbd", lambda: adapters.drbd.observe(s.resources), drbd_unknown)

    def read_rest() -> tuple[Callable[[], TargetObs], Callable[[], Liveness]]:
        target = start(
            "target",
            lambda: adapters.target.observe(s.target),
            lambda exc: TargetObs(running=None, error=_err("target", exc)),
        )
        # The last read runs in this thread while the others run on the pool: the tick
        # waits for all of them anyway, and a hand-off to a worker and back is two thread
        # wakes per tick (what an idle agent's CPU is mostly made of).
        return target, here("liveness", adapters.liveness.observe, lambda exc: Liveness())

    def read_hypervisor() -> Callable[[], HypervisorObs]:
        hyper = adapters.hypervisor
        if hyper is None:
            return lambda: HypervisorObs()
        return start(
            "hypervisor",
            lambda: hyper.observe(s.target, s.vips),
            lambda exc: HypervisorObs(enabled=True, error=_err("hypervisor", exc)),
        )

    def read_vips() -> Callable[[], tuple[VipObs, ...]]:
        # Never waits for the ARP probes of VIPs not here: ``complete`` does, when the plan
        # needs their answers (``may_go_on``).
        return here(
            "vip", lambda: tuple(adapters.vip.observe(s.vips, wait_probes=False)), vip_unknown
        )

    def complete(seen: tuple[VipObs, ...]) -> tuple[VipObs, ...]:
        waited = _guarded("vip-probe", lambda: adapters.vip.complete(seen), vip_unknown, timings)
        if timings is not None:
            timings["vip"] = timings.get("vip", 0.0) + timings.pop("vip-probe", 0.0)
        return waited

    def may_go_on(seen: tuple[VipObs, ...], res: tuple[ResourceObs, ...], tgt: TargetObs) -> bool:
        """Whether the plan may be made without the pending probes' answers (none pending, or
        ``probes_can_wait``: then add-vip checks them itself)."""
        pending = any(v.probe_pending for v in seen)
        return not pending or (defer_probes and probes_can_wait(res, tgt))

    if executor is None:  # in order: drbd, vip, target, liveness, hypervisor
        resources = tuple(read_drbd()())
        vip_obs = read_vips()()
        target, liveness = read_rest()
        target_obs = target()
        if not may_go_on(vip_obs, resources, target_obs):
            vip_obs = complete(vip_obs)
        hypervisor = read_hypervisor()
    else:  # the VIPs (and the hypervisor) first; the cached concerns once the VIPs are in
        hypervisor = read_hypervisor()
        # In this thread, with the hypervisor on the pool: the tick waits for the VIPs first.
        vip_obs = read_vips()()
        resources = tuple(read_drbd()())
        # DRBD alone may already say the probes' answers are needed (the stand-by node with a
        # Primary peer, a disconnected one): wait for them before reading the rest.
        waits = not may_go_on(vip_obs, resources, _NOT_DEFINED)
        if waits:
            # The probes' wait is the one read that waits on the network: DRBD is read again
            # after it, and the target once, the freshest state (see the docstring).
            vip_obs = complete(vip_obs)
            resources = tuple(read_drbd()())
        target, liveness = read_rest()
        target_obs = target()
        if not waits and not may_go_on(vip_obs, resources, target_obs):
            vip_obs = complete(vip_obs)  # the target is defined here: nothing to overlap
            drbd_now, (target, liveness) = read_drbd(), read_rest()
            resources, target_obs = tuple(drbd_now()), target()
    slow = (resources, vip_obs, target_obs, liveness(), hypervisor())
    leftovers = _leftovers(spec, adapters)
    # The role source and the operator's choices are read last, once the slower reads are in:
    # they are what a wake source watches (pool.conf, the operator file), so a change that
    # arrives while this node reads DRBD or probes ARP counts in this tick instead of the next
    # one (in a planned swap, the old primary steps down one observation earlier). Both are
    # file reads here; a slow role source would add its time to the tick.
    verdict = _guarded(
        "role",
        adapters.role_source.observe,
        lambda exc: RoleVerdict(Role.UNKNOWN, _err("role source", exc)),
        timings,
    )
    operator = _guarded(
        "operator", adapters.operator.load, lambda exc: OperatorState(manual_mode=True), timings
    )
    seen = adapters.witness
    witness = (
        _guarded(
            "witness",
            seen.observe,
            lambda exc: WitnessObs(enabled=True, reachable=False, error=_err("witness", exc)),
            timings,
        )
        if seen is not None
        else WitnessObs()
    )
    return ObservedState(
        node=adapters.node,
        witness=witness,
        resources=slow[0],
        vips=slow[1],
        target=slow[2],
        role_source=verdict,
        operator=operator,
        liveness=slow[3],
        hypervisor=slow[4],
        leftovers=leftovers,
    )


def _leftovers(spec: StorageCluster, adapters: NodeAdapters) -> Leftovers:
    """What the VIP and target adapters created that the spec no longer declares (their
    inventories: a file read, no command). An unreadable inventory reports nothing from it."""
    s = spec.spec
    vip = _guarded(
        "inventory",
        lambda: adapters.vip.leftovers(s.vips),
        lambda exc: Leftovers(error=_err("VIP inventory", exc)),
        None,
    )
    tgt = _guarded(
        "inventory",
        lambda: adapters.target.leftovers(s.target),
        lambda exc: Leftovers(error=_err("target inventory", exc)),
        None,
    )
    errors = [e for e in (vip.error, tgt.error) if e]
    return Leftovers(
        vips=vip.vips, targets=tgt.targets, luns=tgt.luns, error="; ".join(errors) or None
    )


def _guarded(
    name: str,
    read: Callable[[], _T],
    fallback: Callable[[Exception], _T],
    timings: dict[str, float] | None,
) -> _T:
    began = time.monotonic()
    try:
        return read()
    except Exception as exc:
        return fallback(exc)
    finally:
        if timings is not None:
            timings[name] = time.monotonic() - began  # one key per thread: no lock needed


def _err(what: str, exc: Exception) -> str:
    return f"{what} observation failed: {exc.__class__.__name__}: {exc}"
