"""Prometheus metrics of one agent: an observer of its ticks (``Metrics(report)``).

``Metrics`` is a ``Callable[[TickReport], None]``: the watch loop hands it every tick's report
and it updates its gauges and counters; ``render()`` is the text exposition ``/metrics`` serves
(``reconciler.httpserve``).

Invariants:
- Each ``Metrics`` owns a private ``CollectorRegistry``: no global state, so two agents (or two
  tests) in one process never share a series.
- Values come from the tick's report only (the observation and the plan): nothing is measured
  or invented here. What the observation does not have is not exported (see below).
- A tri-state fact the observation could not tell (a VIP's or the target's state unreadable,
  the peer not probed) is ``NaN``, never a guessed 0 or 1.
- Enum-like facts are one-hot gauges over every member (the convention of drbd-reactor's
  prometheus plugin with ``enums = true``): exactly one series is 1 when the state is known.

DRBD metrics keep drbd-reactor's names and labels where tandem observes the same thing
(``name`` = resource, the state in a label named like the metric, ``volume``/``minor`` on
devices, ``conn_name`` = the peer's node name on connections). Not exported, because the
observation lacks them: ``drbd_peerdevice_outofsync_bytes`` (tandem reads the resync
percentage, not the out-of-sync bytes: see ``tandem_drbd_sync_percent``), the ``peer_node_id``
label (DRBD 8.4 has no node ids), sizes, I/O counters, quorum and may-promote.
``drbd_connection_state`` uses DRBD 9's connection states; tandem folds the replication state
(SyncSource, ...) into its connection state, so every connected state exports ``Connected``
there and the folded value is in ``tandem_drbd_replication_state``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reconciler import __version__
from reconciler.agent import TickReport
from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role
from reconciler.core.plan import BlockKind
from reconciler.core.spec import StorageCluster

NAN = math.nan

# DRBD 9's connection states (drbd-reactor's label values), in its order.
DRBD9_CONNECTION_STATES = (
    "StandAlone",
    "Disconnecting",
    "Unconnected",
    "Timeout",
    "BrokenPipe",
    "NetworkFailure",
    "ProtocolError",
    "TearDown",
    "Connecting",
    "Connected",
)
_WAITING = {ConnState.WF_CONNECTION, ConnState.WF_REPORT_PARAMS}

# Tick durations: a converged tick takes milliseconds on the simulator and tens of ms on real
# hosts; a failover tick seconds; a command that hits its timeout (10 s by default) more.
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def drbd9_connection_state(conn: ConnState) -> str | None:
    """The DRBD 9 connection state of tandem's folded one; None when unknown."""
    if conn is ConnState.UNKNOWN:
        return None
    if conn.is_connected:
        return "Connected"
    if conn in _WAITING:
        return "Connecting"
    return conn.value


def _tristate(value: bool | None) -> float:
    return NAN if value is None else float(value)


