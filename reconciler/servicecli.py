"""Service commands of ``reconcile``: ``systemd-unit``, ``log``, ``events``.

Commands only (parsing options, printing): the rules live in ``reconciler.systemd``,
``reconciler.agentlog``, ``reconciler.events`` and ``adapters.journal``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import click

from reconciler import agentlog, events

_SINCE_HELP = "Only entries since: 10m, 2h, 1d (ago), an ISO time (UTC unless given) or @EPOCH."


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return agentlog.parse_since(value, now=time.time())
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}", param_hint="--since") from exc


def _state_dir(state_dir: str | None) -> Path:
    from reconciler.specfile import default_state_dir

    return Path(state_dir) if state_dir else default_state_dir()


@click.command("systemd-unit")
@click.option(
    "-f",
    "--file",
    "spec_path",
    envvar="TANDEM_SPEC",
    default=None,
    help="The spec the service runs (written as TANDEM_SPEC; its timings set WatchdogSec).",
)
@click.option("--node", envvar="TANDEM_NODE", help="Pin the node (default: the host's name).")
@click.option("--state-dir", default="/var/lib/tandem", show_default=True, help="TANDEM_STATE_DIR.")
@click.option(
    "--exec",
    "exec_path",
    default=None,
    help="The reconcile executable (default: the one running this command).",
)
def systemd_unit_command(
    spec_path: str | None, node: str | None, state_dir: str, exec_path: str | None
) -> None:
    """Print the systemd unit (Type=notify, watchdog from the spec's timings).

    \b
      reconcile systemd-unit -f /etc/tandem/cluster.yaml > /etc/systemd/system/tandem.service
      systemctl daemon-reload && systemctl enable --now tandem
    """
    from reconciler.specfile import read_spec
    from reconciler.systemd import unit_text

    spec, _ = read_spec(spec_path)
    if node is not None and node not in spec.node_names:
        raise click.BadParameter(f"{node!r} is not a node of the spec", param_hint="--node")
    exe = exec_path or _this_reconcile()
    spec_abs = str(Path(spec_path).resolve()) if spec_path else None
    click.echo(
        unit_text(spec, exec_path=exe, spec_path=spec_abs, state_dir=state_dir, node=node),
        nl=False,
    )


def _this_reconcile() -> str:
    here = Path(sys.argv[0])
    if here.name == "reconcile" and here.exists():
        return str(here.resolve())
    beside = Path(sys.executable).parent / "reconcile"
    if beside.exists():
        return str(beside)
    return shutil.which("reconcile") or str(beside)


@click.command("log")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--since", default=None, help=_SINCE_HELP)
@click.option("--node", default=None, help="Only this node's lines.")
@click.option("--resource", default=None, help="Only lines about this resource (or VIP).")
@click.option(
    "--state-dir",
    envvar="TANDEM_STATE_DIR",
    type=click.Path(file_okay=False),
    help="Agent state (the rotated log file lives there). Env: TANDEM_STATE_DIR.",
)
@click.option(
    "--source",
    type=click.Choice(["auto", "journal", "file"]),
    default="auto",
    show_default=True,
    help="auto: the state dir's log file when the agent writes one (it runs outside "
    "journald), else the journal (journalctl -t tandem).",
)
def log_command(
    follow: bool,
    since: str | None,
    node: str | None,
    resource: str | None,
    state_dir: str | None,
    source: str,
) -> None:
    """Print (and with -f follow) the agent's log: the journal, or the rotated file."""
    from adapters.journal import journal_available

    sdir = _state_dir(state_dir)
    flt = agentlog.Filter(since=_since(since), node=node, resource=resource)
    files = sorted(sdir.glob("tandem-*.log")) if sdir.is_dir() else []
    if node is not None:
        files = [p for p in files if p == agentlog.log_path(sdir, node)]
    use = source
    if use == "auto":
        use = "file" if files or not journal_available() else "journal"
    try:
        if use == "journal":
            _log_journal(flt, follow=follow)
        else:
            _log_files(sdir, files, flt, follow=follow, node=node)
    except KeyboardInterrupt:
        pass


def _log_files(
    sdir: Path, files: list[Path], flt: agentlog.Filter, *, follow: bool, node: str | None
) -> None:
    if not files and not follow:
        click.echo(
            f"no agent log in {sdir} (the agent has not run here, or it logs to the "
            "journal: reconcile log --source journal)",
            err=True,
        )
        sys.exit(1)
    entries = sorted((e for p in files for e in agentlog.read_file(p)), key=lambda e: e.time)
    for e in agentlog.select(entries, flt):
        click.echo(e.render())
    if not follow:
        return
    path = files[0] if files else agentlog.log_path(sdir, node or "*")
    if len(files) > 1:
        click.echo(f"following {path.name} only (pass --node to choose)", err=True)
    sys.stdout.flush()
    for e in agentlog.follow_file(path):
        if flt.admits(e):
            click.echo(e.render())
            sys.stdout.flush()


def _log_journal(flt: agentlog.Filter, *, follow: bool) -> None:
    from adapters.journal import Journal
    from reconciler.core.errors import AdapterError

    journal = Journal()
    try:
        lines = journal.read(since=flt.since)
        cursor = lines[-1].cursor if lines else None
        for line in lines:
            _echo_journal(line, flt)
        if follow:
            sys.stdout.flush()
            for line in journal.follow(cursor=cursor, since=flt.since, sleep=time.sleep):
                _echo_journal(line, flt)
                sys.stdout.flush()
    except AdapterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _echo_journal(line: object, flt: agentlog.Filter) -> None:
    from adapters.journal import JournalLine

    assert isinstance(line, JournalLine)
    e = agentlog.entry_from_message(line.time, line.priority, line.message)
    if flt.admits(e):
        click.echo(e.render())


@click.command("events")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--since", default=None, help=_SINCE_HELP)
@click.option("--node", default=None, help="Only this node's events (default: every node's).")
@click.option("-n", "--last", type=click.IntRange(min=0), default=None, help="Only the last N.")
@click.option(
    "--state-dir",
    envvar="TANDEM_STATE_DIR",
    type=click.Path(file_okay=False),
    help="Agent state (events-NODE.jsonl). Env: TANDEM_STATE_DIR.",
)
def events_command(
    as_json: bool, since: str | None, node: str | None, last: int | None, state_dir: str | None
) -> None:
    """What the agent did and refused: time, node, action, resource, result, reason."""
    sdir = _state_dir(state_dir)
    found, problems = events.load(events.node_files(sdir, node))
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    t0 = _since(since)
    shown = [e for e in found if t0 is None or e.time >= t0]
    if last is not None:
        shown = shown[-last:] if last else []
    for e in shown:
        if as_json:
            click.echo(json.dumps(e.to_json(), sort_keys=True))
        else:
            click.echo(render_event(e))
    if not shown and not as_json:
        click.echo(f"no events in {sdir}" + (f" for {node}" if node else ""))


def render_event(e: events.Event) -> str:
    what = e.action + (f" {e.resource}" if e.resource else "")
    tail = f" ({e.error})" if e.error and e.result != "not-run" else ""
    return f"{agentlog.utc_text(e.time)} {e.node} {what}: {e.result}{tail} - {e.reason}"


COMMANDS = (systemd_unit_command, log_command, events_command)
