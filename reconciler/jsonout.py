"""The ``--json`` results of the commands that print one (``validate``, ``get``,
``manual-mode``, ``become-primary``, ``become-secondary``): one JSON object each.

Invariants: every object names its ``command``; an operator command's object says whether it
was ``accepted``, the ``refusal`` kind when refused (``reconciler.core.operator.Refusal``
values, None when accepted) and the ``message`` the text mode prints; the exit code is the
text mode's (the CLI decides it, not this module). Builders only: nothing here prints.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from reconciler.agent import TickReport
from reconciler.core.observed import OperatorState
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import SpecError
from reconciler.operations import Outcome


def spec_summary(spec: StorageCluster) -> dict[str, Any]:
    return {
        "cluster": spec.metadata.name,
        "nodes": list(spec.node_names),
        "resources": len(spec.spec.resources),
        "vips": len(spec.spec.vips),
        "luns": len(spec.spec.target.luns),
        "role_source": spec.spec.role_source.type.value,
    }


def validate_ok(name: str, spec: StorageCluster) -> dict[str, Any]:
    return {"command": "validate", "file": name, "valid": True, **spec_summary(spec)}


def validate_failed(name: str, error: SpecError) -> dict[str, Any]:
    return {
        "command": "validate",
        "file": name,
        "valid": False,
        "problems": [asdict(p) for p in error.problems],
    }


def validate_unreadable(name: str, problem: str) -> dict[str, Any]:
    return {"command": "validate", "file": name, "valid": False, "error": problem}


def settings(name: str, spec: StorageCluster) -> dict[str, Any]:
    """``get --json``: the spec with every default filled in, under its YAML spelling."""
    return {"command": "get", "file": name, "settings": spec.model_dump(mode="json", by_alias=True)}


def operator_state(state: OperatorState) -> dict[str, Any]:
    return {
        "manual_mode": state.manual_mode,
        "chosen_role": state.chosen_role.value if state.chosen_role else None,
        "force": state.force,
    }


def outcome(
    command: str,
    node: str,
    result: Outcome,
    *,
    tick: TickReport | None = None,
    deferred_to: str | None = None,
    simulated: bool = False,
) -> dict[str, Any]:
    """An operator command's result. ``tick``: the follow-up tick it ran (become-*);
    ``deferred_to``: the pid of the running agent that applies the choice instead."""
    refusal = result.refusal
    out: dict[str, Any] = {
        "command": command,
        "node": node,
        "accepted": result.accepted,
        "refusal": refusal.value if refusal is not None else None,
        "usage_error": bool(refusal is not None and refusal.is_usage),
        "message": result.message,
        "simulated": simulated,
    }
    if result.verdict.new_state is not None and result.accepted:
        out["operator_state"] = operator_state(result.verdict.new_state)
    if deferred_to is not None:
        out["deferred_to_agent"] = deferred_to
    if tick is not None:
        out["tick"] = tick.to_json()
    return out
