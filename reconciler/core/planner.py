"""The planner: ``plan(desired, observed) -> Plan``.

Pure: no I/O, no clock, no randomness; the same inputs always give the same plan (hypothesis
checks it). Level-based: nothing an earlier tick believed is used, only this observation.

How it works. Two small ``transitions`` state machines are built once, at import:

- ``RESOURCE_MACHINE`` per DRBD resource: ``unknown``, ``down``, ``starting``, ``secondary``,
  ``primary``. ``promote`` is guarded by ``safety.may_promote``; a refused guard becomes a
  ``Blocked`` entry, never an action.
- ``SERVING_MACHINE`` per node: ``idle`` and ``serving`` (VIP + target + LUNs). ``serve`` is
  guarded by "some resource is (about to be) Primary here".

Each tick a fresh model is seeded with the *observed* phase, and the planner fires the triggers that
lead to the desired role. Callbacks only *record* actions (transitions does not roll back a state
change when a callback raises, so callbacks never do I/O). Because later steps read the machine's
state after earlier triggers, the plan is ordered: start-drbd -> promote -> add-vip -> announce-vip
-> start-target -> export-lun -> plug-pbd on the way up; stop-target -> remove-vip -> demote on the
way down. ``start-daemon`` (the resident target daemon, down on a node that plans no start-target)
is a chain of its own. PBD actions (``_plan_pbds``) always come last and only while the storage is
served (here after this plan's earlier steps, or from the peer). After ``start-drbd`` nothing else
is chained for that resource: the connection must be observed before a promotion can be judged safe.

Leftovers: what this node's agent created and the spec no longer declares
(``ObservedState.leftovers``, from the adapters' inventories) is removed first, on any node, in
tear-down order: unexport-old-lun -> delete-old-target -> remove-old-vip. Nothing outside the
inventory is ever a leftover, so nothing the agent did not create is removed.

Repairs: an action that restores a part that was already meant to serve here (``start-target``
or ``add-vip`` on a node that is Primary and serving, ``start-drbd`` on a serving node,
``connect`` of a StandAlone resource) carries ``repair=True``: the alert gate counts them.

Minimality: every facet (each VIP, the daemon, each LUN) is compared with the observation and
an action is recorded only when it differs, so a converged node gets an empty plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from transitions import Machine

from reconciler.core import safety
from reconciler.core.observed import ConnState, ObservedState, ResourceObs, Role, VipObs
from reconciler.core.plan import (
    Action,
    ActionKind,
    Blocked,
    BlockKind,
    Plan,
    PlanWarning,
    WarningKind,
)
from reconciler.core.spec import DisconnectedPolicy, RoleSourceType, StorageCluster

# --- the machines -------------------------------------------------------------------------

RESOURCE_STATES = ["unknown", "down", "starting", "secondary", "primary"]
RESOURCE_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": "down", "dest": "starting", "after": "record_start"},
    {
        "trigger": "promote",
        "source": "secondary",
        "dest": "primary",
        "conditions": "promotion_allowed",
        "after": "record_promote",
    },
    {"trigger": "demote", "source": "primary", "dest": "secondary", "after": "record_demote"},
]
SERVING_STATES = ["idle", "serving"]
SERVING_TRANSITIONS: list[dict[str, Any]] = [
    {
        "trigger": "serve",
        "source": ["idle", "serving"],
        "dest": "serving",
        "conditions": "has_primary",
        "after": "record_serve",
    },
    {
        "trigger": "unserve",
        "source": ["idle", "serving"],
        "dest": "idle",
        "after": "record_unserve",
    },
]


def _machine(states: list[str], transitions: list[dict[str, Any]], initial: str) -> Machine:
    # model=None: the machine is a shared, read-only transition table; per-tick models are
    # passed to ``events[...].trigger(model)`` and never registered, so plan() stays pure.
    return Machine(
        model=None,
        states=states,
        transitions=transitions,
        initial=initial,
        auto_transitions=False,
    )


RESOURCE_MACHINE = _machine(RESOURCE_STATES, RESOURCE_TRANSITIONS, "unknown")
SERVING_MACHINE = _machine(SERVING_STATES, SERVING_TRANSITIONS, "idle")


# --- guards (a test-only seam lets property tests switch one off to prove invariants bite) ---


@dataclass(frozen=True, slots=True)
class Guards:
    may_promote: Callable[..., safety.Verdict] = safety.may_promote
    may_add_vip: Callable[..., safety.Verdict] = safety.may_add_vip
    may_export: Callable[..., safety.Verdict] = safety.may_export
    may_plug_pbd: Callable[..., safety.Verdict] = safety.may_plug_pbd


DEFAULT_GUARDS = Guards()


# --- per-tick models ----------------------------------------------------------------------


@dataclass
class _Recorder:
    """Records actions with their dependency chains (``Action.after``/``after_any``): each
    resource's DRBD actions form one chain (``res_tail``); the VIP + target actions form the
    serving chain (``serve_tail``), which needs at least one resource Primary; a LUN needs the
    serving chain and its own resource's chain."""

    actions: list[Action] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    res_tail: dict[str, int] = field(default_factory=dict)  # last action of each resource
    promotes: dict[str, int] = field(default_factory=dict)  # resource -> its promote
    serve_tail: int | None = None  # last action of the serving chain (VIP, target)
    leftover_tail: int | None = None  # last removal of what the spec no longer declares
    deleted_targets: dict[int, int] = field(default_factory=dict)  # tid -> its delete action

    def act(
        self,
        kind: ActionKind,
        reason: str,
        *,
        after: tuple[int, ...] = (),
        after_any: tuple[int, ...] = (),
        **where: Any,
    ) -> int:
        index = len(self.actions)
        self.actions.append(
            Action(kind=kind, reason=reason, after=after, after_any=after_any, **where)
        )
        return index

    def act_resource(self, kind: ActionKind, reason: str, resource: str, **more: Any) -> int:
        """An action of ``resource``'s chain (after its earlier actions in this plan)."""
        index = self.act(kind, reason, after=self._res_after(resource), resource=resource, **more)
        self.res_tail[resource] = index
        return index

    def act_serving(self, kind: ActionKind, reason: str, **where: Any) -> int:
        """The next action of the serving chain (VIP, target): after the previous one."""
        after = () if self.serve_tail is None else (self.serve_tail,)
        index = self.act(kind, reason, after=after, **where)
        self.serve_tail = index
        return index

    def _res_after(self, resource: str) -> tuple[int, ...]:
        tail = self.res_tail.get(resource)
        return () if tail is None else (tail,)

    def block(
        self, kind: BlockKind | None, what: str, reason: str, resource: str | None = None
    ) -> None:
        # A refused Verdict always carries its kind (Verdict checks it): None cannot reach here.
        assert kind is not None, reason
        self.blocked.append(Blocked(kind=kind, what=what, reason=reason, resource=resource))


