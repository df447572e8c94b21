"""The shipped scenarios with operator steps pass when the simulator's operator commands go
through ``reconciler.operations`` (what the integrator switches ``Simulation._operator`` to).

Transitional: once ``Simulation._operator`` calls ``reconciler.operations`` itself, the
scenario tests (tests/test_simulate_cli.py) prove the same and this file can go. It patches
the simulator's own method, not a command layer: the world and its adapters are the real
simulated ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import operations
from reconciler.core.specload import load_spec
from reconciler.simulate import Simulation, load_scenario, run_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = [
    p for p in sorted((ROOT / "specs" / "scenarios").glob("*.yaml")) if "operator:" in p.read_text()
]
SPECS = [ROOT / "specs" / "demo.yaml", ROOT / "specs" / "xenserver-pool.yaml"]


def test_there_are_operator_scenarios() -> None:
    assert {p.stem for p in SCENARIOS} >= {"rolling-maintenance", "split-brain"}


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_passes_through_operations(
    scenario: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, bool]] = []

    def via_operations(self: Simulation, node: str, command: str, force: bool) -> tuple[bool, str]:
        out = operations.operator_command(
            self.spec, node, self.adapters[node], command, force=force
        )
        calls.append((node, command, out.accepted))
        return out.accepted, out.message

    monkeypatch.setattr(Simulation, "_operator", via_operations)
    spec = load_spec(spec_path.read_text(), filename=str(spec_path))
    result = run_scenario(spec, load_scenario(scenario.read_text(), filename=str(scenario)))
    assert result.ok, result.failed
    assert calls, "the scenario's operator steps did not go through operations"
    if scenario.stem == "split-brain":  # it has a refused and an accepted become-primary
        assert {ok for _, _, ok in calls} == {False, True}
