"""Role source "pool-master": XenServer's ``/etc/xensource/pool.conf``.

The file holds ``master`` on the pool master and ``slave:<master address>`` on the others
(the reference design follows it; HA-Lizard rewrites it when it promotes a slave). The parser
is pure; an unreadable or unexpected file is an UNKNOWN verdict (hold roles), never an error.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.core.observed import Role, RoleVerdict


def parse_pool_conf(text: str) -> RoleVerdict:
    value = text.strip()
    if value == "master":
        return RoleVerdict(Role.PRIMARY, "this host is the XenServer pool master")
    if value.startswith("slave:"):
        master = value.split(":", 1)[1].strip()
        if master:
            return RoleVerdict(Role.SECONDARY, f"pool slave of {master}")
    shown = value[:40] + ("..." if len(value) > 40 else "")
    return RoleVerdict(
        Role.UNKNOWN, f"pool.conf holds {shown!r}, expected 'master' or 'slave:<ip>'"
    )


class PoolConfRoleSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def observe(self) -> RoleVerdict:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return RoleVerdict(Role.UNKNOWN, f"cannot read {self.path}: {exc.strerror or exc}")
        return parse_pool_conf(text)


class NoRoleSource:
    """For role sources decided inside the planner (manual, static): no external verdict."""

    def observe(self) -> RoleVerdict:
        return RoleVerdict(Role.UNKNOWN, "decided by the planner")
