"""The operator's commands: manual mode, become-primary/-secondary, the guided split-brain
recovery, and the pool-database backup/restore. The rules are in reconciler.operations and
reconciler.core.operator; these commands print and exit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from reconciler import operations
from reconciler.agent import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_OK,
)

# emoji=False: a spec value like ':smile:' must print verbatim, not as a smiley.
from reconciler.cli_common import (
    _JSON_OPT,
    _NODE_OPT,
    _SPEC_OPT,
    _STATE_OPT,
    _echo_outcome,
    _fail,
    _operator_context,
    _operator_tick,
    _refused,
    print_report,
    try_agent_lock,
)
from reconciler.core.errors import AdapterError
from reconciler.core.operator import describe_state as describe_operator_state
from reconciler.specfile import (
    read_spec,
)


@click.command("manual-mode")
@click.argument("state", type=click.Choice(["enable", "disable", "show"]))
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@_JSON_OPT
def manual_mode(
    state: str, spec_path: str | None, node: str | None, state_dir: str | None, as_json: bool
) -> None:
    """Enable/disable manual mode on this node (maintenance with zero VM downtime).

    In manual mode automatic role selection stops: the agent keeps replicating and keeps the
    current roles until `become-primary`/`become-secondary`. Enable it on both nodes. Disabling
    is refused unless this node is back in its native role (the role source agrees), so leaving
    manual mode never moves storage.
    """
    spec, the_node, _sdir, adapters = _operator_context(spec_path, node, state_dir, as_json=as_json)
    command = f"manual-mode {state}"
    if state == "show":
        current = adapters.operator.load()
        if as_json:
            from reconciler.jsonout import operator_state

            shown = {"command": command, "node": the_node, **operator_state(current)}
            click.echo(json.dumps(shown, sort_keys=True))
            return
        click.echo(describe_operator_state(the_node, current))
        _show_pool_manual_mode(adapters.operator)
        return
    outcome = operations.manual_mode(spec, the_node, adapters, enable=state == "enable")
    if not outcome.accepted:
        _refused(outcome, (command, the_node) if as_json else None, spec=spec)
    if as_json:
        _echo_outcome(command, the_node, outcome, spec=spec)
        return
    click.echo(outcome.message)


def _show_pool_manual_mode(store: object) -> None:
    """With XAPI: every host's entry in the pool database, and a disagreement warning."""
    from adapters.xapi.pooldb import PoolOperatorStore

    if not isinstance(store, PoolOperatorStore):
        return
    view = store.pool_view()
    if view is None:
        click.echo("pool database: unreachable")
    else:
        shown = ", ".join(f"{host}={word}" for host, word in sorted(view.items()))
        click.echo(f"pool database MANUAL_MODE: {shown or 'none'}")
    if store.warning:
        click.echo(f"warning: {store.warning}")


@click.command("become-primary")
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@click.option(
    "--force",
    is_flag=True,
    help="Also promote while DRBD is disconnected and no policy allows it (may cause split "
    "brain if the peer is Primary: the agent then detects and reports it).",
)
@_JSON_OPT
def become_primary(
    spec_path: str | None, node: str | None, state_dir: str | None, force: bool, as_json: bool
) -> None:
    """Make this node storage primary (manual mode only). Refused while the peer is Primary or
    the VIP answers elsewhere: dual-primary is never allowed."""
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir, as_json=as_json)
    outcome = operations.become_primary(spec, the_node, adapters, force=force)
    said = ("become-primary", the_node, outcome) if as_json else None
    if not outcome.accepted:
        _refused(outcome, (said[0], said[1]) if said else None, spec=spec)
    sys.exit(_operator_tick(spec, the_node, sdir, adapters, said=said))


@click.command("become-secondary")
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@_JSON_OPT
def become_secondary(
    spec_path: str | None, node: str | None, state_dir: str | None, as_json: bool
) -> None:
    """Make this node storage secondary (manual mode only; always allowed)."""
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir, as_json=as_json)
    outcome = operations.become_secondary(spec, the_node, adapters)
    said = ("become-secondary", the_node, outcome) if as_json else None
    if not outcome.accepted:
        _refused(outcome, (said[0], said[1]) if said else None, spec=spec)
    code = _operator_tick(spec, the_node, sdir, adapters, said=said)
    sys.exit(code if code != EXIT_BLOCKED else EXIT_OK)


