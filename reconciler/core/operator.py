"""Operator rules: the verdicts of ``manual-mode``, ``become-primary``/``-secondary`` and
``split-brain``, and the split-brain recovery plans.

Pure (no I/O, no clock): every function takes plain values (the node's name, the persisted
``OperatorState``, the ``ObservedState``, the spec) and returns a value. The shell
(``reconciler.operations``) observes, asks these functions, persists an accepted verdict's
``new_state`` and runs a recovery ``Plan`` through the executor; the CLI and the simulator both
go through it, so the rules and their messages exist once.

Invariants:
- a refused ``Verdict`` carries a typed ``Refusal`` and no ``new_state``: nothing is persisted;
- an accepted ``Verdict`` carries the exact ``OperatorState`` to persist (``None``: persist
  nothing, e.g. the split-brain survivor keeps its operator state);
- messages are for people and say what to do next; decisions read ``accepted``/``refusal``;
- the rules, in order: become-* need manual mode; become-primary is refused while the DRBD peer
  is Primary on any resource (never two primaries) or a VIP answers from another host; leaving
  manual mode is refused without a role-source verdict or while this node does not hold its
  native role (leaving must never move storage); split-brain recovery needs a known survivor and
  resource, a resource that is really not connected, ``--yes`` (unless only dry-running), and no
  agent acting for the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reconciler.core import safety
from reconciler.core.observed import ConnState, ObservedState, OperatorState, Role
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.spec import StorageCluster


class Refusal(StrEnum):
    """Why an operator command was refused. ``is_usage``: the command line itself was wrong
    (the CLI exits 2), otherwise a rule refused it (exit 3)."""

    NOT_IN_MANUAL_MODE = "not-in-manual-mode"
    PEER_PRIMARY = "peer-primary"
    VIP_ANSWERS_ELSEWHERE = "vip-answers-elsewhere"
    NO_ROLE_VERDICT = "no-role-verdict"
    NOT_IN_NATIVE_ROLE = "not-in-native-role"
    UNKNOWN_SURVIVOR = "unknown-survivor"
    UNKNOWN_RESOURCE = "unknown-resource"
    NOT_IN_SPLIT_BRAIN = "not-in-split-brain"
    NOT_CONFIRMED = "not-confirmed"
    AGENT_RUNNING = "agent-running"

    @property
    def is_usage(self) -> bool:
        return self in _USAGE


_USAGE = frozenset({Refusal.UNKNOWN_SURVIVOR, Refusal.UNKNOWN_RESOURCE, Refusal.NOT_CONFIRMED})


@dataclass(frozen=True, slots=True)
class Verdict:
    """An operator command's verdict. ``new_state``: what to persist when accepted."""

    accepted: bool
    message: str
    refusal: Refusal | None = None
    new_state: OperatorState | None = None

    def __bool__(self) -> bool:
        return self.accepted


def _refuse(refusal: Refusal, message: str) -> Verdict:
    return Verdict(False, message, refusal)


def holding_role(observed: ObservedState) -> Role:
    """The role this node holds now: Primary when any resource is Primary here."""
    return (
        Role.PRIMARY if any(r.role is Role.PRIMARY for r in observed.resources) else Role.SECONDARY
    )


def describe_state(node: str, current: OperatorState) -> str:
    """``manual-mode show``."""
    chosen = current.chosen_role.value if current.chosen_role else "none"
    return f"{node}: manual mode {'on' if current.manual_mode else 'off'}; chosen role: {chosen}"


# --- manual mode ---------------------------------------------------------------------------


def manual_mode_enable(node: str, current: OperatorState) -> Verdict:
    """Always accepted; a role chosen earlier is kept (the override flag is not)."""
    return Verdict(
        True,
        f"{node}: manual mode enabled; roles are held until you choose one",
        new_state=OperatorState(manual_mode=True, chosen_role=current.chosen_role),
    )


def manual_mode_disable(node: str, current: OperatorState, observed: ObservedState) -> Verdict:
    """Leaving manual mode must not move storage: refused without a role-source verdict, or
    while this node holds another role than its native one (the role source's). ``current`` is
    not consulted (disabling is allowed, and idempotent, whatever was set)."""
    del current
    native = observed.role_source.role
    detail = observed.role_source.detail
    holding = holding_role(observed)
    if native is Role.UNKNOWN:
        return _refuse(
            Refusal.NO_ROLE_VERDICT,
            f"refused: the role source has no verdict ({detail}); "
            "leaving manual mode now could move storage unpredictably",
        )
    if native is not holding:
        return _refuse(
            Refusal.NOT_IN_NATIVE_ROLE,
            f"refused: {node} is {holding.value} but its native role is {native.value} "
            f"({detail}); swap roles back first so leaving manual mode does not move storage",
        )
    return Verdict(
        True,
        f"{node}: manual mode disabled; following the role source again",
        new_state=OperatorState(),
    )


