"""The scenario vocabulary: the pydantic models of a scenario file, ``load_scenario``, the
replay writer, and the names of the adapter operations a scenario may make fail.

Invariants: a loaded scenario is valid (every step has exactly one action key, every injected
operation exists); problems are ``SpecError`` with file:line:column, like the spec's. Pure data:
nothing here runs a simulation.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from adapters.sim.world import Fencing
from reconciler.core import specload
from reconciler.core.specload import SpecError, SpecProblem

DEFAULT_FENCING: Fencing = "resource-and-stonith"

# Operations whose injected faults make adapters fail (the executor's retry paths) or observe
# garbage (the planner's "unknown" paths).
ACTION_OPS = (
    "drbd-up",
    "drbd-primary",
    "drbd-secondary",
    "drbd-connect",
    "vip-add",
    "vip-remove",
    "vip-announce",
    "target-start",
    "target-stop",
    "target-export",
    "pbd-plug",
    "pbd-replug",
    "witness-claim",
    "witness-release",
)
OBSERVE_OPS = (
    "drbd-observe",
    "vip-observe",
    "target-observe",
    "role-observe",
    "hypervisor-observe",
    "witness-observe",
)


class ScenarioError(Exception):
    """A scenario that does not fit the spec (unknown node...)."""


def scenario_yaml(
    *, fencing: Fencing, writes_per_action: int, steps: Sequence[Mapping[str, Any]]
) -> str:
    """Steps as a scenario file ``reconcile simulate --scenario`` replays."""
    doc = {
        "apiVersion": "tandem/v1",
        "kind": "Scenario",
        "metadata": {"name": "replay", "description": "recorded by the simulator"},
        "world": {"fencing": fencing, "writesPerAction": writes_per_action},
        "steps": list(steps),
    }
    out = io.StringIO()
    y = YAML(typ="safe")
    y.default_flow_style = None
    y.dump(doc, out)
    return out.getvalue()


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


NodeRef = str  # a node name of the spec, or "first" / "second"


class OperatorStep(_Model):
    node: NodeRef
    command: Literal[
        "manual-mode enable", "manual-mode disable", "become-primary", "become-secondary"
    ]
    force: bool = False
    expect: Literal["accepted", "refused"] | None = None


class ResourceFault(_Model):
    """A disk or connection fault restricted to one DRBD resource (``resource`` omitted: all)."""

    node: NodeRef
    resource: str | None = None


class SplitBrainStep(_Model):
    """The guided recovery (``reconcile split-brain RESOURCE --survivor S --node N --yes``)."""

    node: NodeRef
    resource: str
    survivor: NodeRef
    expect: Literal["accepted", "refused"] | None = None


def parse_duration(value: object) -> float:
    """``30s``, ``10m``, ``1h``, ``250ms`` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("a duration, e.g. 30s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 10m or 1h)")
    if not 0 < seconds <= 366 * 86400:
        raise ValueError("a duration between 1 ms and a year")
    return seconds


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class InjectStep(_Model):
    node: NodeRef
    op: str = Field(description="Adapter operation, e.g. drbd-primary, vip-add, drbd-observe.")
    kind: Literal["transient", "terminal", "timeout", "garbage"] = "transient"
    count: int = Field(default=1, ge=-1, description="How many calls fail; -1: every call.")
    resource: str | None = Field(
        default=None, description="Only the calls for this DRBD resource fail (default: any)."
    )

    @model_validator(mode="after")
    def _known_op(self) -> InjectStep:
        if self.op not in ACTION_OPS + OBSERVE_OPS:
            known = ", ".join(ACTION_OPS + OBSERVE_OPS)
            raise ValueError(f"unknown operation {self.op!r}; known: {known}")
        if self.count == 0:
            raise ValueError("count 0 injects nothing; use 1.. or -1 (forever)")
        if self.kind == "garbage" and self.op in ACTION_OPS:
            # An action's fault raises; "garbage" is what an observation reads: on an action
            # it would be silently ignored.
            raise ValueError(
                f"kind garbage applies to an observation ({', '.join(OBSERVE_OPS)}), not to "
                f"the action {self.op}; use transient, terminal or timeout"
            )
        return self


