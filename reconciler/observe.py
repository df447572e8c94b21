"""Gather one ``ObservedState`` from the adapters.

Invariant: never raises. An adapter that raises anyway (a bug, an unexpected OS error) turns
into UNKNOWN data for its concern, with the error text, like unparseable output would.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from adapters.base import NodeAdapters
from reconciler.core.observed import (
    Liveness,
    ObservedState,
    OperatorState,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.spec import StorageCluster

_T = TypeVar("_T")


def observe(
    spec: StorageCluster, adapters: NodeAdapters, *, executor: Executor | None = None
) -> ObservedState:
    """One observation of every concern. With an ``executor`` the concerns are observed
    concurrently (the watch loop passes one: a tick then costs its slowest read, e.g. an ARP
    probe or a ping to a dead peer, not their sum); without one, in order (deterministic, for
    simulations that share one in-memory world)."""
    s = spec.spec

    def drbd_unknown(exc: Exception) -> tuple[ResourceObs, ...]:
        return tuple(ResourceObs.unknown(r.name, _err("DRBD", exc)) for r in s.resources)

    def vip_unknown(exc: Exception) -> tuple[VipObs, ...]:
        return tuple(VipObs(address=v.ip, error=_err("VIP", exc)) for v in s.vips)

    def start(read: Callable[[], _T], fallback: Callable[[Exception], _T]) -> Callable[[], _T]:
        if executor is None:
            value = _guarded(read, fallback)
            return lambda: value
        return executor.submit(_guarded, read, fallback).result

    resources = start(lambda: adapters.drbd.observe(s.resources), drbd_unknown)
    vips = start(lambda: adapters.vip.observe(s.vips), vip_unknown)
    target = start(
        lambda: adapters.target.observe(s.target),
        lambda exc: TargetObs(running=None, error=_err("target", exc)),
    )
    verdict = start(
        adapters.role_source.observe,
        lambda exc: RoleVerdict(Role.UNKNOWN, _err("role source", exc)),
    )
    operator = start(adapters.operator.load, lambda exc: OperatorState(manual_mode=True))
    liveness = start(adapters.liveness.observe, lambda exc: Liveness())
    return ObservedState(
        node=adapters.node,
        resources=tuple(resources()),
        vips=tuple(vips()),
        target=target(),
        role_source=verdict(),
        operator=operator(),
        liveness=liveness(),
    )


def _guarded(read: Callable[[], _T], fallback: Callable[[Exception], _T]) -> _T:
    try:
        return read()
    except Exception as exc:
        return fallback(exc)


def _err(what: str, exc: Exception) -> str:
    return f"{what} observation failed: {exc.__class__.__name__}: {exc}"