# --- become-primary / become-secondary -------------------------------------------------------


def require_manual_mode(node: str, current: OperatorState) -> Verdict | None:
    """The first rule of become-*: the refusal, or None when this node is in manual mode. Needs
    no observation, so the shell asks it before observing."""
    if current.manual_mode:
        return None
    return _refuse(
        Refusal.NOT_IN_MANUAL_MODE,
        f"refused: {node} is not in manual mode (run `reconcile manual-mode enable`)",
    )


def become_primary(
    node: str, current: OperatorState, observed: ObservedState, *, force: bool
) -> Verdict:
    """Manual mode only; refused while the DRBD peer is Primary for any resource (dual primary
    is never allowed, ``force`` or not) or a VIP answers from another host. ``force`` is only
    recorded: it lets the planner promote while disconnected against the spec's policy."""
    if (refused := require_manual_mode(node, current)) is not None:
        return refused
    peer_primary = [r.name for r in observed.resources if r.peer_role is Role.PRIMARY]
    if peer_primary:
        return _refuse(
            Refusal.PEER_PRIMARY,
            f"refused: the peer is Primary for {', '.join(peer_primary)}; run "
            "`reconcile become-secondary` on the peer first",
        )
    answered = [v.address for v in observed.vips if v.answered_elsewhere]
    if answered:
        return _refuse(
            Refusal.VIP_ANSWERS_ELSEWHERE,
            f"refused: VIP {', '.join(answered)} answers from another host; release it there first",
        )
    return Verdict(
        True,
        f"{node}: accepted: becoming Primary" + (" (forced)" if force else ""),
        new_state=OperatorState(manual_mode=True, chosen_role=Role.PRIMARY, force=force),
    )


def become_secondary(
    node: str,
    current: OperatorState,
    observed: ObservedState | None = None,
    *,
    peer: str = "the peer",
) -> Verdict:
    """Manual mode only; otherwise always allowed (stepping down never risks two primaries,
    the reference design's rule). With the ``observed`` state, the message says plainly when
    nobody can take over (``safety.peer_can_take_over``): the operator then stops all service
    until the peer can promote, and is told so."""
    if (refused := require_manual_mode(node, current)) is not None:
        return refused
    message = f"{node}: accepted: becoming Secondary"
    if observed is not None:
        takeover = safety.peer_can_take_over(observed, peer=peer)
        if not takeover.ok:
            message += (
                f"; WARNING: nobody can take over ({takeover.reason}): storage is not served "
                "until the peer can promote"
            )
    return Verdict(
        True,
        message,
        new_state=OperatorState(manual_mode=True, chosen_role=Role.SECONDARY),
    )


# --- split-brain recovery -------------------------------------------------------------------


def recovery_role_text(node: str, resource: str, *, survivor: str) -> str:
    """What the recovery does to this node's data, said before anything happens."""
    if node != survivor:
        return f"{node} is the VICTIM: its writes to {resource} since the split are discarded"
    return f"{node} is the survivor: its data of {resource} is kept"


def check_recovery_request(spec: StorageCluster, *, resource: str, survivor: str) -> Verdict | None:
    """The usage rules of ``split-brain``, which need no observation: the refusal, or None when
    the survivor and the resource are in the spec. The shell asks it before observing."""
    if survivor not in spec.node_names:
        return _refuse(
            Refusal.UNKNOWN_SURVIVOR,
            f"--survivor {survivor!r} is not a node of the spec ({', '.join(spec.node_names)})",
        )
    if all(r.name != resource for r in spec.spec.resources):
        return _refuse(Refusal.UNKNOWN_RESOURCE, f"no resource {resource!r} in the spec")
    return None