class Expect(_Model):
    """What must hold after the previous steps; every key is optional."""

    primary: NodeRef | Literal["none"] | None = Field(
        default=None, description="The node where every resource is Primary ('none': nowhere)."
    )
    vip: NodeRef | Literal["none"] | None = Field(
        default=None, description="The node holding the VIP(s) alone ('none': no node)."
    )
    serving: NodeRef | Literal["none"] | None = Field(
        default=None,
        description="Where client writes through the VIP land and are acknowledged.",
    )
    replication: Literal["healthy", "degraded", "split-brain"] | None = None
    frozen: NodeRef | Literal["none"] | None = Field(
        default=None, description="The node whose Primary I/O fencing has frozen."
    )
    split_brain: bool | None = Field(
        default=None, description="The simulator has detected (and reported) a split brain."
    )
    last_write: Literal["acked", "not-acked"] | None = None
    blocked: str | None = Field(
        default=None, description="Text that a refusal in the last tick's plan contains."
    )
    reported: str | None = Field(
        default=None, description="Text that a refusal or warning of the last tick contains."
    )
    node: NodeRef | None = Field(
        default=None, description="Whose last tick 'blocked'/'reported' reads (default: any)."
    )
    alive: list[NodeRef] | None = None
    resource: str | None = Field(
        default=None,
        description="The DRBD resource disk/peerDisk/lastWrite read (default: every one).",
    )
    disk: dict[NodeRef, str] | None = Field(
        default=None, description="Each node's own disk state (UpToDate, Outdated, ...)."
    )
    peer_disk: dict[NodeRef, str] | None = Field(
        default=None, description="The peer's disk state as each node's DRBD reports it."
    )
    luns: dict[NodeRef, list[int]] | None = Field(
        default=None, description="The LUN numbers each node's target exports."
    )
    vips: dict[NodeRef, list[str]] | None = Field(
        default=None, description="The addresses configured on each node (any address)."
    )
    alerted: str | None = Field(
        default=None,
        description="Text an alert mailed so far contains (of 'node' when given; the alert "
        "gate's rules apply: quiet ticks, grace and screen times in simulated time).",
    )
    not_alerted: str | None = Field(
        default=None, description="Text no alert mailed so far contains."
    )

    witness: NodeRef | Literal["none"] | None = Field(
        default=None, description="Who holds the witness key now ('none': free)."
    )
    pbd_attached: dict[NodeRef, bool] | None = Field(
        default=None,
        description="Per node: every PBD of its host attached (adapters.hypervisor: sim).",
    )
    sr_usable: dict[NodeRef, bool] | None = Field(
        default=None,
        description="Per node: every PBD of its host attached and its SR usable.",
    )

    @model_validator(mode="after")
    def _checks_something(self) -> Expect:
        checks = [
            k
            for k in type(self).model_fields
            if k not in ("node", "resource") and getattr(self, k) is not None
        ]
        if not checks:
            raise ValueError("expect checks nothing: name at least one expectation")
        return self


