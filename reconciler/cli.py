"""The ``reconcile`` command line.

Contract (other tools and the docs build on it):
  reconcile --once  -f SPEC [--node NAME] [--dry-run] [--json] [--state-dir DIR]
  reconcile --watch -f SPEC [--node NAME] [--interval SECONDS] [--metrics-address HOST:PORT]
  reconcile validate -f SPEC
Exit codes: 0 converged / every action applied; 1 an action failed; 2 invalid spec or usage
(also: an unusable state directory, a command the real adapters need is missing); 3 blocked by a
safety rule with nothing else to do; 4 converged but degraded (replication degraded, split brain).
Without -f (and without $TANDEM_SPEC) the embedded demo spec is used: a simulated two-node
cluster that runs anywhere without root.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from adapters.redact import redacting_streams
from reconciler import __version__, loop
from reconciler.agent import (
    EXIT_OK,
    EXIT_USAGE,
    StatusPublishing,
    TickReport,
    write_status,
)

# emoji=False: a spec value like ':smile:' must print verbatim, not as a smiley.
from reconciler.cli_common import (
    _JSON_OPT,
    _NODE_OPT,
    _SPEC_OPT,
    _STATE_OPT,
    _adapters,
    _fail,
    _run_once,
    agent_lock,
    pick_node,
    print_report,
    try_agent_lock,
    usable_state_dir,
)
from reconciler.cli_operator import (
    backup,
    become_primary,
    become_secondary,
    manual_mode,
    restore,
    split_brain,
)
from reconciler.cli_simulate import simulate_command
from reconciler.cli_status import status
from reconciler.core.errors import TerminalError
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import SpecError
from reconciler.specfile import (
    DEMO,
    SpecFileError,
    SpecWatch,
    load_spec_file,
    read_spec,
)

__all__ = ["main", "pick_node", "try_agent_lock", "usable_state_dir"]


def _watch(
    spec: StorageCluster,
    node: str,
    state_dir: Path,
    *,
    interval: float,
    as_json: bool,
    metrics_address: Any = None,
    spec_path: str | None = None,
) -> int:
    stop = loop.Stop()  # set() also ends the wait between ticks at once
    endpoint = _endpoint(spec, node, state_dir, metrics_address)

    def _stop(signum: int, _frame: object) -> None:
        # Finish the current step (never abandon a half-applied action), then exit.
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    adapters = _adapters(spec, node, state_dir)
    from adapters.alerts import syslog_handler
    from reconciler import agentlog, events, systemd

    syslog = syslog_handler() if spec.spec.alerts.syslog else None
    tick_log, alert_log = agentlog.setup(
        state_dir, node, syslog=syslog, tick_lines_to_stdout=not as_json
    )
    sd = systemd.TickNotifier(systemd.Notifier.from_env())
    if (usec := sd.notifier.watchdog_usec) is not None and interval * 1e6 >= usec:
        alert_log.warning(
            f"WatchdogSec ({usec / 1e6:g}s) is not longer than the tick interval "
            f"({interval:g}s): systemd will kill healthy ticks; print the unit again "
            "(reconcile systemd-unit) for these timings",
            extra={"node": node},
        )

    def report_tick(report: TickReport) -> None:
        if as_json:
            print_report(report, as_json=True)
            sys.stdout.flush()
        write_status(state_dir, report)

    # The spec file is reloaded under --watch (not the embedded demo: it never changes).
    spec_watch = SpecWatch(spec_path, spec) if spec_path is not None else None

    def on_spec(new: StorageCluster) -> None:
        alert_log.warning(f"{spec_path}: spec reloaded", extra={"node": node})

    # The per-tick observers, in order, in one list. The systemd notifier comes last:
    # WATCHDOG=1 means the whole tick, records and metrics included, ran.
    # Many pairs, one place: each tick's record also under the cluster's prefix in etcd
    # (best effort, a worker thread: never delays nor fails the tick).
    publisher = _status_publisher(spec, node)
    observers: list[loop.TickObserver] = [
        report_tick,
        *([StatusPublishing(spec, publisher)] if publisher is not None else []),
        agentlog.TickLogger(tick_log),
        events.TickEvents(events.EventLog(events.events_path(state_dir, node))),
        _alerting(spec, alert_log, node, spec_watch=spec_watch),
        endpoint,
        sd,
    ]
    pace = loop.Pace.from_spec(spec, interval)
    try:
        loop.run(
            spec,
            adapters,
            stop=stop,
            on_report=loop.each(observers),
            pace=pace,
            spec_watch=spec_watch,
            rebuild=lambda new: _adapters(new, node, state_dir),
            on_spec=on_spec,
        )
    finally:
        endpoint.close()
        if publisher is not None:
            publisher.close()
        sd.stopping()
    return EXIT_OK


def _status_publisher(spec: StorageCluster, node: str) -> Any:
    from adapters.factory import status_publisher

    try:
        return status_publisher(spec, node)
    except TerminalError as exc:
        _fail(str(exc))


def _endpoint(spec: StorageCluster, node: str, state_dir: Path, address: Any) -> Any:
    """``--metrics-address``: metrics and ``/status`` over HTTP (reconciler.httpserve)."""
    from reconciler.httpserve import Endpoint

    if address is None:
        return Endpoint.off()
    try:
        return Endpoint.open(spec, node, state_dir, address)
    except OSError as exc:
        _fail(f"--metrics-address {address}: cannot listen there: {exc.strerror or exc}")


def _alerting(
    spec: StorageCluster, log: Any, node: str, *, spec_watch: SpecWatch | None = None
) -> Any:
    """Log every alert (``log``: stderr, and syslog when enabled); mail the ones the gate
    admits, and post them as pool messages when XAPI is used. With ``spec_watch``
    (``--watch`` on a spec file), a refused spec edit raises ``NODE:spec-invalid`` at every
    tick until a valid edit comes (the gate screens repeats). The alert settings stay the ones
    the agent started with."""
    import time

    from adapters.alerts import MailAlerter
    from adapters.base import Alert
    from reconciler.alerts import AlertGate, alerts_for

    gate = AlertGate(spec.spec.alerts, clock=time.monotonic)
    mailer = MailAlerter(spec.spec.alerts.mail, timeout=spec.spec.timings.command_timeout)
    senders: list[Any] = [mailer]
    chosen = spec.spec.adapters
    if spec.spec.xapi.messages and "xapi" in (chosen.role_source, chosen.hypervisor):
        from adapters.factory import xapi_client
        from adapters.xapi.messages import PoolMessageAlerter

        senders.append(PoolMessageAlerter(xapi_client(spec), node=node))

    def notify(report: TickReport) -> None:
        raised = alerts_for(report)
        problem = spec_watch.problem if spec_watch is not None else None
        if problem:
            raised.append(
                Alert(
                    f"{report.plan.node}:spec-invalid",
                    "error",
                    f"{report.plan.node}: spec edit refused, still serving the last good "
                    f"spec: {problem}",
                )
            )
        for alert in raised:
            log.warning(alert.message)
        admitted = gate.admit(raised, manual_mode=report.observed.operator.manual_mode)
        for sender in senders:
            failure = sender.send(admitted)
            if failure:
                log.error(failure)

    return notify


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 converged or all actions applied; 1 an action failed; "
    "2 invalid spec or usage (also an unusable state directory, or a command the real adapters "
    "need is missing: the message names the Debian package); 3 blocked by a safety rule with "
    "nothing else to do; 4 converged but degraded (replication degraded, split brain: the "
    "reasons are under 'degraded' in --json).",
)
@click.option("--once", is_flag=True, help="Run one tick (observe, plan, apply) and exit.")
@click.option("--watch", is_flag=True, help="Tick every --interval seconds until SIGINT/SIGTERM.")
@_SPEC_OPT
@_NODE_OPT
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tick.")
@_STATE_OPT
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01, max=3600),
    default=None,
    help="Seconds between ticks in --watch (fractions allowed; default: spec timings).",
)
@click.option(
    "--metrics-address",
    metavar="HOST:PORT",
    callback=lambda _c, _p, v: _parse_address(v),
    default=None,
    help="With --watch: serve Prometheus /metrics and the status record /status over HTTP "
    "there (a management address; off by default).",
)
@click.version_option(__version__, prog_name="reconcile")
@click.pass_context
def main(
    ctx: click.Context,
    once: bool,
    watch: bool,
    spec_path: str | None,
    node: str | None,
    dry_run: bool,
    as_json: bool,
    state_dir: str | None,
    interval: float | None,
    metrics_address: Any,
) -> None:
    """tandem: keep a two-node DRBD + iSCSI + floating-IP cluster converged on a YAML spec.

    Each tick observes this node (DRBD, VIP, iSCSI target, role source), plans the minimal
    ordered actions (promote, demote, add/remove VIP, start/stop target, export LUNs) under
    safety rules, and applies them with retries.

    \b
    Quick tour (the embedded demo is a simulated cluster, no root needed):
      reconcile validate -f specs/demo.yaml
      reconcile --once --node node1 --dry-run
      reconcile --once --node node1
      reconcile --once --node node2
      reconcile --watch --node node1 --interval 0.5
    """
    # Every line this command prints, on stdout and stderr, has the secrets the spec's files
    # hold (CHAP) masked: adapters.redact is the one place that knows them.
    ctx.with_resource(redacting_streams())
    if ctx.invoked_subcommand is not None:
        if once or watch:
            raise click.UsageError("--once/--watch cannot be combined with a subcommand")
        return
    if dry_run and not once:
        raise click.UsageError(
            "--dry-run goes with --once: `reconcile --once --dry-run` prints the plan of one "
            "tick, each action with its reason, and changes nothing"
        )
    if once == watch:
        if not once:
            click.echo(ctx.get_help())
            ctx.exit(EXIT_USAGE)
        raise click.UsageError("choose one of --once and --watch")
    if dry_run and watch:
        raise click.UsageError("--dry-run goes with --once")
    if metrics_address is not None and not watch:
        raise click.UsageError("--metrics-address goes with --watch")
    if interval is not None and once:
        raise click.UsageError(
            "--interval is for --watch (the seconds between ticks); --once runs one tick"
        )
    sdir = usable_state_dir(state_dir)
    spec, _ = read_spec(spec_path)
    the_node = pick_node(spec, node)
    with agent_lock(sdir, the_node):
        if once:
            ctx.exit(_run_once(spec, the_node, sdir, dry_run=dry_run, as_json=as_json))
        every = interval if interval is not None else spec.spec.timings.tick_interval
        ctx.exit(
            _watch(
                spec,
                the_node,
                sdir,
                interval=every,
                as_json=as_json,
                metrics_address=metrics_address,
                spec_path=spec_path,
            )
        )


def _parse_address(value: str | None) -> Any:
    from reconciler.httpserve import parse_address

    try:
        return None if value is None else parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics-address") from None


@main.command()
@_SPEC_OPT
@_JSON_OPT
def validate(spec_path: str | None, as_json: bool) -> None:
    """Check a spec: exit 0, or exit 2 with file:line:column, field path and what was expected."""
    if as_json:
        sys.exit(_validate_json(spec_path))
    spec, name = read_spec(spec_path)
    a, b = spec.node_names
    click.echo(
        f"{name}: valid ({spec.metadata.name}: nodes {a}, {b}; "
        f"{len(spec.spec.resources)} resource(s), {len(spec.spec.vips)} VIP(s), "
        f"{len(spec.spec.target.luns)} LUN(s); role source {spec.spec.role_source.type.value})"
    )


def _validate_json(spec_path: str | None) -> int:
    from reconciler import jsonout

    name = spec_path or DEMO
    try:
        spec, name = load_spec_file(spec_path)
    except SpecFileError as exc:
        click.echo(json.dumps(jsonout.validate_unreadable(name, str(exc)), sort_keys=True))
        return EXIT_USAGE
    except SpecError as exc:
        click.echo(json.dumps(jsonout.validate_failed(name, exc), sort_keys=True))
        return EXIT_USAGE
    click.echo(json.dumps(jsonout.validate_ok(name, spec), sort_keys=True))
    return EXIT_OK


@main.command("get")
@_SPEC_OPT
@_JSON_OPT
def get_settings(spec_path: str | None, as_json: bool) -> None:
    """Print every effective setting: the spec with all defaults filled in (YAML)."""
    from ruamel.yaml import YAML

    spec, name = read_spec(spec_path)
    if as_json:
        from reconciler.jsonout import settings

        click.echo(json.dumps(settings(name, spec), sort_keys=True))
        return
    yaml = YAML()
    yaml.default_flow_style = False
    click.echo(f"# effective settings of {name}")
    yaml.dump(spec.model_dump(mode="json", by_alias=True), sys.stdout)


# --- operator commands -----------------------------------------------------------------------


main.add_command(simulate_command)
for _operator_command in (
    manual_mode,
    become_primary,
    become_secondary,
    split_brain,
    backup,
    restore,
    status,
):
    main.add_command(_operator_command)

# Service commands (systemd-unit, log, events) live in reconciler/servicecli.py.
from reconciler.servicecli import COMMANDS as _SERVICE_COMMANDS  # noqa: E402

for _command in _SERVICE_COMMANDS:
    main.add_command(_command)


def run() -> None:  # pragma: no cover - console entry point wrapper
    main()


if __name__ == "__main__":  # pragma: no cover - `python -m reconciler.cli` (as another user)
    run()
