"""The real DRBD adapter: ``drbdsetup``/``drbdadm`` through the one command seam (``Runner``).

Invariants:

- ``observe`` runs one status command per tick and never raises. A command that fails (exit
  code, timeout, missing binary) or output that cannot be parsed makes every requested
  resource ``ResourceObs.unknown(name, why)``. When the output was understood, a requested
  resource that is absent from it is ``ResourceObs.down(name)`` (not configured in the
  kernel); when the DRBD module is not loaded at all, every requested resource is down.
- Status commands, per ``status_format``:
  ``json``  ``drbdsetup status --json`` (DRBD 9). On an 8.4 kernel drbd-utils runs its
  ``drbdsetup-84`` helper, which rejects ``--json``; the adapter then falls back to ``text``
  for good (and says so in its log).
  ``text``  ``drbdsetup status --verbose``: the same layout as ``drbdadm status``, but it lists
  every kernel resource (``drbdadm status RES`` exits 10 for a resource that is down) and
  ``--verbose`` keeps the peer's disk state while disconnected (plain text hides it, and an
  Outdated peer is what the promotion policy needs to see).
  ``proc``  ``cat /proc/drbd`` (DRBD 8.x only), minors named from the spec's resources.
- Actions run ``drbdadm`` and raise only ``TransientError``/``TerminalError``; the messages say
  why DRBD refused, in words an operator can act on (``classify_drbdadm_failure``, a pure
  function). Actions are idempotent where DRBD allows: ``up`` is ``drbdadm adjust`` (brings a
  down resource up, and does nothing to one that matches its configuration); ``disconnect``
  of a StandAlone resource and a plain ``connect`` of one that is already connecting succeed.
- Split brain: DRBD's status output cannot show it (see ``adapters.drbd.parse``). The adapter
  reports a suspected split brain through ``ResourceObs.split_brain`` from the observation plus
  a persisted ``SplitBrainRecord`` (``adapters.drbd.record``: the suspicion, the last seen
  connection state, the connection action issued since), never from a process's memory alone:
  a ``reconcile --once`` run that finds the resource StandAlone with a recorded suspicion
  reports split brain, like the agent that first saw it. A suspicion is cleared when the
  resource is seen connected again or after a ``connect --discard-my-data`` (the recovery
  chose this node as the victim). It is added by ``mark_split_brain`` (for a caller that
  watches ``drbdsetup events2`` helper events or the kernel log) or, unless
  ``infer_split_brain=False``, when a resource becomes StandAlone without this node having
  disconnected it: right after a ``connect``/``up`` issued here, or coming from any other
  connection state. (Other refusals, such as "Unrelated data" or an authentication failure,
  look the same; they equally need an operator, and an operator's own ``drbdadm disconnect``
  outside the agent is flagged too.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from adapters.drbd.parse import ParseResult, parse_proc_drbd, parse_status_json, parse_status_text
from adapters.drbd.record import ResourceMemo, SplitBrainRecord
from adapters.runner import CommandResult, Runner
from reconciler.core.errors import AdapterError, TerminalError, TransientError
from reconciler.core.observed import ConnState, ResourceObs
from reconciler.core.spec import Resource

__all__ = ["RealDrbd", "StatusFormat", "classify_drbdadm_failure", "drbd_not_loaded"]

StatusFormat = Literal["json", "text", "proc"]

log = logging.getLogger(__name__)

# What drbd-utils prints when the kernel module is missing (drbdsetup, drbdsetup-84, and the
# older "try: modprobe drbd" hint); /proc/drbd missing means the same.
_NOT_LOADED_MARKERS = (
    "failed to modprobe drbd",
    "make sure that the drbd kernel module is installed",
    "could not stat /proc/drbd",
    "could not connect to 'drbd' generic netlink family",
    "do you need to load the module",
    "/proc/drbd: no such file or directory",
)


def drbd_not_loaded(output: str) -> bool:
    """True when a drbd-utils error output says the DRBD kernel module is not loaded."""
    text = output.lower()
    return any(marker in text for marker in _NOT_LOADED_MARKERS)


def _json_unsupported(output: str) -> bool:
    """drbdsetup-84 (8.4 kernel) and drbd-utils 8.x reject ``--json`` via getopt."""
    text = output.lower()
    return "json" in text or "unrecognized option" in text or "invalid option" in text


class RealDrbd:
    """``DrbdAdapter`` for real DRBD (8.4 or 9) behind a ``Runner``.

    ``status_timeout`` bounds the one observe command per tick; ``action_timeout`` bounds each
    ``drbdadm`` action (a promotion can wait for DRBD's fence-peer handler). ``record`` holds
    what split-brain inference needs across ticks (default: in memory only; the factory gives
    it a file in the node's state directory).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        status_format: StatusFormat = "json",
        status_timeout: float = 5.0,
        action_timeout: float = 30.0,
        infer_split_brain: bool = True,
        record: SplitBrainRecord | None = None,
    ) -> None:
        if status_format not in ("json", "text", "proc"):
            raise ValueError(f"unknown DRBD status format {status_format!r}")
        self._runner = runner
        self._format: StatusFormat = status_format
        self._status_timeout = status_timeout
        self._action_timeout = action_timeout
        self._infer_split_brain = infer_split_brain
        self.record = SplitBrainRecord() if record is None else record

    # ---------------------------------------------------------------------------- observe

    @property
    def status_format(self) -> StatusFormat:
        """The format in use (``json`` turns into ``text`` after the 8.4 fallback)."""
        return self._format

    @property
    def split_brain_suspects(self) -> frozenset[str]:
        return frozenset(name for name, m in self.record.load().items() if m.split_brain)

    def mark_split_brain(self, name: str) -> None:
        """Record a split brain learnt elsewhere (events2 ``helper:split-brain``, kernel log)."""
        self._update(name, split_brain=True)

    def clear_split_brain(self, name: str) -> None:
        """Forget a split brain (operator resolved it; it also clears once seen connected)."""
        self._update(name, split_brain=False)

    def _update(
        self,
        name: str,
        *,
        split_brain: bool | None = None,
        action: str | None = None,
    ) -> None:
        memos = self.record.load()
        memo = memos.get(name, ResourceMemo())
        if split_brain is not None:
            memo = replace(memo, split_brain=split_brain)
        if action is not None:
            memo = replace(memo, action=action)
        memos[name] = memo
        self.record.save(memos)

    def observe(self, resources: Sequence[Resource]) -> tuple[ResourceObs, ...]:
        """One status command; see the module docstring for what each outcome means."""
        memos = self.record.load()
        try:
            result = self._read_status(resources, memos)
        except AdapterError as exc:
            return tuple(
                ResourceObs.unknown(r.name, f"DRBD status unreadable: {exc}") for r in resources
            )
        return self._report(result, resources, memos)

    def report(
        self, result: ParseResult | None, resources: Sequence[Resource]
    ) -> tuple[ResourceObs, ...]:
        """The observation of ``resources`` from a status already parsed elsewhere (the
        event-fed adapter's ``events2`` state; None: the DRBD module is not loaded), with the
        same rules as ``observe``: absent is down unless the parse had an error, and the
        split-brain record is updated and applied."""
        return self._report(result, resources, self.record.load())

    def _report(
        self,
        result: ParseResult | None,
        resources: Sequence[Resource],
        memos: dict[str, ResourceMemo],
    ) -> tuple[ResourceObs, ...]:
        if result is None:  # module not loaded: nothing is configured
            self.record.save(_actions_done(memos))
            return tuple(ResourceObs.down(r.name) for r in resources)
        out: list[ResourceObs] = []
        for r in resources:
            obs = result.resources.get(r.name)
            if obs is None:
                out.append(
                    ResourceObs.unknown(
                        r.name, f"DRBD status output not understood: {result.error}"
                    )
                    if result.error
                    else ResourceObs.down(r.name)
                )
            else:
                out.append(self._track(obs, memos))
        self.record.save(_actions_done(memos))
        return tuple(out)

    def _read_status(
        self, resources: Sequence[Resource], memos: dict[str, ResourceMemo]
    ) -> ParseResult | None:
        """The parsed status, or None when the DRBD module is not loaded. Raises AdapterError
        when the command failed for any other reason."""
        known = frozenset(name for name, m in memos.items() if m.split_brain)
        if self._format == "json":
            res = self._status(["drbdsetup", "status", "--json"])
            if res.ok:
                return parse_status_json(res.stdout, known)
            output = res.stderr + res.stdout
            if drbd_not_loaded(output):
                return None
            if not _json_unsupported(output):
                raise TerminalError(_failed(res), command=res.argv, output=output)
            log.info("drbdsetup has no --json here (DRBD 8.4 kernel?): using text status")
            self._format = "text"
        if self._format == "text":
            res = self._status(["drbdsetup", "status", "--verbose"])
            if res.ok:
                return parse_status_text(res.stdout, known)
            output = res.stderr + res.stdout
            if drbd_not_loaded(output):
                return None
            raise TerminalError(_failed(res), command=res.argv, output=output)
        res = self._status(["cat", "/proc/drbd"])
        if res.ok:
            names = {r.minor: r.name for r in resources}
            return parse_proc_drbd(res.stdout, names, known)
        if "no such file" in res.stderr.lower():
            return None
        raise TerminalError(_failed(res), command=res.argv, output=res.stderr)

    def _status(self, argv: list[str]) -> CommandResult:
        return self._runner.run(argv, timeout=self._status_timeout, check=False)

    def _track(self, obs: ResourceObs, memos: dict[str, ResourceMemo]) -> ResourceObs:
        """Update ``memos`` (the record's content) from one observation and report the
        split-brain suspicion it holds for the resource."""
        name = obs.name
        memo = memos.get(name, ResourceMemo())
        if obs.known and obs.up:
            suspect = memo.split_brain
            if obs.conn.is_connected:
                suspect = False
            elif (
                obs.conn is ConnState.STANDALONE
                and self._infer_split_brain
                and memo.action != "disconnect"
                and (
                    memo.action in ("connect", "up")
                    or memo.conn not in (None, ConnState.STANDALONE)
                )
            ):
                suspect = True
            memo = replace(memo, conn=obs.conn, split_brain=suspect)
            memos[name] = memo
        flagged = memo.split_brain
        return obs if obs.split_brain == flagged else replace(obs, split_brain=flagged)

    # ---------------------------------------------------------------------------- actions

    def up(self, resource: Resource) -> None:
        """Load the module if needed, then ``drbdadm adjust``: attach + connect a resource that
        is down, and leave one that matches its configuration alone. Note that adjust also
        restores a configured connection that is StandAlone (it reconnects)."""
        # No modprobe (module built in, or loaded by other means): adjust will tell.
        with contextlib.suppress(TerminalError):
            self._runner.run(["modprobe", "drbd"], timeout=self._action_timeout, check=False)
        self._update(resource.name, action="up")
        self._drbdadm("adjust", resource)

    def primary(self, resource: Resource, *, force: bool = False) -> None:
        self._drbdadm("primary", resource, *(("--force",) if force else ()))

    def secondary(self, resource: Resource) -> None:
        self._drbdadm("secondary", resource)

    def connect(self, resource: Resource, *, discard_my_data: bool = False) -> None:
        """``drbdadm connect [--discard-my-data]``; the flag makes this node the split-brain
        victim: its changes since the split are thrown away and it resyncs from the peer. It
        clears this node's split-brain suspicion for the resource (the recovery resolved it);
        a StandAlone seen right after it is a refusal again and flags it anew."""
        self._update(resource.name, action="connect")
        self._drbdadm("connect", resource, *(("--discard-my-data",) if discard_my_data else ()))
        if discard_my_data:
            self._update(resource.name, split_brain=False)

    def disconnect(self, resource: Resource) -> None:
        self._update(resource.name, action="disconnect")
        self._drbdadm("disconnect", resource)

    def _drbdadm(self, action: str, resource: Resource, *options: str) -> None:
        argv = ["drbdadm", action, *options, resource.name]
        res = self._runner.run(argv, timeout=self._action_timeout, check=False)
        if res.ok:
            return
        output = (res.stderr + "\n" + res.stdout).strip()
        if _already_done(action, options, output):
            return
        raise classify_drbdadm_failure(
            action, resource.name, res.rc, output, options=options, command=res.argv
        )


def _actions_done(memos: dict[str, ResourceMemo]) -> dict[str, ResourceMemo]:
    """The record after an observation: the actions it has now seen the outcome of forgotten."""
    return {name: replace(m, action=None) for name, m in memos.items()}


def _failed(res: CommandResult) -> str:
    detail = (res.stderr or res.stdout).strip().splitlines()
    return f"{' '.join(res.argv)} failed with exit code {res.rc}" + (
        f": {detail[-1][:200]}" if detail else ""
    )


def _already_done(action: str, options: Sequence[str], output: str) -> bool:
    """Failures that mean the desired state already holds (idempotent actions)."""
    text = output.lower()
    # DRBD 8.4 says "can not disconnect a standalone device"; drbd-utils 9.22 driving an 8.4
    # kernel says "(162) Invalid configuration request ... unknown connection" (seen in the VM
    # tier). Either way the resource is already StandAlone.
    if action == "disconnect" and (
        "can not disconnect a standalone device" in text or "unknown connection" in text
    ):
        return True
    # DRBD 8.4: a connect while already connecting/connected ("use disconnect first"). Not
    # with --discard-my-data: that flag would silently not take effect.
    return action == "connect" and not options and "device has a net-config" in text


def classify_drbdadm_failure(
    action: str,
    resource: str,
    rc: int,
    output: str,
    *,
    options: Sequence[str] = (),
    command: tuple[str, ...] = (),
) -> AdapterError:
    """Map a failed ``drbdadm ACTION RESOURCE`` to the error the executor should see.

    Pure function of the exit code and output. ``TransientError``: DRBD was busy or the device
    is still held open, so the same action may succeed shortly. ``TerminalError``: DRBD's own
    rules refused (two primaries, no UpToDate data, peer not outdated, no quorum ...) or the
    configuration/module is missing; retrying without a change elsewhere cannot help. The
    message names the resource and the reason in an operator's words, then quotes DRBD.
    """
    text = output.lower()
    quoted = _quote(output)

    def terminal(message: str) -> TerminalError:
        return TerminalError(f"{message} [{quoted}]", command=command, output=output)

    def transient(message: str) -> TransientError:
        return TransientError(f"{message} [{quoted}]", command=command, output=output)

    promote = f"DRBD refused to promote {resource}"
    if "multiple primaries not allowed" in text or "other vol primary on peer" in text:
        return terminal(f"{promote}: the peer is still Primary (only one Primary is allowed)")
    if "need access to uptodate data" in text or "without at least one uptodate disk" in text:
        return terminal(
            f"{promote}: this node has no access to UpToDate data (the local disk is not "
            "UpToDate and no UpToDate peer is connected); wait for the peer or the resync, "
            "or force it only if this copy is known to be the newest"
        )
    if "peer is not outdated" in text or "refusing to be primary" in text:
        return terminal(
            f"{promote}: the peer is not known to be Outdated, so it may hold newer data "
            "(resource fencing); reconnect to the peer or have it outdated first"
        )
    if "no quorum" in text:
        return terminal(f"DRBD refused to {action} {resource}: this node has no quorum")
    if "held open by someone" in text or "device or resource busy" in text:
        return transient(
            f"DRBD refused to {_verb(action)} {resource}: its device is still held open "
            "(iSCSI target, mount or another process); retry once it is closed"
        )
    if (
        "in transient state" in text
        or "concurrent state changes" in text
        or "timeout in operation" in text
        or "interrupted by signal" in text
    ):
        return transient(f"DRBD was busy changing the state of {resource}; retry")
    if "refused by peer" in text:
        return terminal(f"the DRBD peer refused to let {resource} {_verb(action)}")
    if "is diskless" in text or "requested operation requires a disk" in text:
        return terminal(f"{resource} has no local disk attached; '{action}' needs one")
    if action == "connect" and options and "net-config" in text:
        return terminal(
            f"{resource} is already connecting or connected; disconnect it before "
            "connecting with --discard-my-data"
        )
    if drbd_not_loaded(output):
        return terminal(f"cannot {action} {resource}: the DRBD kernel module is not loaded")
    if (
        "not defined in your config" in text
        or "no resources defined" in text
        or "unknown resource" in text
        or "no such resource" in text
    ):
        return terminal(
            f"DRBD does not know resource {resource} (not in the DRBD configuration on this "
            "node, or not up)"
        )
    return terminal(f"drbdadm {action} {resource} failed with exit code {rc}")


def _verb(action: str) -> str:
    return {"secondary": "demote", "primary": "promote"}.get(action, action)


def _quote(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return " / ".join(lines)[:300] if lines else "no output"