class _ResourceModel:
    """One resource's phase for this tick; callbacks record, never act. ``serving``: the node
    serves (VIP local or target running) as observed, so a restart is a repair."""

    def __init__(
        self,
        obs: ResourceObs,
        verdict: safety.Verdict,
        rec: _Recorder,
        *,
        serving: bool = False,
    ) -> None:
        self.obs = obs
        self.verdict = verdict
        self.rec = rec
        self.serving = serving
        self.state = _resource_phase(obs)

    def promotion_allowed(self) -> bool:
        return self.verdict.ok

    def record_start(self) -> None:
        if self.serving:
            self.rec.act_resource(
                ActionKind.START_DRBD,
                f"repair: DRBD resource {self.obs.name} stopped on this serving node; start it",
                self.obs.name,
                repair=True,
            )
            return
        self.rec.act_resource(
            ActionKind.START_DRBD,
            f"DRBD resource {self.obs.name} is not running; start it so it can replicate",
            self.obs.name,
        )

    def record_promote(self) -> None:
        # A promotion the operator's override allowed must also pass DRBD's own fencing
        # ("Refusing to be Primary while peer is not outdated"): force it, knowingly.
        self.rec.promotes[self.obs.name] = self.rec.act_resource(
            ActionKind.PROMOTE, self.verdict.reason, self.obs.name, force=self.verdict.override
        )

    def record_demote(self) -> None:
        # After the whole tear-down chain (target stopped, VIPs released): a demote under a
        # running target fails anyway, and the VIP must never outlive the Primary. Other
        # resources' demotes do not wait for this one.
        rec, name = self.rec, self.obs.name
        after = rec._res_after(name) + (() if rec.serve_tail is None else (rec.serve_tail,))
        rec.res_tail[name] = rec.act(
            ActionKind.DEMOTE,
            f"this node should be secondary; demote {name} so the peer can promote",
            after=after,
            resource=name,
        )


def _resource_phase(obs: ResourceObs) -> str:
    if not obs.known:
        return "unknown"
    if not obs.up:
        return "down"
    if obs.role is Role.PRIMARY:
        return "primary"
    if obs.role is Role.SECONDARY:
        return "secondary"
    return "unknown"


