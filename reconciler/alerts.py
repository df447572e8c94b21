"""Which alerts a tick raises, and which of them are actually sent.

Rules (from the reference design): every alert is logged; mail is not sent in the first
``alerts.quietTicks`` ticks after the agent starts (a booting cluster is noisy), nor in manual
mode (an operator is at work), and an identical alert is not re-sent within
``alerts.screenTime`` seconds. Beyond the reference: a refusal by a safety rule (an alert
with ``refusal`` set, built from a plan's ``Blocked``; key ``NODE:blocked:KIND:WHAT:RESOURCE``)
is mailed only after every tick for ``alerts.blockedGrace`` seconds raised it, so the "peer
still Primary" of every planned swap (a fraction of a second) mails nothing. A repair (an
applied action the planner flagged ``repair``: tgtd restarted on the serving primary, a VIP
re-added, DRBD restarted or reconnected; key ``NODE:repair:KIND:SUBJECT``) is counted per key
over ``alerts.repairWindow`` seconds and mailed once the count reaches ``alerts.repairCount``,
as one alert that says the count (a flapping tgtd mails once, not at every restart), then
muted for ``alerts.screenTime`` like any alert. The gate's memory is per agent process: it
screens mail, it decides nothing. The clock is a parameter. Alerts are built from the plan's
typed values (``Blocked.kind``, ``PlanWarning.kind``, ``Action.repair`` and ``resource``),
never by parsing their text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from adapters.base import Alert
from reconciler.agent import TickReport
from reconciler.core.plan import BlockKind, WarningKind
from reconciler.core.spec import Alerts

# Which plan warnings raise an alert of their own: a split brain and an unreadable DRBD are
# already raised from the observation (one alert per fact, not two).
_WARNING_ALERTS: dict[WarningKind, bool] = {
    WarningKind.DEGRADED: True,
    WarningKind.SPLIT_BRAIN: False,
    WarningKind.DRBD_UNREADABLE: False,
    WarningKind.HYPERVISOR_UNREADABLE: True,  # XAPI unreachable: nothing else raises it
    WarningKind.WITNESS_UNREACHABLE: True,  # serving on, but no failover possible now
    WarningKind.WITNESS_STEP_DOWN: True,  # stopped serving: the lease could not be renewed
}


def alerts_for(report: TickReport) -> list[Alert]:
    """The alerts one tick raises (stable keys, so repeats can be screened)."""
    node = report.plan.node
    out: list[Alert] = []
    for res in report.observed.resources:
        if not res.known:
            out.append(
                Alert(
                    f"{node}:unknown:{res.name}",
                    "warning",
                    f"{node}: DRBD state of {res.name} unknown: {res.error}",
                )
            )
        elif res.split_brain:
            out.append(
                Alert(
                    f"{node}:split-brain:{res.name}",
                    "critical",
                    f"{node}: split brain on {res.name}; nothing is discarded "
                    "automatically, run `reconcile split-brain --help`",
                )
            )
    for vip in report.observed.vips:
        if vip.error:
            out.append(
                Alert(
                    f"{node}:vip-unknown:{vip.address}",
                    "warning",
                    f"{node}: VIP {vip.address}: {vip.error}",
                )
            )
    if report.observed.target.error:
        out.append(
            Alert(
                f"{node}:target-unknown",
                "warning",
                f"{node}: target state unknown: {report.observed.target.error}",
            )
        )
    for warning in report.plan.warnings:
        if _WARNING_ALERTS[warning.kind]:
            out.append(
                Alert(
                    f"{node}:{warning.kind.value}:{warning.resource or ''}",
                    "warning",
                    f"{node}: {warning.message}",
                )
            )
    for blocked in report.plan.blocked:
        if blocked.kind is BlockKind.DRBD_UNKNOWN:
            continue  # already raised as an unknown observation
        out.append(
            Alert(
                f"{node}:blocked:{blocked.kind.value}:{blocked.what}:{blocked.resource or ''}",
                "warning",
                f"{node}: {blocked.what} refused: {blocked.reason}",
                refusal=True,
            )
        )
    if report.result is not None:
        for action in report.result.applied:
            if action.repair:
                subject = action.vip or action.resource or ""
                out.append(
                    Alert(
                        f"{node}:repair:{action.kind.value}:{subject}",
                        "warning",
                        f"{node}: repaired: {action.describe()} ({action.reason})",
                        repair=True,
                    )
                )
        for error in report.result.errors:
            out.append(
                Alert(
                    f"{node}:failed:{error.split(':')[0]}",
                    "error",
                    f"{node}: action failed: {error}",
                )
            )
    return out


@dataclass
class AlertGate:
    """Decides which alerts are mailed; remembers when each key was last sent."""

    settings: Alerts
    clock: Callable[[], float]
    ticks: int = 0
    last_sent: dict[str, float] = field(default_factory=dict)
    blocked_since: dict[str, float] = field(default_factory=dict)  # raised on every tick since
    repairs: dict[str, list[float]] = field(default_factory=dict)  # when each key was repaired

    def admit(self, alerts: list[Alert], *, manual_mode: bool) -> list[Alert]:
        self.ticks += 1
        now = self.clock()
        # Tracked also in quiet ticks and manual mode: a refusal counts from when it began,
        # a repair counts whenever it happened.
        blocked = {a.key for a in alerts if a.refusal}
        self.blocked_since = {k: self.blocked_since.get(k, now) for k in blocked}
        window = self.settings.repair_window
        for key, times in list(self.repairs.items()):
            kept = [t for t in times if now - t < window]
            if kept:
                self.repairs[key] = kept
            else:
                del self.repairs[key]
        for alert in alerts:
            if alert.repair:
                self.repairs.setdefault(alert.key, []).append(now)
        if self.ticks <= self.settings.quiet_ticks or manual_mode:
            return []
        admitted = []
        for alert in alerts:
            since = self.blocked_since.get(alert.key)
            if since is not None and now - since < self.settings.blocked_grace:
                continue
            if alert.repair:
                count = len(self.repairs.get(alert.key, ()))
                if count < self.settings.repair_count:
                    continue
                alert = replace(
                    alert,
                    message=f"{alert.message}: {count} repairs of this part in the last "
                    f"{window:g} s (flapping?)",
                )
            last = self.last_sent.get(alert.key)
            if last is not None and now - last < self.settings.screen_time:
                continue
            self.last_sent[alert.key] = now
            admitted.append(alert)
        return admitted
