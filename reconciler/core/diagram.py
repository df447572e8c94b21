"""Export the planner's state machines as Mermaid diagrams (for docs/architecture.md).

The diagrams are drawn by ``transitions``' own Mermaid backend from the very transition tables
the planner runs, so the picture cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from transitions.extensions import GraphMachine

from reconciler.core.planner import (
    RESOURCE_STATES,
    RESOURCE_TRANSITIONS,
    SERVING_STATES,
    SERVING_TRANSITIONS,
)


class _Model:
    pass


def _strip_callbacks(transitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Conditions stay (they are the safety guards and belong in the picture); the recording
    # callbacks are implementation detail.
    return [{k: v for k, v in t.items() if k != "after"} for t in transitions]


def mermaid(which: str) -> str:
    if which == "resource":
        states, transitions, initial, title = (
            RESOURCE_STATES,
            RESOURCE_TRANSITIONS,
            "unknown",
            "DRBD resource (per resource)",
        )
    elif which == "serving":
        states, transitions, initial, title = (
            SERVING_STATES,
            SERVING_TRANSITIONS,
            "idle",
            "Serving layer (VIP + target, per node)",
        )
    else:
        raise ValueError(which)
    model = _Model()
    machine = GraphMachine(
        model=model,
        states=states,
        transitions=_strip_callbacks(transitions),
        initial=initial,
        auto_transitions=False,
        graph_engine="mermaid",
        title=title,
        show_conditions=True,
    )
    text = str(machine.get_graph().draw(None)).strip()
    # transitions writes the title as a bare front-matter line; Mermaid wants `title: ...`.
    return text.replace(f"---\n{title}\n---", f"---\ntitle: {title}\n---", 1)