class _ServingModel:
    def __init__(
        self,
        *,
        spec: StorageCluster,
        obs: ObservedState,
        primary: dict[str, bool],
        guards: Guards,
        rec: _Recorder,
    ) -> None:
        self.spec = spec
        self.obs = obs
        self.primary = primary
        self.guards = guards
        self.rec = rec
        serving = bool(obs.target.running) or any(bool(v.local) for v in obs.vips)
        self.state = "serving" if serving else "idle"
        # Already serving before this plan: Primary here (observed, not promoted by this plan)
        # with a VIP local or the target running. Restoring a part then is a repair.
        self.was_serving = serving and any(r.role is Role.PRIMARY for r in obs.resources)

    def has_primary(self) -> bool:
        return any(self.primary.values())

    def record_serve(self) -> None:
        spec, obs, rec = self.spec.spec, self.obs, self.rec
        serving = [name for name, is_primary in self.primary.items() if is_primary]
        if not any(name not in rec.promotes for name in serving):
            # Nothing is Primary yet: the serving chain needs one of this plan's promotions
            # to succeed (whichever: one failing resource must not keep the others unserved).
            rec.serve_tail = None
            first_needs: tuple[int, ...] = tuple(rec.promotes[name] for name in serving)
        else:
            first_needs = ()
        # The VIPs are decided first (a refused one keeps the target from starting); an ARP
        # probe still running (``probe_pending``) is checked by add-vip itself (``Action.probe``).
        vips_ok = True
        vip_steps: list[tuple[str, VipObs, str]] = []  # (what, observation, verdict reason)
        for vip in spec.vips:
            vobs = obs.vip(vip.ip)
            if vobs.local:
                if vobs.announced is False:
                    vip_steps.append(("announce", vobs, ""))
                continue
            verdict = self.guards.may_add_vip(vobs, serving_resources=serving)
            if not verdict.ok:
                rec.block(verdict.refusal, "add-vip", verdict.reason)
                vips_ok = False
                continue
            vip_steps.append(("add", vobs, verdict.reason))
        if not vips_ok and not obs.target.running:
            # Starting a target nobody can reach only widens the blast radius of a conflict.
            return
        # A VIP whose probe is still running goes after the target steps, which its wait then
        # overlaps (the planned swap's new primary); otherwise the VIP comes first: initiators
        # find the address (and its gratuitous ARP) as early as possible, which after a crash,
        # with their ARP caches still on the dead node, is what their reconnect waits for.
        vip_last = any(vobs.probe_pending for what, vobs, _ in vip_steps if what == "add")
        if vip_last:
            self._record_target(first_needs)
        self._record_vips(first_needs, vip_steps)
        if not vip_last:
            self._record_target(first_needs)

    def _record_vips(
        self, first_needs: tuple[int, ...], vip_steps: list[tuple[str, VipObs, str]]
    ) -> None:
        """The VIP steps of ``record_serve``."""
        for what, vobs, reason in vip_steps:
            if what == "announce":
                self._serving_act(
                    first_needs,
                    ActionKind.ANNOUNCE_VIP,
                    "the VIP is here but was not announced after it was added (an agent "
                    "stopped in between, or the announcement failed): gratuitous ARP so "
                    "initiators' ARP caches do not keep the old holder",
                    vip=vobs.address,
                )
                continue
            if self.was_serving:
                self._serving_act(
                    first_needs,
                    ActionKind.ADD_VIP,
                    f"repair: the VIP is gone from this serving primary; {reason}",
                    vip=vobs.address,
                    repair=True,
                    probe=vobs.probe_pending,
                )
            else:
                self._serving_act(
                    first_needs,
                    ActionKind.ADD_VIP,
                    f"primary here and {reason}",
                    vip=vobs.address,
                    probe=vobs.probe_pending,
                )
            self._serving_act(
                first_needs,
                ActionKind.ANNOUNCE_VIP,
                "gratuitous ARP so initiators' ARP caches move to this node at once",
                vip=vobs.address,
            )

    def _record_target(self, first_needs: tuple[int, ...]) -> None:
        """The target and LUN steps of ``record_serve`` (before its VIP steps)."""
        spec, obs, rec = self.spec.spec, self.obs, self.rec
        if obs.target.running is None:
            rec.block(
                BlockKind.TARGET_UNKNOWN,
                "start-target",
                f"target state unknown ({obs.target.error})",
            )
            return
        # A leftover target on the declared tid (a changed IQN) is deleted first in this plan:
        # the declared one must then be defined, as if the daemon ran without it (and only
        # once that deletion succeeded: the tid is taken until then).
        replaced = any(t.tid == spec.target.tid for t in obs.leftovers.targets)
        running = bool(obs.target.running) and not replaced
        if not running:
            start_after = rec.deleted_targets.get(spec.target.tid) if replaced else None
            if start_after is not None and rec.serve_tail is not None:
                rec.serve_tail = rec.act(
                    ActionKind.START_TARGET,
                    "the old target on this tid was deleted: define the declared one",
                    after=(rec.serve_tail, start_after),
                )
            elif start_after is not None:
                rec.serve_tail = rec.act(
                    ActionKind.START_TARGET,
                    "the old target on this tid was deleted: define the declared one",
                    after=(start_after,),
                    after_any=first_needs,
                )
            elif self.was_serving:
                self._serving_act(
                    first_needs,
                    ActionKind.START_TARGET,
                    "repair: the target stopped on this serving primary; start it again",
                    repair=True,
                )
            else:
                self._serving_act(
                    first_needs,
                    ActionKind.START_TARGET,
                    "primary here and the target is not running",
                )
        exported = obs.target.exported_luns if running else frozenset()
        for lun in spec.target.luns:
            verdict = self.guards.may_export(lun.resource, primary=self.primary)
            # A LUN needs the serving chain (the target) and its own resource's chain (its
            # promotion), not the other resources: their failures leave it exported.
            after = () if rec.serve_tail is None else (rec.serve_tail,)
            needs = after + rec._res_after(lun.resource)
            any_of = first_needs if rec.serve_tail is None else ()
            if lun.lun in exported:
                if not verdict.ok:
                    rec.act(
                        ActionKind.UNEXPORT_LUN,
                        verdict.reason,
                        after=after,
                        lun=lun.lun,
                        resource=lun.resource,
                    )
                continue
            if verdict.ok:
                rec.act(
                    ActionKind.EXPORT_LUN,
                    f"{lun.resource} is Primary here; export it as LUN {lun.lun}",
                    after=needs,
                    after_any=any_of,
                    lun=lun.lun,
                    resource=lun.resource,
                )
            else:
                rec.block(
                    verdict.refusal,
                    "export-lun",
                    f"LUN {lun.lun} is not exported: {verdict.reason} (the other resources "
                    "are served)",
                    lun.resource,
                )

    def _serving_act(
        self, first_needs: tuple[int, ...], kind: ActionKind, reason: str, **where: Any
    ) -> None:
        """The next serving-chain action; the chain's first action needs one promotion of
        ``first_needs`` (when nothing is Primary yet)."""
        rec = self.rec
        if rec.serve_tail is None and first_needs:
            rec.serve_tail = rec.act(kind, reason, after_any=first_needs, **where)
        else:
            rec.act_serving(kind, reason, **where)

    def record_unserve(self) -> None:
        obs, rec = self.obs, self.rec
        # A target left half-defined (agent killed mid-start or mid-stop: reported not running
        # with an error, on a daemon that runs) must still be deleted. A daemon that is down
        # (or must be restarted on its portal: ``start-daemon`` does it) has no target.
        target = obs.target
        if target.running is not False or (target.error is not None and target.daemon is not False):
            rec.act_serving(
                ActionKind.STOP_TARGET,
                "this node must not serve: stop the target first so no initiator writes here",
            )
        for vip in self.spec.spec.vips:
            vobs = obs.vip(vip.ip)
            if vobs.local or vobs.local is None:
                rec.act_serving(
                    ActionKind.REMOVE_VIP,
                    "this node must not serve: release the VIP for the primary",
                    vip=vip.ip,
                )