class Step(_Model):
    """One step of a scenario: exactly one of the keys below (plus an optional note)."""

    note: str | None = None
    tick: NodeRef | list[NodeRef] | None = None
    ticks: int | None = Field(default=None, ge=1, le=1000, description="Rounds of both agents.")
    converge: int | None = Field(
        default=None, ge=1, le=100, description="Rounds at most until converged (fails if not)."
    )
    plan: NodeRef | None = None
    apply_next: NodeRef | None = None
    agent_crash: NodeRef | None = None
    write: int | None = Field(default=None, ge=1, le=10000)
    crash: NodeRef | None = None
    boot: NodeRef | None = None
    replication: Literal["up", "down"] | bool | None = None
    management: Literal["up", "down"] | bool | None = None
    isolate: NodeRef | None = None
    rejoin: NodeRef | None = None
    kill_target: NodeRef | None = None
    remove_vip: NodeRef | None = None
    add_vip: NodeRef | None = None
    stranger: bool | None = None
    disconnect: NodeRef | ResourceFault | None = None
    detach_disk: NodeRef | ResourceFault | None = None
    fail_disk: NodeRef | ResourceFault | None = None
    replace_disk: NodeRef | ResourceFault | None = None
    unplug_pbd: NodeRef | None = None
    break_sr: NodeRef | None = None
    xapi_down: NodeRef | None = None
    xapi_up: NodeRef | None = None
    inject: InjectStep | None = None
    wait: float | None = Field(
        default=None, description="Simulated time passes: 30s, 10m, 1h (alert grace, screens)."
    )
    advance: float | None = Field(
        default=None,
        description="The witness's clock moves on by up to this much, as far as every running "
        "agent keeps its tick rhythm (never past tickInterval + 2 x retryTimeout since its "
        "last observation; a paused agent's watchdog resets its node).",
    )
    elapse: float | None = Field(
        default=None,
        description="This much time passes with both agents ticking every tickInterval "
        "(the witness's failover plays out).",
    )
    etcd_member_down: int | None = Field(default=None, ge=0, le=2, description="etcd member.")
    etcd_member_up: int | None = Field(default=None, ge=0, le=2, description="etcd member.")
    etcd_down: bool | None = Field(default=None, description="Every etcd member down.")
    etcd_up: bool | None = Field(default=None, description="Every etcd member up again.")
    etcd_cut: NodeRef | None = Field(default=None, description="The node cannot reach etcd.")
    etcd_rejoin: NodeRef | None = None
    pause: NodeRef | None = Field(
        default=None, description="The node's agent pauses (GC pause, SIGSTOP)."
    )
    resume: NodeRef | None = None
    split_brain: SplitBrainStep | None = None
    clear_faults: bool | None = None
    operator: OperatorStep | None = None
    pool_master: NodeRef | Literal["none"] | None = None
    pool_views: dict[NodeRef, NodeRef | Literal["none"]] | None = None
    spec: dict[str, Any] | None = None
    heal: bool | None = None
    expect: Expect | None = None

    @field_validator("wait", "advance", "elapse", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        chosen = [
            k for k in type(self).model_fields if k != "note" and getattr(self, k) is not None
        ]
        if len(chosen) != 1:
            keys = ", ".join(to_camel(k) for k in chosen) or "none"
            raise ValueError(f"a step needs exactly one action key (got: {keys})")
        return self

    @property
    def kind(self) -> str:
        return next(
            k for k in type(self).model_fields if k != "note" and getattr(self, k) is not None
        )


class ScenarioWorld(_Model):
    fencing: Fencing = DEFAULT_FENCING
    pool_master: NodeRef | None = None
    drbd_up: bool = True
    resync_steps: int = Field(default=2, ge=1, le=100)
    writes_per_action: int = Field(default=1, ge=0, le=10)


class ScenarioMeta(_Model):
    name: str
    description: str = ""


class Scenario(_Model):
    api_version: Literal["tandem/v1"]
    kind: Literal["Scenario"]
    metadata: ScenarioMeta
    world: ScenarioWorld = Field(default_factory=ScenarioWorld)
    steps: list[Step] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class LoadedScenario:
    scenario: Scenario
    lines: tuple[int, ...]  # the line of each step in the file


def load_scenario(text: str, *, filename: str = "<scenario>") -> LoadedScenario:
    """Parse and validate a scenario; ``SpecError`` with file:line:column on any problem."""
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [SpecProblem(line, col, "", f"not valid YAML: {problem}")], filename
        ) from None
    if not isinstance(data, CommentedMap):
        raise SpecError(
            [SpecProblem(1, 1, "", "expected a mapping (apiVersion, kind, metadata, steps)")],
            filename,
        )
    try:
        scenario = Scenario.model_validate(specload._plain(data, {}))
    except ValidationError as exc:
        raise SpecError(specload._problems(exc, data), filename) from None
    steps = data.get("steps")
    lines: list[int] = []
    for i in range(len(scenario.steps)):
        if isinstance(steps, CommentedSeq):
            lines.append(steps.lc.item(i)[0] + 1)
        else:
            lines.append(0)
    return LoadedScenario(scenario, tuple(lines))
