"""Alerts as pool messages (``message.create``), so XenCenter and Xen Orchestra show them,
beside mail and syslog. Like mail, a delivery failure never breaks a tick: it is returned as
text for the agent's own log."""

from __future__ import annotations

from adapters.base import Alert
from adapters.xapi.pooldb import PoolDatabase
from adapters.xapi.session import XapiClient, XapiError

MESSAGE_NAME = "TANDEM_ALERT"
# XAPI's message priorities: 1 data-loss imminent, 2 service-loss imminent, 3 service
# degraded, 4 service recovered, 5 informational.
PRIORITIES = {"critical": 2, "warning": 3, "info": 5}


class PoolMessageAlerter:
    def __init__(self, client: XapiClient, *, node: str) -> None:
        self.client = client
        self.node = node

    def send(self, alerts: list[Alert]) -> str | None:
        """One pool message per alert; returns an error text instead of raising."""
        if not alerts:
            return None
        try:
            db = PoolDatabase(self.client)
            pool_uuid = str(self.client.call("pool.get_uuid", db.pool_ref()))
            for alert in alerts:
                self.client.call(
                    "message.create",
                    MESSAGE_NAME,
                    str(PRIORITIES.get(alert.severity, 3)),
                    "Pool",
                    pool_uuid,
                    f"tandem on {self.node}: [{alert.severity}] {alert.message}",
                )
        except XapiError as exc:
            return f"alert as pool message failed: {exc.reason}"
        return None