# --- the role decision --------------------------------------------------------------------


def desired_role(spec: StorageCluster, obs: ObservedState) -> tuple[Role | None, str]:
    """Which role this node should have, and why. None means "hold the current roles"."""
    op = obs.operator
    if op.manual_mode or spec.spec.role_source.type is RoleSourceType.MANUAL:
        if op.chosen_role in (Role.PRIMARY, Role.SECONDARY):
            return op.chosen_role, f"manual mode: the operator chose {op.chosen_role.value}"
        return None, "manual mode: keeping the current roles"
    if spec.spec.role_source.type is RoleSourceType.STATIC:
        return _static_role(spec, obs)
    verdict = obs.role_source
    if verdict.role is Role.UNKNOWN:
        return None, f"role source has no verdict ({verdict.detail or 'unknown'}); holding roles"
    return verdict.role, verdict.detail or f"role source says {verdict.role.value}"


def _static_role(spec: StorageCluster, obs: ObservedState) -> tuple[Role, str]:
    rs = spec.spec.role_source
    me_primary = any(r.role is Role.PRIMARY for r in obs.resources)
    peer_primary = any(r.peer_role is Role.PRIMARY for r in obs.resources)
    if obs.node == rs.preferred:
        if peer_primary and not rs.failback:
            return Role.SECONDARY, "preferred node, but the peer holds storage and failback is off"
        return Role.PRIMARY, "this is the preferred node"
    if me_primary and not rs.failback:
        return Role.PRIMARY, "holding storage after a takeover (failback is off)"
    if obs.liveness.peer_reachable is False and not any(r.conn.is_connected for r in obs.resources):
        return Role.PRIMARY, f"the preferred node {rs.preferred} is unreachable: take over"
    return Role.SECONDARY, f"{rs.preferred} is the preferred node"


# --- plan() -------------------------------------------------------------------------------