def split_brain_recovery(
    spec: StorageCluster,
    node: str,
    observed: ObservedState,
    *,
    resource: str,
    survivor: str,
    confirmed: bool,
    dry_run: bool = False,
    agent_holder: str | None = None,
) -> Verdict:
    """May the guided recovery of ``resource`` run on ``node``? In this order: the survivor and
    the resource are in the spec (usage errors, ``check_recovery_request``), the
    agent really sees the resource not connected (after a split brain DRBD leaves both sides
    disconnected: StandAlone, or the survivor may sit in Connecting/WFConnection; only a live
    connection proves there is nothing to recover), ``confirmed`` (``--yes``) and no agent
    holding the node's lock (``agent_holder``: its pid). A dry run needs neither of the last
    two: it changes nothing. Accepted on the victim with the operator state to persist before
    the plan runs (manual mode, chosen Secondary, so no agent promotes it again)."""
    if (refused := check_recovery_request(spec, resource=resource, survivor=survivor)) is not None:
        return refused
    obs = observed.resource(resource)
    if not obs.known or obs.conn.is_connected:
        state = obs.conn.value if obs.known else f"unknown ({obs.error})"
        return _refuse(
            Refusal.NOT_IN_SPLIT_BRAIN,
            f"refused: {resource} on {node} is {state}, not in split brain; nothing to recover",
        )
    what = recovery_role_text(node, resource, survivor=survivor)
    if not confirmed and not dry_run:
        return _refuse(
            Refusal.NOT_CONFIRMED,
            f"{what}. Re-run with --yes to proceed (run it on the victim first).",
        )
    if agent_holder is not None and not dry_run:
        return _refuse(
            Refusal.AGENT_RUNNING,
            f"refused: a reconcile agent (pid {agent_holder}) is acting for {node}; stop it "
            "first (systemctl stop tandem) so the recovery steps are not raced",
        )
    victim = node != survivor
    after = (
        "Now run it on the survivor."
        if victim
        else "Resync follows; check `reconcile status`, then leave manual mode on the victim."
    )
    new_state = OperatorState(manual_mode=True, chosen_role=Role.SECONDARY) if victim else None
    if dry_run:
        first = f"{node} is put in manual mode as Secondary, then " if victim else ""
        return Verdict(
            True,
            f"{what}. Dry run: nothing was changed. With --yes {first}the plan above runs"
            + (" (run it on the victim first)." if not victim else "."),
            new_state=new_state,
        )
    return Verdict(True, f"{what}. Done on {node}. {after}", new_state=new_state)


def recovery_plan(
    spec: StorageCluster, node: str, observed: ObservedState, *, resource: str, survivor: str
) -> Plan:
    """The recovery plan of ``resource`` on ``node``: on the victim stop the target, release the
    VIPs, demote, disconnect (a discard-connect needs a StandAlone resource) and reconnect
    discarding its own data (it then resyncs from the survivor); on the survivor reconnect.

    Each step is planned only when the observation says it is needed (a step on a facet whose
    state is unknown is planned: stopping twice is harmless, serving from a victim is not). The
    survivor's connect is always planned: it is the whole point of running it there (an
    already-connecting resource accepts it as done). Call it only after ``split_brain_recovery``
    accepted: it does not judge whether a recovery is due.
    """
    obs = observed.resource(resource)
    what = recovery_role_text(node, resource, survivor=survivor)
    if node == survivor:
        return Plan(
            node=node,
            desired_role=holding_role(observed),
            role_reason=f"split-brain recovery: {what}",
            actions=(
                Action(
                    ActionKind.CONNECT,
                    f"survivor: reconnect {resource} so the victim resyncs from this node's data",
                    resource=resource,
                ),
            ),
        )
    s = spec.spec
    actions: list[Action] = []
    if observed.target.running is not False:
        actions.append(
            Action(ActionKind.STOP_TARGET, "victim: stop serving before its data is discarded")
        )
    for vip in s.vips:
        if observed.vip(vip.ip).local is not False:
            actions.append(
                Action(
                    ActionKind.REMOVE_VIP, "victim: release the VIP for the survivor", vip=vip.ip
                )
            )
    if obs.role is not Role.SECONDARY:
        actions.append(
            Action(
                ActionKind.DEMOTE,
                f"victim: {resource} must be Secondary to discard its data",
                resource=resource,
            )
        )
    if obs.conn is not ConnState.STANDALONE:
        actions.append(
            Action(
                ActionKind.DISCONNECT,
                f"{resource} is {obs.conn.value}: a discard-connect needs it StandAlone",
                resource=resource,
            )
        )
    actions.append(
        Action(
            ActionKind.CONNECT_DISCARD,
            f"victim: reconnect discarding its writes to {resource} since the split; "
            "it resyncs from the survivor",
            resource=resource,
        )
    )
    return Plan(
        node=node,
        desired_role=Role.SECONDARY,
        role_reason=f"split-brain recovery: {what}",
        actions=tuple(actions),
    )
