"""Gather one ``ObservedState`` from the adapters.

Invariant: never raises. An adapter that raises anyway (a bug, an unexpected OS error) turns
into UNKNOWN data for its concern, with the error text, like unparseable output would.
"""

from __future__ import annotations

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


def observe(spec: StorageCluster, adapters: NodeAdapters) -> ObservedState:
    s = spec.spec
    try:
        resources = adapters.drbd.observe(s.resources)
    except Exception as exc:
        resources = tuple(ResourceObs.unknown(r.name, _err("DRBD", exc)) for r in s.resources)
    try:
        vips = adapters.vip.observe(s.vips)
    except Exception as exc:
        vips = tuple(VipObs(address=v.ip, error=_err("VIP", exc)) for v in s.vips)
    try:
        target = adapters.target.observe(s.target)
    except Exception as exc:
        target = TargetObs(running=None, error=_err("target", exc))
    try:
        verdict = adapters.role_source.observe()
    except Exception as exc:
        verdict = RoleVerdict(Role.UNKNOWN, _err("role source", exc))
    try:
        operator = adapters.operator.load()
    except Exception:
        operator = OperatorState(manual_mode=True)
    try:
        liveness = adapters.liveness.observe()
    except Exception:
        liveness = Liveness()
    return ObservedState(
        node=adapters.node,
        resources=tuple(resources),
        vips=tuple(vips),
        target=target,
        role_source=verdict,
        operator=operator,
        liveness=liveness,
    )


def _err(what: str, exc: Exception) -> str:
    return f"{what} observation failed: {exc.__class__.__name__}: {exc}"