def plan(
    desired: StorageCluster, observed: ObservedState, *, guards: Guards = DEFAULT_GUARDS
) -> Plan:
    """Compute the minimal ordered plan for ``observed.node``. Pure and deterministic."""
    spec = desired.spec
    rec = _Recorder()
    warnings: list[PlanWarning] = []
    role, role_reason = desired_role(desired, observed)
    if role is None:
        holding = any(r.role is Role.PRIMARY for r in observed.resources)
        role = Role.PRIMARY if holding else Role.SECONDARY
        role_reason = f"{role_reason} ({role.value.lower()})"
    elif role is Role.SECONDARY and not _operator_chose(desired, observed):
        # Never demote into an outage: the role source moved the primary role away, but if
        # the peer could not promote (DRBD would refuse it too), stepping down only stops all
        # service. Hold, say why, and step down on the first tick the peer could take over
        # (its resync done: the hand-over then has no second gap). Level-based: judged anew
        # each tick. An operator's become-secondary is obeyed (the reference design's rule).
        holds = any(r.known and r.up and r.role is Role.PRIMARY for r in observed.resources)
        takeover = safety.peer_can_take_over(observed, peer=_peer_name(desired, observed.node))
        if holds and not takeover.ok:
            rec.block(BlockKind.HOLDING, "step-down", f"holding: {takeover.reason}")
            role = Role.PRIMARY
            role_reason = f"{role_reason}; but holding: {takeover.reason}"

    policy: DisconnectedPolicy = spec.promotion.when_disconnected
    timing = safety.WitnessTiming.from_spec(spec)
    lost = None
    if policy is DisconnectedPolicy.WITNESS and role is Role.PRIMARY:
        lost = _witness_lost(observed, timing)
    if lost:
        # The lease (the right to serve while disconnected) is gone or about to be: stop
        # serving now, before the other node may take over. Overrides holding.
        warnings.append(PlanWarning(WarningKind.WITNESS_STEP_DOWN, lost))
        rec.blocked = [b for b in rec.blocked if b.kind is not BlockKind.HOLDING]
        role, role_reason = Role.SECONDARY, f"{role_reason}; but {lost}"

    _plan_leftovers(observed, rec)
    vip_elsewhere = any(bool(v.answered_elsewhere) for v in observed.vips)
    node_serving = bool(observed.target.running) or any(bool(v.local) for v in observed.vips)
    verdicts = {
        res.name: guards.may_promote(
            observed.resource(res.name),
            policy=policy,
            liveness=observed.liveness,
            override=observed.operator.force,
            vip_answered_elsewhere=vip_elsewhere,
            vip_probe_pending=any(v.probe_pending for v in observed.vips),
            witness=observed.witness,
            node=observed.node,
            witness_timing=timing,
        )
        for res in spec.resources
    }
    claim = _plan_claim_before_promote(observed, role, verdicts, rec)
    models: list[_ResourceModel] = []
    for res in spec.resources:
        robs = observed.resource(res.name)
        verdict = verdicts[res.name]
        model = _ResourceModel(robs, verdict, rec, serving=node_serving)
        models.append(model)
        if model.state == "unknown":
            rec.block(
                BlockKind.DRBD_UNKNOWN,
                "observe",
                f"cannot read DRBD state of {res.name}: {robs.error}",
                res.name,
            )
            continue
        if model.state == "down":
            _fire(RESOURCE_MACHINE, "start", model)
            continue
        if robs.conn is ConnState.STANDALONE:
            if robs.split_brain:
                warnings.append(
                    PlanWarning(
                        WarningKind.SPLIT_BRAIN,
                        f"split brain on {res.name}: nothing is discarded automatically; "
                        "run the guided recovery (`reconcile split-brain --help`)",
                        res.name,
                    )
                )
            else:
                rec.act_resource(
                    ActionKind.CONNECT,
                    f"repair: {res.name} is StandAlone without split brain: reconnect to the peer",
                    res.name,
                    repair=True,
                )
        promoting = role is Role.PRIMARY and model.state == "secondary"
        if promoting and not _fire(RESOURCE_MACHINE, "promote", model):
            rec.block(verdict.refusal, "promote", verdict.reason, res.name)

    primary = {m.obs.name: m.state == "primary" for m in models}
    serving = _ServingModel(spec=desired, obs=observed, primary=primary, guards=guards, rec=rec)
    unreadable = any(m.state == "unknown" for m in models)
    if unreadable and serving.state == "serving":
        # One unreadable DRBD status must not tear down a serving primary: hold the VIP and
        # the target until DRBD can be read again. Safe: only this agent demotes, and never
        # while its target runs, so a running target still sits on a Primary device.
        warnings.append(
            PlanWarning(
                WarningKind.DRBD_UNREADABLE,
                "DRBD state unreadable: holding the VIP and the target as they are",
            )
        )
    elif role is Role.PRIMARY and serving.has_primary():
        _fire(SERVING_MACHINE, "serve", serving)
    else:
        _fire(SERVING_MACHINE, "unserve", serving)
        if role is Role.SECONDARY:
            for model in models:
                if model.state == "primary":
                    _fire(RESOURCE_MACHINE, "demote", model)
    if policy is DisconnectedPolicy.WITNESS:
        _plan_lease(observed, role, timing, claimed=claim is not None, rec=rec, warnings=warnings)
    _plan_daemon(observed, rec, in_trouble=unreadable)
    _plan_pbds(
        desired,
        observed,
        serving=serving.state == "serving",
        guards=guards,
        rec=rec,
        warnings=warnings,
    )
    # Connect before promote/serve work is pointless to reorder; but CONNECT must never sit
    # between a stop-target and a demote either: keep the recorded order (it already is).
    for robs in observed.resources:
        if robs.known and robs.up and robs.degraded and not robs.split_brain:
            warnings.append(
                PlanWarning(
                    WarningKind.DEGRADED,
                    f"replication of {robs.name} is degraded: {robs.conn.value} "
                    f"{robs.disk.value}/{robs.peer_disk.value}",
                    robs.name,
                )
            )
    return Plan(
        node=observed.node,
        desired_role=role,
        role_reason=role_reason,
        actions=tuple(rec.actions),
        blocked=tuple(rec.blocked),
        warnings=tuple(warnings),
        serving=serving.state == "serving",
    )


