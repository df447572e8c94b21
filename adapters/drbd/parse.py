"""Pure parsers for DRBD's status output: text in, ``dict[str, ResourceObs]`` out, no I/O.

Four formats are understood, each by its own function:

- ``parse_status_json``: ``drbdsetup status --json`` (drbd-utils 9, DRBD 9 kernel only: on an
  8.4 kernel drbd-utils runs its ``drbdsetup-84`` helper, which has no ``--json``).
- ``parse_status_text``: ``drbdsetup status [--verbose]`` / ``drbdadm status``. drbd-utils 9
  prints the same layout for DRBD 9 and, through ``drbdsetup-84``, for an 8.4 kernel; the
  8.4 form names its only connection ``peer`` and always prints ``replication:`` once connected.
- ``parse_events2``: ``drbdsetup events2 --now`` (and any transcript of the event stream:
  ``create``/``change``/``destroy`` lines are folded in order, so the result is the last state).
- ``parse_proc_drbd``: ``/proc/drbd`` of DRBD 8.0-8.4 (DRBD 9's ``/proc/drbd`` holds only the
  version, so it is reported as an error rather than as "nothing configured").

Invariants (hold for every function here):

- Nothing raises, whatever the input. Garbage, truncation and unknown tokens become data:
  a resource whose block cannot be understood is ``ResourceObs.unknown(name, why)``; text that
  is not the expected format at all gives ``ParseResult(resources={}, error=why)``; lines
  that belong to no resource set ``error`` too (see ``ParseResult``).
- A resource present in the output is ``up=True``. A resource *absent* from the output is not
  in the result: deciding that a requested resource is "down" is the adapter's job.
- Empty output, ``# No currently configured DRBD found.``, an empty JSON list and a
  ``/proc/drbd`` with only ``cs:Unconfigured`` minors all mean "nothing configured": ``{}``
  with ``error=None``.
- States are folded into one ``ResourceObs`` per resource, *pessimistically*:

  * ``conn``: DRBD 9 splits the state into a connection state (``connection:Connected``) and a
    per-volume replication state (``replication:SyncSource``). When the connection is
    Connected the replication state is used (``Established`` -> ``CONNECTED``, ``Off`` ->
    ``WF_REPORT_PARAMS``, ``SyncSource`` -> ``SYNC_SOURCE`` ...), otherwise the connection
    state is (``Connecting``, ``StandAlone`` ...). Across volumes and connections the worst
    wins: unknown < not connected < sync target side < sync source side < verify/ahead <
    Connected. A resource with no connection at all is ``STANDALONE``.
  * ``disk``: the worst volume (Failed < Diskless < ... < Inconsistent < Outdated < DUnknown <
    Consistent < UpToDate); no volume at all is ``DISKLESS``.
  * ``peer_disk``: the worst peer volume, where ``DUnknown`` counts as worse than any known
    state (an unknown peer volume may hold newer data, so it must never look "Outdated").
    When a connection lists no peer volumes (the text format hides them unless connected;
    ``--verbose`` shows them) the peer disk is ``DUNKNOWN``.
  * ``peer_role``: ``PRIMARY`` if any peer is Primary, else the first known role.
  * ``role``: per resource in DRBD 9; for ``/proc/drbd`` volumes that disagree make the
    resource unknown.
  * ``sync_percent``: the lowest progress over the volumes that are syncing (``done:`` in text
    and events2, ``percent-resync-done`` in JSON, ``sync'ed:`` in /proc/drbd), else None.

Split brain. DRBD reports a split brain only in the kernel log ("Split-Brain detected but
unresolved, dropping connection!") and through its ``split-brain`` helper; what the status
formats show is merely a StandAlone connection (on one or both nodes; the other node may sit
in Connecting/WFConnection). No status format carries a flag. So every parser takes
``split_brain: frozenset[str]``, the names the caller already knows to be split-brained (the
adapter learns them from ``events2`` helper events or from its own memory of the transitions
it saw), and sets ``split_brain=True`` on those resources. ``parse_events2`` additionally sets
it when the transcript contains ``call helper ... helper:split-brain`` for a resource, until a
later line shows that resource's connection Connected again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role

__all__ = [
    "Events2Line",
    "Events2State",
    "ParseResult",
    "parse_events2",
    "parse_proc_drbd",
    "parse_status_json",
    "parse_status_text",
]

_E = TypeVar("_E", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What a parser understood.

    ``resources``: one entry per resource block found in the output, keyed by resource name
    (each entry's ``name`` equals its key). ``error``: None when the whole output was
    understood; otherwise why not. With an error, ``resources`` holds only what could be
    attributed to a resource (often nothing), so a resource *absent* from it is "unknown",
    not "down": callers must not conclude anything from absence when ``error`` is set.
    """

    resources: dict[str, ResourceObs] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------------------------
