"""The tick report and the status record as one typed model, shared by writer and reader.

The writer (``reconciler.agent``: ``TickReport.to_json`` for ``--json`` lines,
``write_status`` for ``status-NODE.json``) builds these models from a tick; the reader
(``reconciler.status``, ``reconcile status``) validates the file back into them. Neither side
spells a key by hand, so the two cannot drift apart.

Invariants:
- The JSON is the same shape as before the model (same keys, enum *values* as strings:
  ``"desired_role": "Primary"``); a record written by an earlier version still validates
  (``blocked`` entries without ``kind``, ``warnings`` as plain strings, no ``expected``), and
  what it lacks reads as "not recorded", never as a guess.
- Reading never raises for what is on disk: a missing file, unreadable JSON, or a record of
  the wrong shape (a foreign or corrupt file) is a ``BadRecord`` that says what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from reconciler.core.observed import ConnState, DiskState, ObservedState, Role
from reconciler.core.plan import Action, Blocked, BlockKind, Plan, PlanWarning, WarningKind


class _Model(BaseModel):
    # extra="ignore": a newer writer may add keys an older reader does not know.
    model_config = ConfigDict(frozen=True, extra="ignore")


class ActionRecord(_Model):
    kind: str
    reason: str
    resource: str | None = None
    vip: str | None = None
    lun: int | None = None
    force: bool = False
    tid: int | None = None
    iqn: str | None = None
    interface: str | None = None
    repair: bool = False
    pbd: str | None = None
    probe: bool = False  # add-vip checks the VIP's ARP probe itself (``Action.probe``)

    @classmethod
    def of(cls, action: Action) -> ActionRecord:
        return cls(
            kind=action.kind.value,
            reason=action.reason,
            resource=action.resource,
            vip=action.vip,
            lun=action.lun,
            force=action.force,
            tid=action.tid,
            iqn=action.iqn,
            interface=action.interface,
            repair=action.repair,
            pbd=action.pbd,
            probe=action.probe,
        )

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The spelling of Action.to_json: only the facets an action has.
        out: dict[str, Any] = handler(self)
        flags = ("force", "repair", "probe")
        return {k: v for k, v in out.items() if v is not None and (k not in flags or v)}


class BlockedRecord(_Model):
    kind: BlockKind | None = None  # None: written before refusals had kinds
    what: str
    reason: str
    resource: str | None = None

    @classmethod
    def of(cls, blocked: Blocked) -> BlockedRecord:
        return cls(
            kind=blocked.kind, what=blocked.what, reason=blocked.reason, resource=blocked.resource
        )

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)  # the spelling of Blocked.to_json
        return {k: v for k, v in out.items() if v is not None}


class WarningRecord(_Model):
    kind: WarningKind | None = None  # None: written before warnings had kinds
    resource: str | None = None
    message: str

    @classmethod
    def of(cls, warning: PlanWarning) -> WarningRecord:
        return cls(kind=warning.kind, resource=warning.resource, message=warning.message)


class StepRecord(_Model):
    kind: str
    ok: bool
    attempts: int
    ms: float


class ResourceRecord(_Model):
    name: str
    up: bool = False
    role: Role = Role.UNKNOWN
    connection: ConnState = ConnState.UNKNOWN
    disk: DiskState = DiskState.UNKNOWN
    peer_role: Role = Role.UNKNOWN
    peer_disk: DiskState = DiskState.UNKNOWN
    split_brain: bool = False
    sync_percent: float | None = None
    error: str | None = None


class VipRecord(_Model):
    """``probe_pending``: the VIP's ARP probe had not answered when the tick was planned (the
    add-vip action checks it itself)."""

    address: str
    local: bool | None = None
    answered_elsewhere: bool | None = None
    announced: bool | None = None
    error: str | None = None
    probe_pending: bool = False


class TargetRecord(_Model):
    """``running``: the target is defined here (serving); ``daemon``: the resident tgtd runs
    (None: not known, or a record written before the daemon was reported)."""

    running: bool | None = None
    exported_luns: list[int] = Field(default_factory=list)
    error: str | None = None
    daemon: bool | None = None


class PbdRecord(_Model):
    uuid: str
    sr_uuid: str
    sr_name: str
    attached: bool | None = None
    usable: bool | None = None
    error: str | None = None


class HypervisorRecord(_Model):
    """This host's PBDs (issue 12); ``enabled`` False: no hypervisor adapter configured."""

    enabled: bool = False
    source: str = ""
    pbds: list[PbdRecord] = Field(default_factory=list)
    error: str | None = None


class RoleSourceRecord(_Model):
    role: Role = Role.UNKNOWN
    detail: str = ""


