"""Role source "xapi": the pool master from ``pool.get_master``, compared with this node's
XAPI host; ``pool.conf`` answers when XAPI cannot be reached (the moment the master died and
the pool-HA tool has not promoted a new one yet).

Invariants: ``observe`` never raises; the verdict's ``detail`` names who answered ("xapi: ..."
or "pool.conf (XAPI unreachable: ...): ..."), which ``status`` shows; a failure of both is
UNKNOWN (hold roles), never a promotion.
"""

from __future__ import annotations

from adapters.poolconf import PoolConfRoleSource
from adapters.xapi.session import XapiClient, XapiError
from reconciler.core.observed import Role, RoleVerdict


class XapiRoleSource:
    def __init__(
        self, client: XapiClient, *, host_name: str, fallback: PoolConfRoleSource | None
    ) -> None:
        self.client = client
        self.host_name = host_name
        self.fallback = fallback

    def observe(self) -> RoleVerdict:
        try:
            pools = self.client.call("pool.get_all")
            if not isinstance(pools, list) or not pools:
                raise XapiError("pool.get_all: no pool", transient=True)
            master = str(self.client.call("pool.get_master", pools[0]))
            master_name = str(self.client.call("host.get_name_label", master))
        except XapiError as exc:
            if self.fallback is None:
                return RoleVerdict(Role.UNKNOWN, f"xapi: {exc.reason}; no pool.conf fallback")
            verdict = self.fallback.observe()
            return RoleVerdict(
                verdict.role, f"pool.conf (XAPI unreachable: {exc.reason}): {verdict.detail}"
            )
        if master_name == self.host_name:
            return RoleVerdict(Role.PRIMARY, f"xapi: this host ({master_name}) is the pool master")
        return RoleVerdict(Role.SECONDARY, f"xapi: pool master is {master_name}")