# Normalised intermediate form shared by all formats, then one fold into ResourceObs.
# --------------------------------------------------------------------------------------------


@dataclass
class _PeerVol:
    volume: int
    replication: str | None = None
    peer_disk: str | None = None
    done: object = None  # text/float progress of a running resync (validated in the fold)
    in_sync: object = None  # JSON "percent-in-sync": used only when syncing and no "done"


@dataclass
class _Conn:
    label: str
    state: str | None = None  # connection state text ("Connected", "StandAlone" ...)
    peer_role: str | None = None
    peer_vols: dict[int, _PeerVol] = field(default_factory=dict)


@dataclass
class _Raw:
    name: str
    role: str | None = None
    disks: dict[int, str | None] = field(default_factory=dict)
    conns: dict[str, _Conn] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


_DISK_RANK: dict[DiskState, int] = {
    DiskState.UNKNOWN: -2,
    DiskState.FAILED: 0,
    DiskState.DISKLESS: 1,
    DiskState.DETACHING: 2,
    DiskState.ATTACHING: 3,
    DiskState.NEGOTIATING: 4,
    DiskState.INCONSISTENT: 5,
    DiskState.OUTDATED: 6,
    DiskState.DUNKNOWN: 7,
    DiskState.CONSISTENT: 8,
    DiskState.UPTODATE: 9,
}
# For the peer, "don't know" is worse than any known state (see module docstring).
_PEER_DISK_RANK: dict[DiskState, int] = {**_DISK_RANK, DiskState.DUNKNOWN: -1}

_TARGET_SIDE = frozenset(
    {
        ConnState.STARTING_SYNC_T,
        ConnState.WF_BITMAP_T,
        ConnState.SYNC_TARGET,
        ConnState.PAUSED_SYNC_T,
        ConnState.VERIFY_T,
        ConnState.BEHIND,
    }
)
_CONN_ORDER = {c: i for i, c in enumerate(ConnState)}


def _conn_rank(c: ConnState) -> tuple[int, int]:
    """Lower is worse; ties broken by declaration order (which lists the worst first)."""
    if c is ConnState.UNKNOWN:
        return (-1, 0)
    if not c.is_connected:
        return (0, _CONN_ORDER[c])
    if c is ConnState.CONNECTED:
        return (4, 0)
    if c in _TARGET_SIDE:
        return (1, _CONN_ORDER[c])
    if c.is_syncing:
        return (2, _CONN_ORDER[c])
    return (3, _CONN_ORDER[c])


def _state(
    cls: type[_E], text: str | None, what: str, problems: list[str], *, may_be_unknown: bool = False
) -> _E:
    """Map DRBD's spelling to a member (case-insensitively, like the enums' own ``parse``) and
    record a problem when the text is missing or not a DRBD word. The word ``Unknown`` is a
    real DRBD answer only for a peer's role (``may_be_unknown``); no DRBD disk or connection
    state is spelt that way, so there it is a problem like any other unknown word."""
    unknown = cls("Unknown")
    if text is None:
        problems.append(f"no {what} reported")
        return unknown
    cleaned = text.strip().lower()
    for member in cls:
        if member.value.lower() == cleaned and (member is not unknown or may_be_unknown):
            return member
    problems.append(f"unrecognised {what} {text[:40]!r}")
    return unknown