# --- the witness (promotion.whenDisconnected: witness) ---------------------------------------


def _primaries(observed: ObservedState) -> list[ResourceObs]:
    return [r for r in observed.resources if r.known and r.up and r.role is Role.PRIMARY]


def _witness_lost(observed: ObservedState, timing: safety.WitnessTiming) -> str | None:
    """Why this node, Primary and cut off from its peer, must stop serving now (None: it may
    go on). While DRBD is connected the peer cannot promote, so the witness is not needed
    (etcd down does not stop a connected cluster). Disconnected, this node serves only on its
    lease: held (per a majority) with more than the step-down margin left, or, with etcd
    unreachable, a lease that still has more than the margin left on this node's clock. A
    free key is claimed in this plan (whoever claims first wins; the other waits the settle
    time before promoting). The operator's --force override is obeyed."""
    if observed.operator.force:
        return None
    cut = [r.name for r in _primaries(observed) if not r.conn.is_connected]
    if not cut:
        return None
    w, me = observed.witness, observed.node
    where = f"{', '.join(cut)} disconnected from the peer"
    left = w.lease_left
    if w.reachable and w.holder is not None and w.holder != me:
        return f"{where} and the witness key is held by {w.holder}: stop serving"
    if w.reachable and w.holder is None:
        return None  # claimed below (before the other node can)
    if w.reachable and (left is None or left > timing.step_down):
        return None  # held by this node (a lease of unknown age is refreshed below)
    if not w.reachable and left is not None and left > timing.step_down:
        return None  # on the lease still running on this node's clock (warned below)
    if w.reachable:
        return (
            f"{where} and the witness lease could not be renewed ({left:.1f} s left, margin "
            f"{timing.step_down:.1f} s): stop serving before it can expire on etcd"
        )
    have = "no lease" if left is None else f"{max(left, 0.0):.1f} s of lease left"
    why = f" ({w.error})" if w.error else ""
    return (
        f"{where} and the witness unreachable{why} with {have}: stop serving before the "
        "other node may take over"
    )


def _plan_claim_before_promote(
    observed: ObservedState, role: Role, verdicts: dict[str, safety.Verdict], rec: _Recorder
) -> int | None:
    """Claim the witness key before any promotion that needs it: when a promotion is allowed
    only on the witness (``Verdict.claim``) the promote of that resource runs after the claim
    (the lease is fresh when it promotes, and a failed claim stops the promotion); when the
    key is free, the claim alone (the promotion waits the settle time)."""
    if role is not Role.PRIMARY:
        return None
    secondary = [r.name for r in observed.resources if _resource_phase(r) == "secondary"]
    needs = [name for name in secondary if name in verdicts and verdicts[name].claim]
    free = any(
        verdicts[name].refusal is BlockKind.WITNESS_CLAIM for name in secondary if name in verdicts
    )
    if not needs and not free:
        return None
    if needs:
        index = rec.act(
            ActionKind.CLAIM_WITNESS,
            "claim the free witness key right before promoting while disconnected"
            if observed.witness.holder is None
            else "refresh this node's witness lease right before promoting while disconnected",
        )
        for name in needs:
            rec.res_tail[name] = index
        return index
    return rec.act(
        ActionKind.CLAIM_WITNESS,
        "the witness key is free and this node should take over: claim it (the promotion "
        "follows once it has been held for the settle time)",
    )


