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
from reconciler.core.spec import StorageCluster

_T = TypeVar("_T")


def observe(
    spec: StorageCluster,
    adapters: NodeAdapters,
    *,
    executor: Executor | None = None,
    timings: dict[str, float] | None = None,
) -> ObservedState:
    """One observation of every concern. With an ``executor`` (the watch loop passes one)
    the VIPs and the hypervisor are read first, concurrently, then DRBD, the target and
    liveness, concurrently, once the VIP read is in: the VIP read's ARP probe of a VIP that is
    not here is the one read that waits on the network, while the others are caches fed by
    event streams (DRBD events2, the resident tgtd's target list, the pinger), so reading them
    after it costs nothing and gives the freshest state (in a planned swap the new primary's
    tick that was probing while the peer stepped down sees the peer Secondary in that tick, not
    the next one; measured in the VM tier). The VIPs and liveness are read in the calling
    thread while the others run on the executor: the tick waits for each group anyway, and a
    hand-off to a worker is two thread wakes. Without one, in order (deterministic, for
    simulations that share one in-memory world). Either way the role source and the
    operator's choices are read last (see below). ``timings``, when given, receives the seconds
    each concern's read took (keys: drbd, vip, target, role, operator, liveness, and
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

    if executor is None:  # in order: drbd, vip, target, liveness, hypervisor
        resources = read_drbd()
        vip_obs = tuple(start("vip", lambda: adapters.vip.observe(s.vips), vip_unknown)())
        target, liveness = read_rest()
        hypervisor = read_hypervisor()
    else:  # the VIPs (and the hypervisor) first; the cached concerns once the VIPs are in
        hypervisor = read_hypervisor()
        # In this thread, with the hypervisor on the pool: the tick waits for the VIPs first.
        vip_obs = tuple(here("vip", lambda: adapters.vip.observe(s.vips), vip_unknown)())
        resources = read_drbd()
        target, liveness = read_rest()
    slow = (tuple(resources()), vip_obs, target(), liveness(), hypervisor())
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
