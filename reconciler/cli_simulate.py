"""``reconcile simulate``: the click command over the simulation package (CLI code only: it
parses options, reads files, prints, and maps results to exit codes; the engine is
``reconciler.simulation``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from adapters.sim.world import Fencing
from reconciler.core.specload import SpecError
from reconciler.simulation import (
    DEFAULT_FENCING,
    LoadedScenario,
    ScenarioError,
    check_scenario,
    load_scenario,
    render_text,
    result_json,
    run_random,
    run_scenario,
)
from reconciler.specfile import read_spec


@click.command(
    "simulate",
    epilog="Exit codes: 0 every expectation and invariant held; 1 one failed (the step is "
    "named); 2 invalid spec, scenario or usage.",
)
@click.option(
    "-f",
    "--file",
    "spec_path",
    envvar="TANDEM_SPEC",
    default=None,
    help="The spec to simulate (default: the embedded demo). Its adapters section is "
    "ignored: everything is simulated.",
)
@click.option("--scenario", type=click.Path(dir_okay=False), help="A scenario YAML file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random run seed.")
@click.option(
    "--steps", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
    help="Random steps before the faults stop and the agents must converge.",
)  # fmt: skip
@click.option(
    "--fencing",
    type=click.Choice(["resource-and-stonith", "resource-only", "none"]),
    default=None,
    help="DRBD fencing of the simulated cluster (default: resource-and-stonith; a "
    "scenario may set its own).",
)
@click.option("--overrides", is_flag=True, help="Random runs may use become-primary --force.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def simulate_command(
    spec_path: str | None,
    scenario: str | None,
    seed: int,
    steps: int,
    fencing: str | None,
    overrides: bool,
    as_json: bool,
) -> None:
    """Run a failover simulation of SPEC's cluster: both agents (exactly the code of
    `reconcile --once`) over a simulated two-node cluster, with faults between and during
    their ticks, and every safety invariant checked after every executed action.

    \b
    --scenario FILE   a YAML story: ticks, faults, operator commands, expectations
    --seed N --steps N  reproducible random faults, then the agents must converge
    See docs/simulation.md.
    """
    spec, spec_name = read_spec(spec_path)
    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    if scenario is not None:
        try:
            text = Path(scenario).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.print(f"error: cannot read scenario {scenario}: {exc}", markup=False)
            sys.exit(2)
        try:
            loaded = load_scenario(text, filename=scenario)
            if fencing is not None:
                world = loaded.scenario.world.model_copy(update={"fencing": fencing})
                loaded = LoadedScenario(
                    loaded.scenario.model_copy(update={"world": world}), loaded.lines
                )
            check_scenario(spec, loaded, filename=scenario)
            result = run_scenario(spec, loaded)
        except SpecError as exc:
            for line in exc.render().splitlines():
                errors.print(line, markup=False)
            sys.exit(2)
        except ScenarioError as exc:
            errors.print(f"error: {scenario}: {exc}", markup=False)
            sys.exit(2)
        sc = loaded.scenario
        if as_json:
            doc = result_json(result, scenario=sc.metadata.name, file=scenario, spec=spec_name)
            click.echo(json.dumps(doc, sort_keys=True))
        else:
            title = (
                f"scenario {sc.metadata.name} ({scenario}) on {spec_name}, fencing "
                f"{sc.world.fencing}"
            )
            if sc.metadata.description:
                title += f"\n{sc.metadata.description.strip()}"
            render_text(console, result, title=title)
        sys.exit(0 if result.ok else 1)
    chosen: Fencing = fencing or DEFAULT_FENCING  # type: ignore[assignment]
    result = run_random(spec, seed=seed, steps=steps, fencing=chosen, overrides=overrides)
    if as_json:
        doc = result_json(result, seed=seed, steps=steps, spec=spec_name)
        click.echo(json.dumps(doc, sort_keys=True))
    else:
        render_text(
            console,
            result,
            title=f"random run: seed {seed}, {steps} steps on {spec_name}, fencing {chosen}"
            + (", operator overrides allowed" if overrides else ""),
        )
    sys.exit(0 if result.ok else 1)