def _plan_lease(
    observed: ObservedState,
    role: Role,
    timing: safety.WitnessTiming,
    *,
    claimed: bool,
    rec: _Recorder,
    warnings: list[PlanWarning],
) -> None:
    """Keep the lease where it belongs. A Primary that keeps serving claims a free key and
    refreshes its own lease once lease_left is at or below ``timing.refresh`` (so an idle tick
    usually applies nothing); a node that does not serve and does not wait to promote while
    disconnected releases a key it holds, after its demotes (the hand-over of a swap)."""
    w, me = observed.witness, observed.node
    primary_after = role is Role.PRIMARY and bool(_primaries(observed))
    if not w.reachable:
        why = f" ({w.error})" if w.error else ""
        connected = all(r.conn.is_connected for r in observed.resources if r.known and r.up)
        if connected:
            warnings.append(
                PlanWarning(
                    WarningKind.WITNESS_UNREACHABLE,
                    f"witness unreachable{why}: no promotion while disconnected (serving and "
                    "swapping go on while DRBD is connected)",
                )
            )
        elif primary_after and w.lease_left is not None:
            warnings.append(
                PlanWarning(
                    WarningKind.WITNESS_UNREACHABLE,
                    f"witness unreachable{why} while disconnected: serving on for the "
                    f"{w.lease_left:.1f} s of lease left, then stopping",
                )
            )
        return
    if claimed:
        return
    if primary_after:
        if w.holder is None:
            rec.act(
                ActionKind.CLAIM_WITNESS,
                "this node serves and the witness key is free: claim it",
            )
        elif w.holder == me and (w.lease_left is None or w.lease_left <= timing.refresh):
            left = "of unknown age" if w.lease_left is None else f"{w.lease_left:.1f} s left"
            rec.act(
                ActionKind.CLAIM_WITNESS,
                f"refresh the witness lease ({left}; refreshed at {timing.refresh:.1f} s)",
            )
        return
    if w.holder != me:
        return
    waiting = role is Role.PRIMARY and any(
        _resource_phase(r) == "secondary" and not r.conn.is_connected for r in observed.resources
    )
    if waiting:
        return
    demotes = tuple(i for i, a in enumerate(rec.actions) if a.kind is ActionKind.DEMOTE)
    rec.act(
        ActionKind.RELEASE_WITNESS,
        "this node does not serve: release the witness key for the primary",
        after=demotes,
    )


def _plan_leftovers(observed: ObservedState, rec: _Recorder) -> None:
    """Remove what this agent created that the spec no longer declares, in tear-down order
    (LUNs, then targets, then addresses), on any node: nothing here serves a declared item.
    One chain of its own: a failed removal stops the removals after it (the next tick retries)
    and nothing else. A deleted target on the declared tid is remembered
    (``rec.deleted_targets``): the declared target is defined only after it."""
    left = observed.leftovers

    def chained(kind: ActionKind, reason: str, **where: Any) -> int:
        after = () if rec.leftover_tail is None else (rec.leftover_tail,)
        rec.leftover_tail = rec.act(kind, reason, after=after, **where)
        return rec.leftover_tail

    for lun in left.luns:
        chained(
            ActionKind.UNEXPORT_OLD_LUN,
            f"LUN {lun.lun} of {lun.iqn} was exported by this agent and the spec no longer "
            "lists it: unexport it",
            lun=lun.lun,
            tid=lun.tid,
            iqn=lun.iqn,
        )
    for target in left.targets:
        index = chained(
            ActionKind.DELETE_OLD_TARGET,
            f"target {target.iqn} (tid {target.tid}) was defined by this agent and the spec "
            "no longer declares it: delete it",
            tid=target.tid,
            iqn=target.iqn,
        )
        rec.deleted_targets[target.tid] = index
    for vip in left.vips:
        chained(
            ActionKind.REMOVE_OLD_VIP,
            f"{vip.address} on {vip.interface} was added by this agent and the spec no longer "
            "declares it: remove it",
            vip=vip.address,
            interface=vip.interface,
        )


def _plan_daemon(observed: ObservedState, rec: _Recorder, *, in_trouble: bool) -> None:
    """The resident target daemon: started on a node where it is observed down and this plan
    neither starts the target (``start-target`` starts the daemon when it must) nor stops a
    half-stopped one (the next tick starts it then). Independent of every other chain: the
    daemon alone serves nothing (no target is defined in it), so it is safe on any node, and
    a takeover later only defines the target. Not while the node is in trouble (some DRBD
    state unreadable: nothing is changed blind); unknown (``daemon`` None) plans nothing."""
    if observed.target.daemon is not False or in_trouble:
        return
    planned = {a.kind for a in rec.actions}
    if ActionKind.START_TARGET in planned or ActionKind.STOP_TARGET in planned:
        return
    rec.act(
        ActionKind.START_DAEMON,
        "the target daemon is not running here: start it (no target defined) so a takeover "
        "only has to define the target",
        after=(),
    )