class Metrics:
    """The agent's metrics; call it with each tick's report."""

    def __init__(self, spec: StorageCluster, node: str) -> None:
        self.spec = spec
        self.node = node
        self.peer = next(n for n in spec.node_names if n != node)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        info = self._gauge(
            "tandem_info", "The agent: node and version (always 1)", ["node", "version"]
        )
        info.labels(node=node, version=__version__).set(1)

        # --- DRBD, under drbd-reactor's names --------------------------------------------
        self.resource_role = self._gauge(
            "drbd_resource_role", "DRBD role of the resource", ["name", "drbd_resource_role"]
        )
        self.connection_state = self._gauge(
            "drbd_connection_state",
            "DRBD connection state",
            ["name", "conn_name", "drbd_connection_state"],
        )
        self.device_state = self._gauge(
            "drbd_device_state",
            "DRBD device state",
            ["name", "volume", "minor", "drbd_device_state"],
        )
        self.device_diskless = self._gauge(
            "drbd_device_unintentionaldiskless",
            "Boolean whether the device is unintentionally diskless",
            ["name", "volume", "minor"],
        )
        # --- DRBD facts drbd-reactor has no metric for ---------------------------------------
        self.replication_state = self._gauge(
            "tandem_drbd_replication_state",
            "DRBD connection state as tandem observes it (DRBD 8.4's cs, replication folded in)",
            ["name", "state"],
        )
        self.peer_role = self._gauge(
            "tandem_drbd_peer_role", "The peer's DRBD role as this node sees it", ["name", "role"]
        )
        self.peer_disk = self._gauge(
            "tandem_drbd_peer_disk_state",
            "The peer's disk state as this node sees it",
            ["name", "state"],
        )
        self.sync_percent = self._gauge(
            "tandem_drbd_sync_percent",
            "Resync progress in percent (NaN when no resync runs)",
            ["name"],
        )
        self.split_brain = self._gauge(
            "tandem_drbd_split_brain", "Boolean whether DRBD reports a split brain", ["name"]
        )
        self.degraded = self._gauge(
            "tandem_degraded",
            "Boolean whether replication of the resource is degraded",
            ["name"],
        )
        # --- the agent ---------------------------------------------------------------------
        self.tick_seconds = Histogram(
            "tandem_tick_duration_seconds",
            "Duration of a tick (observe, plan, apply)",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.observe_seconds = Histogram(
            "tandem_observe_duration_seconds",
            "Duration of a tick's observation",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.actions = Counter(
            "tandem_actions",
            "Actions planned by kind and result (ok, failed, not-run after a failed step)",
            ["kind", "result"],
            registry=r,
        )
        self.blocked = self._gauge(
            "tandem_blocked",
            "Changes refused by a safety rule in the last tick, by kind",
            ["kind"],
        )
        self.last_tick = self._gauge(
            "tandem_last_tick_timestamp_seconds", "When the last tick ended (Unix time)", []
        )
        self.last_exit = self._gauge(
            "tandem_last_tick_exit_code",
            "Exit code of the last tick (0 ok, 1 an action failed, 3 blocked)",
            [],
        )
        self.desired_role = self._gauge(
            "tandem_desired_role", "The role the last tick's plan wants here", ["role"]
        )
        self.role_source = self._gauge(
            "tandem_role_source_verdict",
            "What the role source says this node should be",
            ["role"],
        )
        self.manual_mode = self._gauge(
            "tandem_manual_mode", "Boolean whether the node is in manual mode", []
        )
        self.vip_local = self._gauge(
            "tandem_vip_local",
            "Boolean whether the VIP is on this node (NaN: unreadable)",
            ["address"],
        )
        self.target_running = self._gauge(
            "tandem_target_running",
            "Boolean whether the iSCSI target is defined (serves) here (NaN: unreadable)",
            [],
        )
        self.target_daemon = self._gauge(
            "tandem_target_daemon_running",
            "Boolean whether the resident target daemon (tgtd) runs here (NaN: unknown)",
            [],
        )
        self.target_luns = self._gauge(
            "tandem_target_exported_luns", "Number of LUNs the target exports here", []
        )
        self.serving = self._gauge(
            "tandem_expected_serving",
            "Boolean whether the plan wants this node serving (VIP and target)",
            [],
        )
        self.peer_reachable = self._gauge(
            "tandem_peer_reachable",
            "Boolean whether the peer answers on its management address (NaN: not probed)",
            [],
        )
        self.spawns = Counter(
            "tandem_command_spawns",
            "Processes the agent's command runner started (commands, daemons, streams)",
            registry=r,
        )
        self._spawns_seen = 0
        # Series exist from the start (zero), so a rate() over them has a beginning.
        for kind in BlockKind:
            self.blocked.labels(kind=kind.value).set(0)

    def _gauge(self, name: str, doc: str, labels: Iterable[str]) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    def __call__(self, report: TickReport) -> None:
        obs = report.observed
        minors = {res.name: res.minor for res in self.spec.spec.resources}
        for res in obs.resources:
            self._resource(res, minors.get(res.name))
        self.tick_seconds.observe(report.seconds)
        self._count_spawns(report.spawns_total)
        self.observe_seconds.observe(report.observe_seconds)
        self._actions(report)
        counts = {kind: 0 for kind in BlockKind}
        for b in report.plan.blocked:
            counts[b.kind] += 1
        for kind, n in counts.items():
            self.blocked.labels(kind=kind.value).set(n)
        self.last_tick.set(report.started + report.seconds)
        self.last_exit.set(report.exit_code)
        _one_hot(self.desired_role, "role", Role, report.plan.desired_role)
        _one_hot(self.role_source, "role", Role, obs.role_source.role)
        self.manual_mode.set(float(obs.operator.manual_mode))
        for vip in obs.vips:
            self.vip_local.labels(address=vip.address).set(_tristate(vip.local))
        self.target_running.set(_tristate(obs.target.running))
        self.target_daemon.set(_tristate(obs.target.daemon))
        self.target_luns.set(len(obs.target.exported_luns))
        self.serving.set(float(report.plan.serving))
        self.peer_reachable.set(_tristate(obs.liveness.peer_reachable))

    def _resource(self, res: ResourceObs, minor: int | None) -> None:
        name = res.name
        _one_hot(self.resource_role, "drbd_resource_role", Role, res.role, name=name)
        state = drbd9_connection_state(res.conn) if res.known else None
        for value in DRBD9_CONNECTION_STATES:
            self.connection_state.labels(
                name=name, conn_name=self.peer, drbd_connection_state=value
            ).set(float(value == state))
        device = {"name": name, "volume": "0", "minor": "" if minor is None else str(minor)}
        _one_hot(self.device_state, "drbd_device_state", DiskState, res.disk, **device)
        self.device_diskless.labels(**device).set(
            float(res.known and res.up and res.disk is DiskState.DISKLESS)
        )
        _one_hot(self.replication_state, "state", ConnState, res.conn, name=name)
        _one_hot(self.peer_role, "role", Role, res.peer_role, name=name)
        _one_hot(self.peer_disk, "state", DiskState, res.peer_disk, name=name)
        self.sync_percent.labels(name=name).set(
            NAN if res.sync_percent is None else res.sync_percent
        )
        self.split_brain.labels(name=name).set(float(res.split_brain))
        self.degraded.labels(name=name).set(float(res.degraded))

    def _count_spawns(self, total: int | None) -> None:
        """The runner's count grows; adapters rebuilt for a new spec start a new runner at
        zero, whose whole count is then new."""
        if total is None:
            return
        grew = total - self._spawns_seen if total >= self._spawns_seen else total
        self._spawns_seen = total
        if grew > 0:
            self.spawns.inc(grew)

    def _actions(self, report: TickReport) -> None:
        if report.result is None:
            return  # a dry run applies nothing
        ran = {id(step.action): step for step in report.result.steps}
        for action in report.plan.actions:
            step = ran.get(id(action))
            result = "not-run" if step is None else ("ok" if step.ok else "failed")
            self.actions.labels(kind=action.kind.value, result=result).inc()

    def render(self) -> bytes:
        """The text exposition format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


def _one_hot(
    gauge: Gauge,
    label: str,
    members: Iterable[Role] | Iterable[DiskState] | Iterable[ConnState],
    current: object,
    **labels: str,
) -> None:
    """Every member a series: 1 for ``current``, 0 for the others. An ``Unknown`` member is a
    value like the others (the observation said "unknown")."""
    for member in members:
        gauge.labels(**labels, **{label: member.value}).set(float(member == current))