class ObservedRecord(_Model):
    resources: list[ResourceRecord] = Field(default_factory=list)
    vips: list[VipRecord] = Field(default_factory=list)
    target: TargetRecord = Field(default_factory=TargetRecord)
    role_source: RoleSourceRecord = Field(default_factory=RoleSourceRecord)
    manual_mode: bool = False
    chosen_role: Role | None = None
    peer_reachable: bool | None = None
    hypervisor: HypervisorRecord = Field(default_factory=HypervisorRecord)

    @classmethod
    def of(cls, obs: ObservedState) -> ObservedRecord:
        return cls(
            resources=[
                ResourceRecord(
                    name=r.name,
                    up=r.up,
                    role=r.role,
                    connection=r.conn,
                    disk=r.disk,
                    peer_role=r.peer_role,
                    peer_disk=r.peer_disk,
                    split_brain=r.split_brain,
                    sync_percent=r.sync_percent,
                    error=r.error,
                )
                for r in obs.resources
            ],
            vips=[
                VipRecord(
                    address=v.address,
                    local=v.local,
                    answered_elsewhere=v.answered_elsewhere,
                    announced=v.announced,
                    error=v.error,
                    probe_pending=v.probe_pending,
                )
                for v in obs.vips
            ],
            target=TargetRecord(
                running=obs.target.running,
                exported_luns=sorted(obs.target.exported_luns),
                error=obs.target.error,
                daemon=obs.target.daemon,
            ),
            role_source=RoleSourceRecord(role=obs.role_source.role, detail=obs.role_source.detail),
            manual_mode=obs.operator.manual_mode,
            chosen_role=obs.operator.chosen_role,
            peer_reachable=obs.liveness.peer_reachable,
            hypervisor=HypervisorRecord(
                enabled=obs.hypervisor.enabled,
                source=obs.hypervisor.source,
                pbds=[
                    PbdRecord(
                        uuid=p.uuid,
                        sr_uuid=p.sr_uuid,
                        sr_name=p.sr_name,
                        attached=p.attached,
                        usable=p.usable,
                        error=p.error,
                    )
                    for p in obs.hypervisor.pbds
                ],
                error=obs.hypervisor.error,
            ),
        )


class ExpectedRecord(_Model):
    """What the tick's plan leaves this node doing (``Plan.serving``): the status compares the
    observation with it instead of guessing from the role."""

    serving: bool  # the VIPs here and the target running

    @classmethod
    def of(cls, plan: Plan) -> ExpectedRecord:
        return cls(serving=plan.serving)


class TickRecord(_Model):
    """One tick as ``--json`` prints it (and the body of the status record)."""

    node: str
    desired_role: Role
    role_reason: str = ""
    dry_run: bool = False
    actions: list[ActionRecord] = Field(default_factory=list)
    blocked: list[BlockedRecord] = Field(default_factory=list)
    applied: list[ActionRecord] = Field(default_factory=list)
    steps: list[StepRecord] = Field(default_factory=list)
    observe_ms: float = 0.0
    observe_parts_ms: dict[str, float] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    warnings: list[WarningRecord] = Field(default_factory=list)
    converged: bool = False
    exit_code: int = 0
    observed: ObservedRecord = Field(default_factory=ObservedRecord)
    expected: ExpectedRecord | None = None  # None: written before the expectation was recorded
    seconds: float = 0.0
    # When the tick started: epoch seconds and the same instant in ISO 8601 UTC ("...Z").
    # None: written before ticks carried a timestamp.
    time: float | None = None
    timestamp: str | None = None
    simulated: bool = False  # a concern ran on the simulator (spec adapters 'sim')
    # Why a converged node is not healthy (replication degraded, split brain): exit 4.
    degraded: list[WarningRecord] = Field(default_factory=list)
    # The processes the agent's command runner started so far (``Runner.spawned``, counted
    # at the end of the tick; the idle-cost benchmark divides its growth by the ticks).
    # None: no runner, or written before ticks carried it.
    spawns_total: int | None = None

    @field_validator("warnings", mode="before")
    @classmethod
    def _plain_warnings(cls, value: Any) -> Any:
        # Records of earlier versions list warnings as plain messages.
        if isinstance(value, list):
            return [{"message": w} if isinstance(w, str) else w for w in value]
        return value

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class StatusRecord(TickRecord):
    """``status-NODE.json``: the last tick, the observation after its actions, when, by whom."""

    version: str = "?"
    time: float  # required here: staleness is computed from it
    observed_before: ObservedRecord | None = None  # when ``observed`` was taken after actions


# The record as published in etcd (issue 15) carries its writer's tickInterval +
# statusStaleness under this key: a reader without that cluster's spec judges its age by it.
STALE_LIMIT_KEY = "stale_limit_seconds"


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A status file that exists but is not a status record (corrupt, truncated, foreign)."""

    path: Path
    problem: str


def iso_utc(epoch: float) -> str:
    """``epoch`` as ISO 8601 UTC with milliseconds and a ``Z`` (``2026-12-02T13:05:01.250Z``)."""
    stamp = datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def status_path(state_dir: Path, node: str) -> Path:
    return state_dir / f"status-{node}.json"


def read_status(state_dir: Path, node: str) -> tuple[StatusRecord | BadRecord | None, Any]:
    """The node's status record and the raw JSON it came from; ``(None, None)`` when there is
    no record; a ``BadRecord`` (and whatever JSON could be read, or None) when it is unusable."""
    path = status_path(state_dir, node)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return BadRecord(path, f"cannot read it: {exc}"), None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        return BadRecord(path, f"not JSON ({exc})"), None
    if not isinstance(raw, dict):
        return BadRecord(path, f"not a status record (a JSON {type(raw).__name__})"), raw
    try:
        return StatusRecord.model_validate(raw), raw
    except ValidationError as exc:
        return BadRecord(path, f"not a status record: {_first_errors(exc)}"), raw


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    errors = exc.errors()
    said = [
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg'].lower()}"
        for e in errors[:limit]
    ]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(said) + more


def simulated_note(sim: tuple[str, ...]) -> str | None:
    """The header line of every output of a run that simulates a concern (None: all real);
    ``sim``: the simulated concerns (``Adapters.simulated``)."""
    if not sim:
        return None
    return (
        f"SIMULATED: {', '.join(sim)} run on the simulator (spec adapters: sim); "
        "no real storage, address or target is touched"
    )