def _percent(value: object, what: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        problems.append(f"{what} is not a number")
        return None
    try:
        number = float(value) if isinstance(value, (int, float, str)) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not 0.0 <= number <= 100.0:
        problems.append(f"{what} {str(value)[:20]!r} is not a percentage")
        return None
    return number


def _replication(text: str | None, problems: list[str]) -> ConnState:
    """Map a DRBD 9 replication state (of a Connected connection) to ConnState."""
    if text is None or text == "Established":
        return ConnState.CONNECTED
    if text == "Off":
        return ConnState.WF_REPORT_PARAMS
    return _state(ConnState, text, "replication state", problems)


def _fold(raw: _Raw, split_brain: frozenset[str]) -> ResourceObs:
    """Turn the normalised form into one pessimistic ResourceObs (see module docstring)."""
    problems = list(raw.problems)
    role = _state(Role, raw.role, "role", problems)

    disk = DiskState.DISKLESS
    if raw.disks:
        disks = [
            _state(DiskState, text, f"disk state of volume {vol}", problems)
            for vol, text in sorted(raw.disks.items())
        ]
        disk = min(disks, key=_DISK_RANK.__getitem__)

    conns: list[ConnState] = []
    peer_roles: list[Role] = []
    peer_disks: list[DiskState] = []
    progress: list[float] = []
    for conn in raw.conns.values():
        cstate = _state(ConnState, conn.state, f"connection state of {conn.label!r}", problems)
        if conn.peer_role is not None:
            peer_roles.append(
                _state(Role, conn.peer_role, "peer role", problems, may_be_unknown=True)
            )
        if not conn.peer_vols:
            conns.append(cstate)
            peer_disks.append(DiskState.DUNKNOWN)
            continue
        for pv in conn.peer_vols.values():
            vol_conn = (
                _replication(pv.replication, problems) if cstate is ConnState.CONNECTED else cstate
            )
            conns.append(vol_conn)
            pdisk = (
                DiskState.DUNKNOWN
                if pv.peer_disk is None
                else _state(DiskState, pv.peer_disk, "peer disk state", problems)
            )
            peer_disks.append(pdisk)
            done = _percent(pv.done, "sync progress", problems)
            if vol_conn.is_syncing:
                if done is None:
                    done = _percent(pv.in_sync, "percent-in-sync", problems)
                if done is not None:
                    progress.append(done)

    if problems:
        return ResourceObs.unknown(
            raw.name, f"cannot read DRBD state of {raw.name}: " + "; ".join(problems)
        )

    conn_state = min(conns, key=_conn_rank) if conns else ConnState.STANDALONE
    if Role.PRIMARY in peer_roles:
        peer_role = Role.PRIMARY
    else:
        peer_role = next((r for r in peer_roles if r is not Role.UNKNOWN), Role.UNKNOWN)
    peer_disk = (
        min(peer_disks, key=_PEER_DISK_RANK.__getitem__) if peer_disks else DiskState.DUNKNOWN
    )
    return ResourceObs(
        name=raw.name,
        up=True,
        role=role,
        conn=conn_state,
        disk=disk,
        peer_role=peer_role,
        peer_disk=peer_disk,
        split_brain=raw.name in split_brain,
        sync_percent=min(progress) if progress and conn_state.is_syncing else None,
        known=True,
        error=None,
    )


def _finish(
    raws: Mapping[str, _Raw], split_brain: frozenset[str], error: str | None = None
) -> ParseResult:
    """Fold every resource; if there were blocks but none could be read, the output as a whole
    was not understood (garbage that happens to look like a resource line)."""
    resources = {name: _fold(raw, split_brain) for name, raw in raws.items()}
    if error is None and resources and not any(r.known for r in resources.values()):
        error = f"none of the {len(resources)} resource block(s) could be read"
    return ParseResult(resources, error)


def _guarded(parse: Callable[[], ParseResult]) -> ParseResult:
    """Last line of defence for the no-raise invariant: a bug in a parser must not take the
    agent's tick down. (The fuzz tests exist so that this branch is never taken.)"""
    try:
        return parse()
    except Exception as exc:  # pragma: no cover - defensive
        return ParseResult({}, f"DRBD output parser failed: {type(exc).__name__}: {exc}")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean_lines(text: str) -> list[str]:
    return _ANSI.sub("", text).replace("\r", "").replace("\t", "        ").split("\n")


def _kv(tokens: list[str], into: dict[str, str], problems: list[str]) -> None:
    for tok in tokens:
        key, sep, value = tok.partition(":")
        if not sep or not key:
            problems.append(f"unexpected token {tok[:40]!r}")
            continue
        into[key] = value


def _volume(text: str | None, problems: list[str]) -> int:
    if text is not None and text.isdigit() and len(text) < 10:
        return int(text)
    problems.append(f"bad volume number {str(text)[:20]!r}")
    return -1


# --------------------------------------------------------------------------------------------
# drbdsetup status --json
# --------------------------------------------------------------------------------------------


def parse_status_json(text: str, split_brain: frozenset[str] = frozenset()) -> ParseResult:
    """Parse ``drbdsetup status --json`` (a JSON list of resources, drbd-utils 9).

    Fields used: ``name``, ``role``, ``devices[].{volume,disk-state}``,
    ``connections[].{name,peer-node-id,connection-state,peer-role}`` and
    ``connections[].peer_devices[].{volume,replication-state,peer-disk-state,
    percent-resync-done,percent-in-sync}`` (names as printed by drbd-utils' drbdsetup.c).
    """
    return _guarded(lambda: _parse_json(text, split_brain))


def _parse_json(text: str, split_brain: frozenset[str]) -> ParseResult:
    if not text.strip():
        return ParseResult()
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return ParseResult({}, f"drbdsetup status --json output is not valid JSON: {exc}"[:300])
    if not isinstance(doc, list):
        return ParseResult({}, "drbdsetup status --json output is not a JSON list")
    raws: dict[str, _Raw] = {}
    skipped = 0
    for item in doc:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            skipped += 1
            continue
        raws[name] = _json_resource(name, item)
    error = f"{skipped} JSON entries without a resource name" if skipped else None
    return _finish(raws, split_brain, error)


def _json_str(obj: Mapping[str, object], key: str, problems: list[str]) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{key} is not a string")
        return None
    return value


def _json_int(obj: Mapping[str, object], key: str, problems: list[str]) -> int:
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    problems.append(f"bad {key} {str(value)[:20]!r}")
    return -1


def _json_list(
    obj: Mapping[str, object], key: str, problems: list[str]
) -> list[Mapping[str, object]]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{key} is not a list of objects")
        return []
    return value


def _json_resource(name: str, item: Mapping[str, object]) -> _Raw:
    raw = _Raw(name)
    p = raw.problems
    raw.role = _json_str(item, "role", p)
    for dev in _json_list(item, "devices", p):
        raw.disks[_json_int(dev, "volume", p)] = _json_str(dev, "disk-state", p)
    for i, con in enumerate(_json_list(item, "connections", p)):
        label = _json_str(con, "name", p) or f"peer-node-id:{con.get('peer-node-id', i)}"
        conn = _Conn(label, _json_str(con, "connection-state", p), _json_str(con, "peer-role", p))
        for pd in _json_list(con, "peer_devices", p):
            vol = _json_int(pd, "volume", p)
            conn.peer_vols[vol] = _PeerVol(
                volume=vol,
                replication=_json_str(pd, "replication-state", p),
                peer_disk=_json_str(pd, "peer-disk-state", p),
                done=pd.get("percent-resync-done", pd.get("done")),
                in_sync=pd.get("percent-in-sync"),
            )
        raw.conns[f"{i}:{label}"] = conn
    return raw


# --------------------------------------------------------------------------------------------
# drbdsetup status / drbdadm status (text)
# --------------------------------------------------------------------------------------------


def parse_status_text(text: str, split_brain: frozenset[str] = frozenset()) -> ParseResult:
    """Parse ``drbdsetup status`` / ``drbdadm status`` text, plain or ``--verbose``.

    Layout (drbd-utils' drbdsetup.c): a resource line at column 0 (``NAME role:R``), device
    lines at indent 2 (``disk:D`` or ``volume:N disk:D``), connection lines at indent 2
    (``PEER role:R`` when Connected, ``PEER connection:C`` otherwise; ``--verbose`` prints
    both plus ``node-id:``), peer-device lines at indent 4 (``[volume:N] [replication:R]
    peer-disk:D [done:P]``; ``replication:`` is omitted when Established). Long lines wrap onto
    deeper-indented continuation lines, which belong to the entity above them. A blank line
    ends a resource.
    """
    return _guarded(lambda: _parse_text(text, split_brain))


@dataclass
class _TextConn:
    fields: dict[str, str] = field(default_factory=dict)
    peer_vols: dict[int, dict[str, str]] = field(default_factory=dict)


@dataclass
class _TextRes:
    fields: dict[str, str] = field(default_factory=dict)
    devices: dict[int, dict[str, str]] = field(default_factory=dict)
    conns: dict[str, _TextConn] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _parse_text(text: str, split_brain: frozenset[str]) -> ParseResult:
    blocks: dict[str, _TextRes] = {}
    stray: list[str] = []
    res: _TextRes | None = None
    conn: _TextConn | None = None
    current: dict[str, str] | None = None  # where continuation lines are merged
    for line in _clean_lines(text):
        stripped = line.strip()
        if not stripped:
            res, conn, current = None, None, None  # a blank line ends the resource block
            continue
        if stripped.startswith("#"):
            continue  # "# No currently configured DRBD found."
        indent = len(line) - len(line.lstrip(" "))
        tokens = stripped.split()
        first = tokens[0]
        key = first.partition(":")[0] if ":" in first else None
        if indent == 0 and key is None:
            res = blocks.setdefault(first, _TextRes())
            conn, current = None, res.fields
            _kv(tokens[1:], current, res.problems)
            continue
        if res is None:
            stray.append(stripped)
            continue
        p = res.problems
        if indent == 0:
            p.append(f"unexpected line {stripped[:60]!r}")
        elif key is None or (indent <= 2 and key == "node-id"):
            conn = res.conns.setdefault(first if key is None else f"<{first}>", _TextConn())
            current = conn.fields
            _kv(tokens[1:] if key is None else tokens, current, p)
        elif indent <= 2 and key in ("volume", "disk"):
            vol = _volume(first.partition(":")[2], p) if key == "volume" else 0
            current = res.devices.setdefault(vol, {})
            _kv(tokens, current, p)
        elif indent <= 5 and conn is not None and key in ("volume", "replication", "peer-disk"):
            vol = _volume(first.partition(":")[2], p) if key == "volume" else 0
            current = conn.peer_vols.setdefault(vol, {})
            _kv(tokens, current, p)
        elif current is not None:
            _kv(tokens, current, p)  # a wrapped continuation of the entity above
        else:
            p.append(f"unexpected line {stripped[:60]!r}")

    if not blocks and stray:
        return ParseResult({}, f"not drbdsetup status output: {stray[0][:80]!r}")
    raws: dict[str, _Raw] = {}
    for name, block in blocks.items():
        raw = raws[name] = _Raw(name, role=block.fields.get("role"), problems=block.problems)
        for vol, dev in block.devices.items():
            raw.disks[vol] = dev.get("disk")
        for label, tconn in block.conns.items():
            f = tconn.fields
            # drbdsetup prints connection: only when not Connected, role: only when Connected
            # (--verbose prints both).
            state = f.get("connection") or ("Connected" if "role" in f else None)
            conn_raw = raw.conns[label] = _Conn(label, state, f.get("role"))
            for vol, pv in tconn.peer_vols.items():
                conn_raw.peer_vols[vol] = _PeerVol(
                    vol, pv.get("replication"), pv.get("peer-disk"), pv.get("done")
                )
    error = f"ignored lines outside any resource block: {stray[0][:60]!r}" if stray else None
    return _finish(raws, split_brain, error)


# --------------------------------------------------------------------------------------------
# drbdsetup events2
# --------------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_VERBS = frozenset({"exists", "create", "change", "destroy", "call", "response"})


def parse_events2(text: str, split_brain: frozenset[str] = frozenset()) -> ParseResult:
    """Parse ``drbdsetup events2`` lines (``--now`` snapshot or a stream transcript).

    Each line is ``[TIMESTAMP] VERB OBJECT key:value...`` with VERB in exists/create/change/
    destroy/call/response and OBJECT in resource/device/connection/peer-device/path/helper;
    ``exists -`` ends the ``--now`` snapshot. Lines are applied in order (a ``change`` line
    carries only what changed). ``call helper ... helper:split-brain`` marks the resource
    split-brained until a later connection line reports ``connection:Connected``.
    """
    return _guarded(lambda: _parse_events2(text, split_brain))


@dataclass
class _EvRes:
    fields: dict[str, str] = field(default_factory=dict)
    devices: dict[int, dict[str, str]] = field(default_factory=dict)
    conns: dict[str, dict[str, str]] = field(default_factory=dict)
    peer_devices: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _parse_events2(text: str, split_brain: frozenset[str]) -> ParseResult:
    state = Events2State()
    for line in _clean_lines(text):
        state.apply(line)
    return state.result(split_brain)


@dataclass(frozen=True, slots=True)
class Events2Line:
    """What one events2 line was, for a caller that folds a live stream (``Events2State``).

    ``kind``: ``blank``; ``end-of-dump`` (``exists -``: the initial state is complete);
    ``lost`` (``- skipped N``: events were dropped, the state may be stale); ``event``
    (applied to ``name``); ``helper`` (a ``call``/``response`` of ``helper``, e.g.
    ``split-brain``, for ``name``); ``garbage`` (not an events2 line: ``why``)."""

    kind: str
    name: str | None = None
    helper: str | None = None
    why: str | None = None


class Events2State:
    """The incremental form of ``parse_events2``: ``apply`` one line at a time (from a live
    ``drbdsetup events2`` stream), ``result`` whenever the current state is wanted. The same
    rules as ``parse_events2`` (which is this class applied to a whole text); pure, no I/O,
    never raises; not thread-safe (the caller serialises)."""

    def __init__(self) -> None:
        self._resources: dict[str, _EvRes] = {}
        self._helper_sb: set[str] = set()
        self._stray: list[str] = []

    def apply(self, line: str) -> Events2Line:
        """Fold one line (with or without its newline) into the state; what it was."""
        try:
            return self._apply(_ANSI.sub("", line).replace("\r", "").replace("\n", ""))
        except Exception as exc:  # pragma: no cover - defensive, like _guarded
            self._stray.append(line.strip()[:80])
            return Events2Line("garbage", why=f"events2 fold failed: {type(exc).__name__}")

    def _apply(self, line: str) -> Events2Line:
        tokens = line.split()
        if tokens and _TIMESTAMP.match(tokens[0]):
            tokens = tokens[1:]
        if not tokens:
            return Events2Line("blank")
        if tokens[0].startswith("-"):
            return Events2Line("lost")  # "- skipped N": events lost, a re-list resyncs
        verb = tokens[0]
        obj = tokens[1] if len(tokens) > 1 else ""
        if verb == "exists" and obj == "-":
            return Events2Line("end-of-dump")
        if verb not in _VERBS:
            self._stray.append(line.strip())
            return Events2Line("garbage", why=f"not an events2 line: {line.strip()[:60]!r}")
        fields: dict[str, str] = {}
        problems: list[str] = []
        _kv(tokens[2:], fields, problems)
        name = fields.get("name")
        if not name:
            self._stray.append(line.strip())
            return Events2Line("garbage", why=f"events2 line names no resource: {line[:60]!r}")
        res = self._resources.setdefault(name, _EvRes())
        res.problems.extend(problems)
        if verb in ("call", "response"):
            helper = fields.get("helper") if obj == "helper" else None
            if helper == "split-brain" and verb == "call":
                self._helper_sb.add(name)
            return Events2Line("helper" if verb == "call" else "event", name, helper)
        _apply_event(res, verb, obj, fields, self._resources, name)
        if obj == "connection" and fields.get("connection") == "Connected":
            self._helper_sb.discard(name)
        if problems:
            return Events2Line("garbage", name, why="; ".join(problems)[:200])
        return Events2Line("event", name)

    def result(self, split_brain: frozenset[str] = frozenset()) -> ParseResult:
        """The state folded so far, as ``parse_events2`` reports it."""
        return _guarded(lambda: self._result(split_brain))

    def _result(self, split_brain: frozenset[str]) -> ParseResult:
        stray = self._stray
        if not self._resources and stray:
            return ParseResult({}, f"not drbdsetup events2 output: {stray[0][:80]!r}")
        raws = {name: _events_raw(name, res) for name, res in self._resources.items()}
        error = f"ignored lines that are not events2 events: {stray[0][:60]!r}" if stray else None
        return _finish(raws, split_brain | frozenset(self._helper_sb), error)

    def resource(self, name: str) -> ResourceObs | None:
        """One resource's current state (None when the stream has not shown it)."""
        res = self._resources.get(name)
        if res is None:
            return None
        return _guarded(
            lambda: ParseResult({name: _fold(_events_raw(name, res), frozenset())})
        ).resources.get(name)


def _conn_key(fields: Mapping[str, str]) -> str:
    return fields.get("peer-node-id") or fields.get("conn-name") or "?"


def _apply_event(
    res: _EvRes, verb: str, obj: str, fields: dict[str, str], all_res: dict[str, _EvRes], name: str
) -> None:
    destroy = verb == "destroy"
    p = res.problems
    if obj == "resource":
        if destroy:
            del all_res[name]
        else:
            res.fields.update(fields)
    elif obj == "device":
        vol = _volume(fields.get("volume"), p)
        if destroy:
            res.devices.pop(vol, None)
        else:
            res.devices.setdefault(vol, {}).update(fields)
    elif obj == "connection":
        key = _conn_key(fields)
        if destroy:
            res.conns.pop(key, None)
            for pkey in [k for k in res.peer_devices if k[0] == key]:
                del res.peer_devices[pkey]
        else:
            res.conns.setdefault(key, {}).update(fields)
    elif obj == "peer-device":
        pkey = (_conn_key(fields), _volume(fields.get("volume"), p))
        if destroy:
            res.peer_devices.pop(pkey, None)
        else:
            res.peer_devices.setdefault(pkey, {}).update(fields)
    elif obj not in ("path", "helper"):
        p.append(f"unknown events2 object {obj[:30]!r}")


def _events_raw(name: str, res: _EvRes) -> _Raw:
    raw = _Raw(name, role=res.fields.get("role"), problems=list(res.problems))
    for vol, dev in res.devices.items():
        raw.disks[vol] = dev.get("disk")
    for key, con in res.conns.items():
        raw.conns[key] = _Conn(con.get("conn-name", key), con.get("connection"), con.get("role"))
    for (key, vol), pd in res.peer_devices.items():
        conn = raw.conns.setdefault(key, _Conn(key))
        conn.peer_vols[vol] = _PeerVol(
            vol, pd.get("replication"), pd.get("peer-disk"), pd.get("done")
        )
    return raw


# --------------------------------------------------------------------------------------------
# /proc/drbd (DRBD 8.x)
# --------------------------------------------------------------------------------------------

_PROC_VERSION = re.compile(r"^version:\s*(\d+)\.(\d+)")
_PROC_DEVICE = re.compile(r"^\s*(\d+):\s*cs:(\S*)(.*)$")
_PROC_SYNCED = re.compile(r"sync'ed:\s*([0-9]+(?:\.[0-9]+)?)\s*%")


def parse_proc_drbd(
    text: str, names_by_minor: Mapping[int, str], split_brain: frozenset[str] = frozenset()
) -> ParseResult:
    """Parse DRBD 8.x ``/proc/drbd``.

    Device lines are `` M: cs:C ro:R/PR ds:D/PD P flags`` (``st:`` instead of ``ro:`` before
    8.3), followed by statistics lines and, while syncing, ``[==>..] sync'ed: 45.2% (...)``.
    ``M: cs:Unconfigured`` is a minor that is not set up (left out of the result). Minors are
    named through ``names_by_minor``; minors missing from it are ignored, and several minors
    of one name are that resource's volumes.
    """
    return _guarded(lambda: _parse_proc(text, names_by_minor, split_brain))


@dataclass
class _ProcDev:
    minor: int
    cs: str
    fields: dict[str, str] = field(default_factory=dict)
    synced: str | None = None
    problems: list[str] = field(default_factory=list)


def _parse_proc(
    text: str, names_by_minor: Mapping[int, str], split_brain: frozenset[str]
) -> ParseResult:
    version: tuple[int, int] | None = None
    devices: list[_ProcDev] = []
    dev: _ProcDev | None = None
    for line in _clean_lines(text):
        if (m := _PROC_VERSION.match(line)) is not None:
            version = (int(m.group(1)), int(m.group(2)))
            continue
        if (m := _PROC_DEVICE.match(line)) is not None and len(m.group(1)) < 8:
            dev = _ProcDev(int(m.group(1)), m.group(2))
            devices.append(dev)
            for tok in m.group(3).split():
                key, sep, value = tok.partition(":")
                if sep:
                    dev.fields[key] = value
            continue
        if dev is not None and (m := _PROC_SYNCED.search(line)) is not None:
            dev.synced = m.group(1)
    if version is not None and version[0] >= 9:
        return ParseResult(
            {}, "DRBD 9's /proc/drbd carries no per-device state; read drbdsetup status instead"
        )
    if version is None and not devices:
        if not text.strip():
            return ParseResult()
        return ParseResult({}, "not /proc/drbd output (no version line, no device lines)")

    raws: dict[str, _Raw] = {}
    roles: dict[str, set[str]] = {}
    for d in devices:
        name = names_by_minor.get(d.minor)
        if name is None or d.cs == "Unconfigured":
            continue
        raw = raws.setdefault(name, _Raw(name))
        p = raw.problems
        ro = d.fields.get("ro", d.fields.get("st"))
        ds = d.fields.get("ds")
        if ro is None or ro.count("/") != 1 or ds is None or ds.count("/") != 1:
            p.append(f"minor {d.minor}: incomplete line (cs:{d.cs[:20]} ro/ds missing)")
            continue
        role, peer_role = ro.split("/")
        disk, peer_disk = ds.split("/")
        roles.setdefault(name, set()).add(role)
        raw.disks[d.minor] = disk
        cs = ConnState.parse(d.cs)
        if cs.is_connected:  # 8.4 folds the replication state into cs
            conn = _Conn(f"minor {d.minor}", "Connected", peer_role)
            conn.peer_vols[d.minor] = _PeerVol(d.minor, d.cs, peer_disk, d.synced)
        else:
            conn = _Conn(f"minor {d.minor}", d.cs, peer_role)
            conn.peer_vols[d.minor] = _PeerVol(d.minor, None, peer_disk)
        raw.conns[conn.label] = conn
    for name, raw in raws.items():
        seen = roles.get(name, set())
        if len(seen) > 1:
            raw.problems.append(f"volumes disagree on the role ({'/'.join(sorted(seen))})")
        raw.role = next(iter(seen)) if len(seen) == 1 else None
    return _finish(raws, split_brain)