def _operator_chose(spec: StorageCluster, obs: ObservedState) -> bool:
    """The role comes from an operator (manual mode), not from an automatic role source."""
    return obs.operator.manual_mode or spec.spec.role_source.type is RoleSourceType.MANUAL


def _peer_name(spec: StorageCluster, node: str) -> str:
    return next((n for n in spec.node_names if n != node), "the peer")


def _plan_pbds(
    desired: StorageCluster,
    observed: ObservedState,
    *,
    serving: bool,
    guards: Guards,
    rec: _Recorder,
    warnings: list[PlanWarning],
) -> None:
    """This host's PBDs of the SRs served through the VIP: plug an unplugged one, re-plug an
    attached one whose SR is unusable here (its volume group is missing: the
    SR_BACKEND_FAILURE_40/46 story after a failover), only while the storage is served
    (``safety.may_plug_pbd``). Runs after the target actions, so its actions come last in the
    plan: after start-target / export-lun on the primary. An unreadable hypervisor touches no
    PBD and changes nothing else in the plan (a warning says so)."""
    hyp = observed.hypervisor
    if not hyp.enabled:
        return
    if hyp.error is not None:
        warnings.append(
            PlanWarning(
                WarningKind.HYPERVISOR_UNREADABLE,
                f"hypervisor unreadable ({hyp.error}): no PBD is plugged or re-plugged",
            )
        )
        return
    spec = desired.spec
    planned = {a.kind for a in rec.actions}
    target_running = observed.target.running is True or ActionKind.START_TARGET in planned
    exported = (observed.target.exported_luns if observed.target.running else frozenset()) | {
        a.lun for a in rec.actions if a.kind is ActionKind.EXPORT_LUN and a.lun is not None
    }
    unexported = {a.lun for a in rec.actions if a.kind is ActionKind.UNEXPORT_LUN}
    added = {a.vip for a in rec.actions if a.kind is ActionKind.ADD_VIP}
    served_here = (
        serving
        and target_running
        and ActionKind.STOP_TARGET not in planned
        and all(lun.lun in exported and lun.lun not in unexported for lun in spec.target.luns)
        and all(observed.vip(v.ip).local is True or v.ip in added for v in spec.vips)
    )
    # The VIP answering from another host is the peer serving only if the peer is Primary for
    # every exported resource (DRBD says so): a stranger on the VIP serves none of our LUNs.
    serving_steps = tuple(
        i
        for i, a in enumerate(rec.actions)
        if a.kind
        in (
            ActionKind.PROMOTE,
            ActionKind.ADD_VIP,
            ActionKind.ANNOUNCE_VIP,
            ActionKind.START_TARGET,
            ActionKind.EXPORT_LUN,
        )
    )
    served_elsewhere = all(
        observed.vip(v.ip).answered_elsewhere is True for v in spec.vips
    ) and all(observed.resource(lun.resource).peer_role is Role.PRIMARY for lun in spec.target.luns)
    for pbd in hyp.pbds:
        sr = f"SR {pbd.sr_name}"
        if pbd.error is not None or pbd.attached is None:
            warnings.append(
                PlanWarning(
                    WarningKind.HYPERVISOR_UNREADABLE,
                    f"PBD {pbd.uuid} of {sr}: state unknown ({pbd.error or 'attachment unknown'})"
                    "; not touched",
                )
            )
            continue
        if not pbd.attached:
            kind, why = ActionKind.PLUG_PBD, f"this host's PBD of {sr} is unplugged"
        elif pbd.usable is False:
            kind = ActionKind.REPLUG_PBD
            why = (
                f"this host's PBD of {sr} is attached but the SR is unusable here "
                f"(volume group VG_XenStorage-{pbd.sr_uuid} missing)"
            )
        else:
            continue
        verdict = guards.may_plug_pbd(served_here=served_here, served_elsewhere=served_elsewhere)
        if not verdict.ok:
            rec.block(verdict.refusal, kind.value, f"{why}, but {verdict.reason}")
            continue
        # Served through this plan's own actions: the plug waits for every one of them (a
        # failed start-target or export leaves the PBD alone; PBD.plug would only fail).
        rec.act(kind, f"{why} and {verdict.reason}", after=serving_steps, pbd=pbd.uuid)


def _fire(machine: Machine, trigger: str, model: Any) -> bool:
    return bool(machine.events[trigger].trigger(model))


def with_operator_force(observed: ObservedState) -> ObservedState:
    """The same observation with the operator's override set (used by become-primary --force)."""
    return replace(observed, operator=replace(observed.operator, force=True))