@click.command("split-brain")
@click.argument("resource")
@click.option("--survivor", required=True, help="The node whose data is kept.")
@click.option("--yes", is_flag=True, help="Confirm: the other node's divergent writes are lost.")
@click.option(
    "--dry-run", is_flag=True, help="Print the recovery plan; change nothing (needs no --yes)."
)
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
def split_brain(
    resource: str,
    survivor: str,
    yes: bool,
    dry_run: bool,
    spec_path: str | None,
    node: str | None,
    state_dir: str | None,
) -> None:
    """Guided split-brain recovery for RESOURCE: run it on both nodes, victim first.

    \b
    On the victim (the node that is not --survivor): the node is put in manual mode as
    secondary, then the target stops, the VIP goes, DRBD is demoted and reconnects discarding
    its own divergent data (it then resyncs from the survivor). On the survivor: DRBD
    reconnects. The steps are a plan run with retries, like a tick's; --dry-run prints it.
    Nothing happens without --yes, and only when the agent really sees a split brain on
    RESOURCE.
    """
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir, dry_run=dry_run)

    def recover(holder: str | None) -> operations.Outcome:
        return operations.split_brain_recovery(
            spec,
            the_node,
            adapters,
            resource=resource,
            survivor=survivor,
            confirmed=yes,
            dry_run=dry_run,
            agent_holder=holder,
        )

    if dry_run or not yes:
        # Changes nothing (a dry run, or a refusal for want of --yes): no lock needed.
        outcome = recover(None)
    else:
        with try_agent_lock(sdir, the_node) as holder:
            # Held while the plan runs: an agent starting now waits instead of racing it.
            outcome = recover(holder)
    if not outcome.accepted:
        _refused(outcome)
    if outcome.report is not None:
        print_report(outcome.report, as_json=False, header=False)
    if outcome.failure is not None:
        _fail(outcome.failure, EXIT_FAILED)
    click.echo(outcome.message)


@click.command("backup")
@_SPEC_OPT
@click.option(
    "--include",
    "includes",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Another file tandem needs on this host (repeatable).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Also write the backup to this JSON file.",
)
def backup(spec_path: str | None, includes: tuple[str, ...], output: str | None) -> None:
    """Keep the spec (and --include files) in the pool database, base64-encoded in pool
    other-config keys: dom0 upgrades and reinstalls wipe the host's files, the pool keeps
    them. Uses the spec's 'xapi' section to reach XAPI."""
    from adapters.factory import xapi_client
    from adapters.xapi import XapiError
    from adapters.xapi import backup as store
    from adapters.xapi.pooldb import PoolDatabase

    if spec_path is None:
        _fail("backup needs the spec file (-f/--file or TANDEM_SPEC)")
    spec, _ = read_spec(spec_path)
    try:
        files = store.read_files([spec_path, *includes])
    except OSError as exc:
        _fail(f"cannot read {exc.filename}: {exc.strerror or exc}")
    try:
        db = PoolDatabase(xapi_client(spec))
        store.save_to_pool(db, files)
    except (XapiError, AdapterError) as exc:
        _fail(f"backup not stored in the pool database: {exc}", EXIT_BLOCKED)
    if output:
        Path(output).write_text(store.to_json(files))
    for f in files:
        click.echo(f"backed up {f.path} ({len(f.data)} bytes)")


@click.command("restore")
@click.option("--url", help="XAPI URL (default: the local socket of this pool host).")
@click.option(
    "--credentials-file",
    type=click.Path(dir_okay=False),
    help="Username and password on two lines (mode 0600); default: root on the local socket.",
)
@click.option("--timeout", type=float, default=13.0, show_default=True, help="Per XAPI call.")
@click.option(
    "--input",
    "input_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Restore from this JSON file (written by backup --output) instead of the pool.",
)
@click.option("--yes", is_flag=True, help="Write without asking.")
def restore(
    url: str | None,
    credentials_file: str | None,
    timeout: float,
    input_file: str | None,
    yes: bool,
) -> None:
    """Put the backed-up files back on this host: shows each file's diff, then asks before it
    writes. Needs no spec (the spec is what it restores)."""
    from adapters.xapi import XapiClient, XapiError, read_credentials
    from adapters.xapi import backup as store
    from adapters.xapi.pooldb import PoolDatabase

    try:
        if input_file:
            files = store.from_json(Path(input_file).read_text())
        else:
            creds = read_credentials(credentials_file=credentials_file)
            client = XapiClient(url=url, credentials=creds, timeout=timeout)
            files = store.load_from_pool(PoolDatabase(client))
    except (XapiError, AdapterError) as exc:
        _fail(f"cannot read the backup: {exc}", EXIT_BLOCKED)
    except ValueError as exc:
        _fail(f"the backup is unreadable: {exc}", EXIT_BLOCKED)
    if not files:
        _fail("no backup found", EXIT_BLOCKED)
    changed = []
    for f in files:
        text = store.diff(f, store.current_bytes(f.path))
        if text:
            changed.append(f)
            click.echo(text, nl=False)
    if not changed:
        click.echo(f"nothing to restore: {len(files)} file(s) match the backup")
        return
    if not yes and not click.confirm(f"write {len(changed)} file(s)?", default=False):
        _fail("nothing was written", EXIT_BLOCKED)
    for f in changed:
        try:
            store.write_file(f)
        except OSError as exc:
            _fail(f"cannot write {f.path}: {exc.strerror or exc}", EXIT_BLOCKED)
        click.echo(f"restored {f.path}")
