"""The scenario engine of ``reconcile simulate`` and of the property-based tests.

One engine for both, so what CI proves at depth is what a user replays against their own spec
(docs/simulation.md). One job a module:

- ``engine``: ``Simulation``, the world, the two agents (each tick is ``reconciler.agent.tick``),
  faults, operator commands, and the invariant checks after every executed action;
- ``faults``: what each fault of the environment does to the simulated world;
- ``model``: the scenario file (pydantic models, ``load_scenario``, the replay writer);
- ``runner``: ``run_scenario``, a scenario's steps and expectations, typed step outcomes;
- ``random_runs``: ``run_random`` and the random step, fault and spec-edit choices;
- ``render``: the world line and a run's result as text or JSON.

The click command is CLI code and lives in ``reconciler.cli_simulate``; nothing here imports it.
"""

from reconciler.simulation.engine import (
    SIM_RETRY,
    Finding,
    InvariantViolation,
    Record,
    Simulation,
    new_simulation,
)
from reconciler.simulation.model import (
    ACTION_OPS,
    DEFAULT_FENCING,
    OBSERVE_OPS,
    LoadedScenario,
    Scenario,
    ScenarioError,
    load_scenario,
)
from reconciler.simulation.random_runs import (
    random_fault,
    random_spec_edit,
    random_step,
    run_random,
)
from reconciler.simulation.render import render_text, result_json, world_line
from reconciler.simulation.runner import (
    RunResult,
    StepOutcome,
    StepResult,
    StepStatus,
    check_scenario,
    run_scenario,
)

__all__ = [
    "ACTION_OPS",
    "DEFAULT_FENCING",
    "OBSERVE_OPS",
    "SIM_RETRY",
    "Finding",
    "InvariantViolation",
    "LoadedScenario",
    "Record",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "StepOutcome",
    "StepResult",
    "StepStatus",
    "check_scenario",
    "load_scenario",
    "new_simulation",
    "random_fault",
    "random_spec_edit",
    "random_step",
    "render_text",
    "result_json",
    "run_random",
    "run_scenario",
    "world_line",
]
