"""The tgt (scsi-target-utils, ``tgtd``/``tgtadm``) iSCSI target adapter.

Invariants:

- Every command goes through the injected ``Runner`` (the product's only command seam); this
  module never spawns a process itself. The node's files and process table (control directory,
  PID file, log, ``/proc``, SIGKILL) are reached through a ``ProcessHost``: ``LocalProcessHost``
  (the default: direct OS calls, for ``Local``/``Netns`` transports, where the agent shares the
  node's file system and PID namespace) or ``CommandProcessHost`` (the same through the runner,
  for a node the agent reaches remotely, e.g. a VM over ``adapters.vmconsole``). Either way they
  concern only the tgtd PID this adapter started or recorded.
- Each adapter owns one tgtd with its own control socket ``<control_dir>/socket`` (tgtd and every
  tgtadm get ``TGT_IPC_SOCKET``; tgtd appends ``.0``). Network namespaces do not isolate path-based
  unix sockets, so two adapters on one machine must use two control directories; a second tgtd
  on a busy socket exits with "another tgtd is using ...lock".
- tgtd runs in the foreground (``tgtd -f``) started by ``Runner.spawn``: the PID is known
  exactly, recorded in ``<control_dir>/tgtd.pid`` (on the node), and reaped through the handle.
  ``control_dir`` is a path on the node.
- ``observe`` never raises: daemon not answering -> ``running=False``; unreadable or truncated
  output -> ``running=None`` with ``error``. A LUN counts as exported only when its SCSI ID and SN
  are the spec's (a LUN with default IDs would show initiators a different disk).
- Actions are idempotent by observation (show first, then change only what differs) and raise
  only ``TransientError``/``TerminalError``. ``stop`` is bounded: offline, force-delete every
  target (drops sessions), ask tgtd to exit, wait for the PID, SIGKILL as the last resort.
- ``parse_tgtadm_show`` and friends are pure and total: any text gives a result, never an
  exception; anything they do not understand is listed in ``problems``.

tgtadm facts this relies on (tgt 1.0.85, Debian 12; see tests/fixtures/tgt/SOURCES.md):

- Errors exit 22 with ``tgtadm: <reason>`` on stderr ("this target already exists", "can't find
  the target", "this access control rule already exists", "this target is still active").
- No daemon on the socket: exit 107 ("Transport endpoint is not connected").
- SCSI ID/SN cannot be given to ``logicalunit --op new`` (``-P`` is rejected there); they are set
  with ``--op update --params scsi_id=..,scsi_sn=..`` right after creation.
- ``--op delete --mode system`` makes tgtd exit within ~1 ms, but tgtadm itself then polls the
  socket with a 100 ms sleep before returning: ``stop`` therefore starts it without waiting and
  watches the PID instead.
- ``logicalunit --op new ... --bsoflags direct`` is accepted for the rdwr backing store, on
  block devices and on regular files (verified on ext4 in the lab); ``show`` then prints
  ``Backing store flags: direct``.
- When the portal address cannot be bound (VIP absent, ``ip_nonlocal_bind=0``) tgtd silently
  falls back to listening on ``0.0.0.0:3260`` and ``[::]:3260``; ``start`` checks the portal list.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from adapters.runner import CommandResult, Runner
from reconciler.core.errors import AdapterError, TerminalError, TransientError
from reconciler.core.observed import TargetObs
from reconciler.core.spec import Lun, Resource, Target

NOT_RUNNING_RC = 107  # ENOTCONN: nothing listens on the control socket
ISCSI_PORT = 3260

# ---------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class TgtLun:
    """One logical unit as ``tgtadm --mode target --op show`` prints it (LUN 0 is the
    controller tgt creates by itself)."""

    lun: int
    type: str = ""
    scsi_id: str = ""
    scsi_sn: str = ""
    size: str = ""
    online: bool | None = None
    readonly: bool | None = None
    backing_store_type: str = ""
    backing_store_path: str | None = None
    backing_store_flags: str = ""


@dataclass(frozen=True, slots=True)
class TgtConnection:
    cid: int
    address: str


@dataclass(frozen=True, slots=True)
class TgtSession:
    """An I_T nexus: one logged-in initiator session (``alias`` None when tgt prints
    ``alias: none``)."""

    nexus: int
    initiator: str
    alias: str | None = None
    connections: tuple[TgtConnection, ...] = ()


@dataclass(frozen=True, slots=True)
class TgtAccount:
    user: str
    outgoing: bool = False


@dataclass(frozen=True, slots=True)
class TgtTarget:
    tid: int
    iqn: str
    driver: str = ""
    state: str = ""
    sessions: tuple[TgtSession, ...] = ()
    luns: tuple[TgtLun, ...] = ()
    accounts: tuple[TgtAccount, ...] = ()
    acls: tuple[str, ...] = ()

    def lun(self, number: int) -> TgtLun | None:
        for item in self.luns:
            if item.lun == number:
                return item
        return None

    @property
    def data_luns(self) -> tuple[TgtLun, ...]:
        """The LUNs other than tgt's own controller LUN 0."""
        return tuple(x for x in self.luns if x.lun != 0 and x.type != "controller")


@dataclass(frozen=True, slots=True)
class TgtShow:
    """Parsed ``tgtadm --lld iscsi --mode target --op show``. ``problems`` lists every line or
    structure the parser did not understand; a non-empty list means "do not trust this"."""

    targets: tuple[TgtTarget, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def target(self, tid: int) -> TgtTarget | None:
        for t in self.targets:
            if t.tid == tid:
                return t
        return None

    def by_iqn(self, iqn: str) -> TgtTarget | None:
        for t in self.targets:
            if t.iqn == iqn:
                return t
        return None


@dataclass(frozen=True, slots=True)
class TgtSystem:
    """Parsed ``tgtadm --mode sys --op show`` (only what the adapter needs)."""

    state: str | None = None
    llds: tuple[tuple[str, str], ...] = ()
    problems: tuple[str, ...] = ()


_SECTIONS = {
    "System information": "system",
    "I_T nexus information": "nexus",
    "LUN information": "lun",
    "Account information": "account",
    "ACL information": "acl",
}
_TARGET_RE = re.compile(r"^Target ([0-9]{1,9}): (\S+)$", re.ASCII)
_KV_RE = re.compile(r"^([A-Za-z][A-Za-z0-9 _/-]{0,40}):(?: (.*))?$", re.ASCII)
_INT_RE = re.compile(r"^[0-9]{1,9}$", re.ASCII)
_BOOLS = {"Yes": True, "No": False}
_LUN_FIELDS = {
    "Type": "type",
    "SCSI ID": "scsi_id",
    "SCSI SN": "scsi_sn",
    "Size": "size",
    "Backing store type": "backing_store_type",
    "Backing store path": "backing_store_path",
    "Backing store": "backing_store_path",  # tgt < 1.0: "Backing store: /dev/x"
    "Backing store flags": "backing_store_flags",
}
_LUN_REQUIRED = ("Type", "SCSI ID", "SCSI SN")


@dataclass
class _LunBuild:
    lun: int
    seen: set[str] = field(default_factory=set)
    fields: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool | None] = field(default_factory=dict)

    def freeze(self) -> TgtLun:
        path = self.fields.get("backing_store_path")
        if path in ("None", "No backing store", ""):
            path = None
        return TgtLun(
            lun=self.lun,
            type=self.fields.get("type", ""),
            scsi_id=self.fields.get("scsi_id", ""),
            scsi_sn=self.fields.get("scsi_sn", ""),
            size=self.fields.get("size", ""),
            online=self.flags.get("Online"),
            readonly=self.flags.get("Readonly"),
            backing_store_type=self.fields.get("backing_store_type", ""),
            backing_store_path=path,
            backing_store_flags=self.fields.get("backing_store_flags", ""),
        )


@dataclass
class _SessionBuild:
    nexus: int
    initiator: str = ""
    alias: str | None = None
    connections: list[TgtConnection] = field(default_factory=list)
    pending_cid: int | None = None

    def freeze(self) -> TgtSession:
        return TgtSession(self.nexus, self.initiator, self.alias, tuple(self.connections))


@dataclass
class _TargetBuild:
    tid: int
    iqn: str
    driver: str = ""
    state: str = ""
    sections: set[str] = field(default_factory=set)
    sessions: list[_SessionBuild] = field(default_factory=list)
    luns: list[_LunBuild] = field(default_factory=list)
    accounts: list[TgtAccount] = field(default_factory=list)
    acls: list[str] = field(default_factory=list)

    def freeze(self) -> TgtTarget:
        return TgtTarget(
            tid=self.tid,
            iqn=self.iqn,
            driver=self.driver,
            state=self.state,
            sessions=tuple(s.freeze() for s in self.sessions),
            luns=tuple(x.freeze() for x in self.luns),
            accounts=tuple(self.accounts),
            acls=tuple(self.acls),
        )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


_NAME_RE = re.compile(r"^(iqn|eui|naa)\.\S+$", re.ASCII)


def _acl_entry_ok(entry: str) -> bool:
    """tgt ACL entries are ALL, an IPv4/IPv6 address or network, or an initiator name."""
    if entry == "ALL" or _NAME_RE.match(entry):
        return True
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def parse_tgtadm_show(text: str) -> TgtShow:
    """Parse ``tgtadm --lld iscsi --mode target --op show``.

    Total function: never raises. The structure is fixed by tgt's ``tgtadm.c``: ``Target N:
    IQN`` at column 0, the five section headers at 4, items at 8, item fields at 12 (16 for a
    connection's address). Lines that fit nowhere, targets missing a section and LUNs missing
    Type/SCSI ID/SCSI SN are reported in ``problems`` (this is how truncated output shows up).
    Empty text is a valid "no targets".
    """
    problems: list[str] = []
    targets: list[_TargetBuild] = []
    cur: _TargetBuild | None = None
    section: str | None = None
    lun: _LunBuild | None = None
    sess: _SessionBuild | None = None

    def bad(lineno: int, why: str, line: str) -> None:
        if len(problems) < 20:
            problems.append(f"line {lineno}: {why}: {line[:80]!r}")

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line:
            continue
        depth = _indent(line)
        body = line.strip()
        if depth == 0:
            m = _TARGET_RE.match(line)
            if not m:
                bad(lineno, "expected 'Target N: IQN'", line)
                cur = None
                continue
            cur = _TargetBuild(tid=int(m.group(1)), iqn=m.group(2))
            targets.append(cur)
            section, lun, sess = None, None, None
            continue
        if cur is None:
            bad(lineno, "text outside a target", line)
            continue
        if depth == 4:
            if body.endswith(":") and body[:-1] in _SECTIONS:
                section = _SECTIONS[body[:-1]]
                cur.sections.add(section)
                lun, sess = None, None
            else:
                bad(lineno, "unknown section", line)
                section = None
            continue
        if section is None:
            bad(lineno, "field outside a section", line)
            continue
        if section in ("account", "acl"):
            if depth != 8:
                bad(lineno, f"unexpected indentation in {section} list", line)
            elif section == "acl":
                if not _acl_entry_ok(body):
                    bad(lineno, "not an ACL entry (ALL, address, network or name)", line)
                cur.acls.append(body)
            elif body.endswith(" (outgoing)"):
                cur.accounts.append(TgtAccount(body[: -len(" (outgoing)")], outgoing=True))
            else:
                cur.accounts.append(TgtAccount(body))
            continue
        m = _KV_RE.match(body)
        if not m:
            bad(lineno, "expected 'Key: value'", line)
            continue
        key, value = m.group(1), (m.group(2) or "").strip()
        if section == "system":
            if depth != 8:
                bad(lineno, "unexpected indentation", line)
            elif key == "Driver":
                cur.driver = value
            elif key in ("State", "Status"):
                cur.state = value
            continue
        if section == "lun":
            if depth == 8 and key == "LUN" and _INT_RE.match(value):
                lun = _LunBuild(int(value))
                cur.luns.append(lun)
            elif depth == 12 and lun is not None:
                lun.seen.add(key)
                if key in _LUN_FIELDS:
                    lun.fields[_LUN_FIELDS[key]] = value
                elif value in _BOOLS:
                    lun.flags[key] = _BOOLS[value]
            else:
                bad(lineno, "unexpected line in LUN information", line)
            continue
        # section == "nexus"
        if depth == 8 and key == "I_T nexus" and _INT_RE.match(value):
            sess = _SessionBuild(int(value))
            cur.sessions.append(sess)
        elif depth == 12 and sess is not None and key == "Initiator":
            name, _, alias = value.partition(" alias: ")
            sess.initiator = name.strip()
            sess.alias = None if alias.strip() in ("", "none") else alias.strip()
        elif depth == 12 and sess is not None and key == "Connection" and _INT_RE.match(value):
            sess.pending_cid = int(value)
        elif depth == 16 and sess is not None and key == "IP Address":
            sess.connections.append(TgtConnection(sess.pending_cid or 0, value))
        elif depth not in (12, 16) or sess is None:
            bad(lineno, "unexpected line in I_T nexus information", line)
        # other fields of a session (newer tgt versions) are ignored

    for t in targets:
        missing = [name for name, key in _SECTIONS.items() if key not in t.sections]
        if missing:
            problems.append(f"target {t.tid}: missing section(s) {', '.join(missing)}")
        for item in t.luns:
            absent = [k for k in _LUN_REQUIRED if k not in item.seen]
            if absent:
                problems.append(f"target {t.tid} LUN {item.lun}: missing {', '.join(absent)}")
        for s in t.sessions:
            if not s.initiator:
                problems.append(f"target {t.tid} I_T nexus {s.nexus}: no initiator")
    tids = [t.tid for t in targets]
    if len(set(tids)) != len(tids):
        problems.append("duplicate target ids")
    return TgtShow(targets=tuple(t.freeze() for t in targets), problems=tuple(problems))


def parse_tgtadm_sys(text: str) -> TgtSystem:
    """Parse ``tgtadm --mode sys --op show``: the system State and the LLD states. Total."""
    state: str | None = None
    llds: list[tuple[str, str]] = []
    block = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if _indent(line) == 0:
            block = line.strip()
            continue
        m = _KV_RE.match(line.strip())
        if not m:
            continue
        if block == "System:" and m.group(1) == "State":
            state = (m.group(2) or "").strip() or None
        elif block == "LLDs:":
            llds.append((m.group(1), (m.group(2) or "").strip()))
    problems = () if state else ("no 'System: State:' line",)
    return TgtSystem(state=state, llds=tuple(llds), problems=problems)


def parse_tgtadm_portals(text: str) -> tuple[str, ...]:
    """Parse ``tgtadm --lld iscsi --mode portal --op show`` into ``ADDR:PORT`` strings (the
    ``,TPGT`` suffix dropped). Total; lines that are not portals are ignored."""
    out: list[str] = []
    for raw in text.splitlines():
        m = re.match(r"^Portal: (\S+?)(?:,[0-9]+)?$", raw.strip(), re.ASCII)
        if m:
            out.append(m.group(1))
    return tuple(out)


# ---------------------------------------------------------------------------------- adapter


class _Process(Protocol):
    """What the adapter needs of a spawned process (``subprocess.Popen`` satisfies it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; tgtd appends ".<port>"


class TgtAdapter:
    """``TargetAdapter`` backed by one tgtd this adapter starts and stops.

    ``backing_for`` maps a resource to the path tgt exports (default: ``Resource.device``, the
    DRBD device ``/dev/drbdN`` unless the spec's ``devicePath`` names a stand-in file).
    ``direct_io`` (default on) creates LUNs with ``--bsoflags direct``: tgt's rdwr backing store
    then opens the device with O_DIRECT, so a write the initiator saw acknowledged has reached
    DRBD (and, with protocol C, the peer) and is never only in this node's page cache when it
    fails over. It is applied when a LUN is created; an existing LUN is not re-created for it.
    ``timings`` keeps the duration of the last start/export/stop (seconds) for measurements.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        control_dir: str,
        portal: str | None = None,
        log_path: str | None = None,
        backing_for: Callable[[Resource], str] | None = None,
        direct_io: bool = True,
        host: ProcessHost | None = None,
        start_timeout: float = 5.0,
        stop_timeout: float = 1.0,
        poll_interval: float = 0.002,
        observe_timeout: float = 5.0,
    ) -> None:
        self.runner = runner
        self.control_dir = os.path.abspath(control_dir)
        self.socket = os.path.join(self.control_dir, "socket")
        if len(self.socket) + 6 > _SOCKET_PATH_MAX:
            raise ValueError(f"control_dir {control_dir!r} is too long for a unix socket path")
        self.pid_file = os.path.join(self.control_dir, "tgtd.pid")
        self.log_path = log_path or os.path.join(self.control_dir, "tgtd.log")
        self.portal = _normalise_portal(portal) if portal else None
        self.backing_for = backing_for or (lambda resource: resource.device)
        self.direct_io = direct_io
        self.host: ProcessHost = host or LocalProcessHost()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.observe_timeout = observe_timeout
        self.env = {"TGT_IPC_SOCKET": self.socket}
        self.timings: dict[str, float] = {}
        self._proc: _Process | None = None
        # (tid, iqn) of a target start() has just defined on a tgtd it had just started: it
        # has no LUN, so the export that follows needs no `target show`. Any other call
        # forgets it.
        self._just_defined: tuple[int, str] | None = None
        # The last observe() found nothing answering on our socket: the start() that follows
        # in the same tick skips asking again (if something else started meanwhile, our spawn
        # fails and the next tick sees it). Any other call forgets it.
        self._seen_down = False

    # ------------------------------------------------------------------ commands
    def _adm(
        self, args: Sequence[str], *, check: bool = True, timeout: float | None = None
    ) -> CommandResult:
        """``tgtadm`` on this adapter's socket; exit 107 (no daemon) is transient."""
        return self.runner.run(
            ["tgtadm", *args],
            env=self.env,
            check=check,
            timeout=timeout,
            transient_codes=(NOT_RUNNING_RC,),
        )

    def _iscsi(
        self, mode: str, op: str, *args: str, check: bool = True, timeout: float | None = None
    ) -> CommandResult:
        """``tgtadm --lld iscsi --mode MODE --op OP ARGS...``."""
        argv = ["--lld", "iscsi", "--mode", mode, "--op", op, *args]
        return self._adm(argv, check=check, timeout=timeout)

    def _sys(
        self, op: str, *args: str, check: bool = True, timeout: float | None = None
    ) -> CommandResult:
        """``tgtadm --mode sys --op OP ARGS...`` (system-wide, no LLD)."""
        return self._adm(["--mode", "sys", "--op", op, *args], check=check, timeout=timeout)

    def _show(self) -> TgtShow:
        """Current targets; raises when tgtd does not answer or prints something unreadable."""
        res = self._iscsi("target", "show")
        show = parse_tgtadm_show(res.stdout)
        if not show.ok:
            raise TransientError(
                "unreadable tgtadm target show output: " + "; ".join(show.problems[:3]),
                command=res.argv,
                output=res.stdout[:2000],
            )
        return show

    # ------------------------------------------------------------------ observe
    def observe(self, target: Target) -> TargetObs:
        """Never raises. ``running``: tgtd answers on our socket and its system State is
        ``ready``. ``exported_luns``: data LUNs of ``target`` (same tid and IQN, target State
        ready) whose SCSI ID/SN match the spec (LUNs the spec does not list are reported too)."""
        self._reap()
        self._just_defined = None
        self._seen_down = False
        quick = self.observe_timeout
        try:
            sys_res = self._sys("show", check=False, timeout=quick)
            if sys_res.rc == NOT_RUNNING_RC:
                self._seen_down = True
                return TargetObs(running=False)
            if not sys_res.ok:
                return TargetObs(running=None, error=_err("tgtadm sys show", sys_res))
            state = parse_tgtadm_sys(sys_res.stdout).state
            if state is None:
                return TargetObs(running=None, error="unreadable tgtadm sys show output")
            if state != "ready":
                why = f"tgtd answers but its State is {state!r} (an interrupted stop?)"
                return TargetObs(running=False, error=why)
            res = self._iscsi("target", "show", check=False, timeout=quick)
        except AdapterError as exc:
            return TargetObs(running=None, error=str(exc))
        if res.rc == NOT_RUNNING_RC:
            return TargetObs(running=False)
        if not res.ok:
            return TargetObs(running=None, error=_err("tgtadm target show", res))
        show = parse_tgtadm_show(res.stdout)
        if not show.ok:
            why = "unreadable tgtadm target show output: " + "; ".join(show.problems[:3])
            return TargetObs(running=None, error=why)
        return _target_obs(show, target)

    # ------------------------------------------------------------------ start
    def start(self, target: Target) -> None:
        """tgtd running (started if needed), system State ready, target ``tid``/``iqn``
        defined and State ready, ACLs exactly ``target.initiators``. Idempotent."""
        began = time.monotonic()
        self._just_defined = None
        tid = str(target.tid)
        verify = self._ensure_daemon(
            first=("--mode", "target", "--op", "new", "--tid", tid, "-T", target.iqn)
        )
        fresh = verify is not None
        try:
            self._define(target, fresh)
        except BaseException:
            if verify is not None:
                with contextlib.suppress(Exception):
                    verify()
            raise
        if verify is not None:
            try:
                verify()
            except BaseException:
                self._just_defined = None
                raise
        self.timings["start"] = time.monotonic() - began

    def _define(self, target: Target, fresh: bool) -> None:
        """Target defined with State ready and the spec's ACLs; ``fresh``: on a tgtd just
        started whose first request defined it."""
        tid = str(target.tid)
        if fresh:
            self._just_defined = (target.tid, target.iqn)
            self._sync_acls(target, ())
            return
        show = self._show()
        current = show.target(target.tid)
        if current is None:
            other = show.by_iqn(target.iqn)
            if other is not None:
                raise TerminalError(
                    f"{target.iqn} is already defined as tid {other.tid}, not {target.tid}"
                )
            self._iscsi("target", "new", "--tid", tid, "-T", target.iqn)
            acls: tuple[str, ...] = ()
        elif current.iqn != target.iqn:
            raise TerminalError(f"tid {target.tid} carries {current.iqn}, expected {target.iqn}")
        else:
            acls = current.acls
            if current.state and current.state != "ready":
                self._iscsi("target", "update", "--tid", tid, "--name", "state", "--value", "ready")
        self._sync_acls(target, acls)

    def _sync_acls(self, target: Target, current: Sequence[str]) -> None:
        """Bind what is missing first, then unbind what the spec does not list."""
        wanted = list(dict.fromkeys(target.initiators))
        tid = str(target.tid)
        for item in wanted:
            if item not in current:
                self._iscsi("target", "bind", "--tid", tid, *_acl_option(item))
        for item in current:
            if item not in wanted:
                self._iscsi("target", "unbind", "--tid", tid, *_acl_option(item))

    def _ensure_daemon(self, first: Sequence[str] = ()) -> Callable[[], None] | None:
        """Make our tgtd answer with State ready. None when it already ran, else the portal
        check of the one just started, whose first request was ``first`` (see
        ``_spawn_daemon``)."""
        seen_down, self._seen_down = self._seen_down, False
        stale = self._recorded_pid()
        if not (seen_down and stale is None):
            res = self._sys("show", check=False)
            if res.ok:
                if parse_tgtadm_sys(res.stdout).state == "offline":
                    self._sys("update", "--name", "State", "-v", "ready")
                return None
            if res.rc != NOT_RUNNING_RC:
                raise TransientError(_err("tgtadm sys show", res), command=res.argv)
        # Nothing answers on our socket: a recorded tgtd that is still alive is wedged.
        if stale is not None:
            self._kill_and_wait(stale)
        return self._spawn_daemon(first)

    def _spawn_daemon(self, first: Sequence[str] = ()) -> Callable[[], None]:
        """Start ``tgtd -f``, record its PID and wait (bounded) until it answers. ``first``
        (``tgtadm --lld iscsi`` arguments) is the first request and doubles as the readiness
        probe (a new tgtd answers within milliseconds: no separate `sys show` round). Returns the
        check that it listens on the configured portal: the question runs while the caller
        goes on, and the check raises (after killing that tgtd) when it does not."""
        self.host.make_dir(self.control_dir)
        argv = ["tgtd", "-f"]
        if self.portal:
            argv += ["--iscsi", f"portal={self.portal}"]
        proc = self.runner.spawn(argv, env=self.env, log_path=self.log_path)
        self._proc = proc
        self.host.write_file(self.pid_file, f"{proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._forget_pid(proc.pid)
                raise TerminalError(
                    f"tgtd exited with code {code} while starting: {self._log_tail()}",
                    command=tuple(argv),
                )
            if first:
                res = self._adm(["--lld", "iscsi", *first], check=False, timeout=1.0)
            else:
                res = self._sys("show", check=False, timeout=1.0)
            if res.ok:
                break
            if res.rc != NOT_RUNNING_RC:
                self._kill_and_wait(proc.pid)
                raise TerminalError(_err("tgtadm " + " ".join(first[:4]), res), command=res.argv)
            if time.monotonic() > deadline:
                self._kill_and_wait(proc.pid)
                raise TransientError(
                    f"tgtd did not answer on {self.socket} within {self.start_timeout:g}s",
                    command=tuple(argv),
                )
            time.sleep(self.poll_interval)
        if not self.portal:
            return _no_check
        portal, pid = self.portal, proc.pid
        box: dict[str, Any] = {}

        def ask() -> None:
            try:
                box["portals"] = parse_tgtadm_portals(self._iscsi("portal", "show").stdout)
            except BaseException as exc:  # handed to verify(), in the caller's thread
                box["error"] = exc

        asking = threading.Thread(target=ask, name="tgt-portal-check", daemon=True)
        asking.start()

        def verify() -> None:
            asking.join()
            if "error" in box:
                self._kill_and_wait(pid)
                raise box["error"]
            portals = box["portals"]
            if portal not in portals:
                self._kill_and_wait(pid)
                raise TerminalError(
                    f"tgtd could not bind portal {portal} (it listens on "
                    f"{', '.join(portals) or 'nothing'}); add the address first or set "
                    "net.ipv4.ip_nonlocal_bind=1"
                )

        return verify

    # ------------------------------------------------------------------ LUNs
    def export_lun(self, target: Target, lun: Lun, resource: Resource) -> None:
        """LUN ``lun.lun`` of the target backed by ``backing_for(resource)`` with the spec's
        SCSI ID/SN. A LUN with another backing store is replaced. Idempotent.

        tgt cannot take the IDs at creation, so a new LUN shows tgt's default IDs for the few
        milliseconds until the update; export before the VIP comes up."""
        began = time.monotonic()
        path = self.backing_for(resource)
        just_defined, self._just_defined = self._just_defined, None
        have: TgtLun | None = None
        if just_defined != (target.tid, target.iqn):
            current = self._show().target(target.tid)
            if current is None or current.iqn != target.iqn:
                raise TerminalError(
                    f"target {target.tid} ({target.iqn}) is not defined; start() first"
                )
            have = current.lun(lun.lun)
        where = ("--tid", str(target.tid), "--lun", str(lun.lun))
        if have is not None and have.backing_store_path != path:
            self._iscsi("logicalunit", "delete", *where)
            have = None
        if have is None:
            flags = ("--bsoflags", "direct") if self.direct_io else ()
            self._iscsi("logicalunit", "new", *where, "-b", path, *flags)
        if have is None or (have.scsi_id, have.scsi_sn) != (lun.scsi_id, lun.scsi_sn):
            params = f"scsi_id={lun.scsi_id},scsi_sn={lun.scsi_sn}"
            self._iscsi("logicalunit", "update", *where, "--params", params)
        self.timings["export"] = time.monotonic() - began

    def unexport_lun(self, target: Target, lun: Lun) -> None:
        """Remove the LUN (sessions stay; initiators get LOGICAL UNIT NOT SUPPORTED).
        Idempotent: nothing to do when tgtd, the target or the LUN is absent."""
        self._just_defined = None
        self._seen_down = False
        res = self._iscsi("target", "show", check=False)
        if res.rc == NOT_RUNNING_RC:
            return
        if not res.ok:
            raise TransientError(_err("tgtadm target show", res), command=res.argv)
        show = parse_tgtadm_show(res.stdout)
        current = show.target(target.tid)
        if current is None or current.iqn != target.iqn or current.lun(lun.lun) is None:
            if not show.ok:
                raise TransientError(
                    "unreadable tgtadm target show output", output=res.stdout[:2000]
                )
            return
        self._iscsi("logicalunit", "delete", "--tid", str(target.tid), "--lun", str(lun.lun))

    # ------------------------------------------------------------------ stop
    def stop(self, target: Target) -> None:
        """Stop fast and surely; afterwards no tgtd of ours runs (else ``TerminalError``).

        Order: system State offline (no new logins), ``delete --force`` every target (drops
        sessions, closes backing stores), ``delete --mode system`` started without waiting,
        watch the PID for ``stop_timeout``, SIGKILL as the last resort, or at once when tgt
        refused to delete a target (see ``_orderly_shutdown``). Idempotent."""
        self._just_defined = None
        self._seen_down = False
        began = time.monotonic()
        pid = self._known_pid()
        killer: _Process | None = None
        kill_now = False
        # A hung or vanished daemon raises here: the PID wait and SIGKILL below still apply.
        with contextlib.suppress(AdapterError):
            killer, kill_now = self._orderly_shutdown(target)
        try:
            if pid is not None and (kill_now or not self._wait_exit(pid, killer)):
                self._kill_and_wait(pid)
            elif pid is None and killer is not None:
                # tgtd of unknown PID: tgtadm returns once the socket stops answering.
                with contextlib.suppress(Exception):
                    killer.wait(timeout=self.stop_timeout + 1.0)
        finally:
            if killer is not None:
                if killer.poll() is None:
                    killer.kill()  # it only sleeps in its 100 ms "is tgtd gone?" poll
                # Bounded: a handle that never reports its exit must not hang the stop.
                with contextlib.suppress(Exception):
                    killer.wait(timeout=2.0)
        if pid is not None and self.host.alive(pid):
            raise TerminalError(f"tgtd pid {pid} survived SIGKILL")
        if pid is not None:
            self._forget_pid(pid)
        self.timings["stop"] = time.monotonic() - began

    def _wait_exit(self, pid: int, killer: _Process | None) -> bool:
        """Wait up to ``stop_timeout`` for tgtd to exit after ``delete --mode system``; give
        up at once when that tgtadm failed (tgtd refused to shut down: a target came back or
        is still being torn down), instead of waiting out the timeout with sessions alive."""
        deadline = time.monotonic() + self.stop_timeout
        while not self._wait_gone(pid, 0.0):
            code = killer.poll() if killer is not None else None
            if (code is not None and code != 0) or time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def _orderly_shutdown(self, target: Target) -> tuple[_Process | None, bool]:
        """Offline, force-delete every target, then start ``delete --mode system`` without
        waiting for it. Returns that tgtadm process (None when no daemon answered) and whether
        to SIGKILL at once instead of waiting for the daemon to exit.

        tgt refuses ``delete --force`` while a LUN has commands in flight ("this logical unit
        is still active", exit 22; seen in the lab under continuous client reads), and then
        refuses ``delete --mode system`` too: waiting ``stop_timeout`` would only keep the
        sessions serving for that long (measured: every such stop took 1.0 s). Killing is
        safe there: a command in flight has not been acknowledged to the initiator, which
        retries it on the new primary; acknowledged writes are on the device (direct I/O)."""
        quick = 2.0
        res = self._sys("update", "--name", "State", "-v", "offline", check=False, timeout=quick)
        if not res.ok:
            return None, False  # 107: no daemon answers; anything else: the PID path decides
        shown = self._iscsi("target", "show", check=False, timeout=quick)
        tids = {t.tid for t in parse_tgtadm_show(shown.stdout).targets} | {target.tid}
        for tid in sorted(tids):
            deleted = self._iscsi(
                "target", "delete", "--force", "--tid", str(tid), check=False, timeout=quick
            )
            if not deleted.ok and "can't find the target" not in deleted.stderr:
                return None, True
        killer = self.runner.spawn(["tgtadm", "--op", "delete", "--mode", "system"], env=self.env)
        return killer, False

    # ------------------------------------------------------------------ PIDs
    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def _known_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        self._reap()
        return self._recorded_pid()

    def _recorded_pid(self) -> int | None:
        """The PID in the pid file if it is alive and is a tgtd on our socket."""
        text = self.host.read_file(self.pid_file)
        try:
            pid = int((text or "").strip())
        except ValueError:
            return None
        return pid if self._is_our_tgtd(pid) else None

    def _is_our_tgtd(self, pid: int) -> bool:
        return self.host.is_process(pid, "tgtd", f"TGT_IPC_SOCKET={self.socket}")

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    self._proc = None
                    return True
            elif not self.host.alive(pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def _kill_and_wait(self, pid: int) -> None:
        self.host.kill(pid)
        self._wait_gone(pid, 2.0)
        self._forget_pid(pid)

    def _forget_pid(self, pid: int) -> None:
        if (self.host.read_file(self.pid_file) or "").strip() == str(pid):
            self.host.remove_file(self.pid_file)

    def _log_tail(self) -> str:
        return self.host.tail(self.log_path, 600) or "(no log)"


# ---------------------------------------------------------------------------------- hosts


class ProcessHost(Protocol):
    """The node's files and processes as the adapter needs them (see the module docstring).

    Queries never raise for a missing file or process (``read_file`` -> None, ``alive`` ->
    False); ``make_dir``/``write_file`` raise ``TerminalError``/``TransientError`` when they
    fail; ``kill`` of a process that is gone is not an error."""

    def make_dir(self, path: str) -> None:
        """Create ``path`` (mode 0700, parents too) unless it exists."""
        ...

    def read_file(self, path: str) -> str | None: ...

    def write_file(self, path: str, text: str) -> None:
        """Atomically: readers see the old or the new content, never a part."""
        ...

    def remove_file(self, path: str) -> None: ...

    def alive(self, pid: int) -> bool:
        """``pid`` exists and is not a zombie."""
        ...

    def is_process(self, pid: int, comm: str, env_entry: str) -> bool:
        """``pid`` is alive, named ``comm``, and has ``env_entry`` (``K=V``) in its environment."""
        ...

    def kill(self, pid: int) -> None:
        """SIGKILL ``pid``."""
        ...

    def tail(self, path: str, size: int) -> str:
        """The last ``size`` bytes of ``path`` as text ("" when unreadable)."""
        ...


class LocalProcessHost:
    """Direct OS calls: the agent shares the node's file system and PID namespace."""

    def make_dir(self, path: str) -> None:
        try:
            Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise TerminalError(f"cannot create {path}: {exc.strerror or exc}") from exc

    def read_file(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def write_file(self, path: str, text: str) -> None:
        try:
            _write_atomic(path, text)
        except OSError as exc:
            raise TerminalError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def remove_file(self, path: str) -> None:
        with contextlib.suppress(OSError):
            Path(path).unlink()

    def alive(self, pid: int) -> bool:
        return _alive(pid)

    def is_process(self, pid: int, comm: str, env_entry: str) -> bool:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != comm:
                return False
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return env_entry.encode() in environ and _alive(pid)

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def tail(self, path: str, size: int) -> str:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - size))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""


class CommandProcessHost:
    """The same operations as commands on the node through the runner (``mkdir``, ``cat``,
    ``mv``, ``rm``, ``kill``, ``tail`` and ``/proc`` reads), for a node reached remotely.
    Transport failures propagate as the runner's ``TransientError``."""

    def __init__(self, runner: Runner, *, timeout: float = 5.0) -> None:
        self.runner = runner
        self.timeout = timeout

    def _run(self, argv: Sequence[str], *, stdin: str | None = None) -> CommandResult:
        return self.runner.run(argv, check=False, timeout=self.timeout, stdin=stdin)

    def make_dir(self, path: str) -> None:
        res = self._run(["mkdir", "-p", "-m", "0700", path])
        if not res.ok:
            raise TerminalError(_err(f"mkdir {path}", res), command=res.argv)

    def read_file(self, path: str) -> str | None:
        res = self._run(["cat", path])
        return res.stdout if res.ok else None

    def write_file(self, path: str, text: str) -> None:
        script = 'cat > "$1.tmp" && mv -f "$1.tmp" "$1"'
        res = self._run(["sh", "-c", script, "sh", path], stdin=text)
        if not res.ok:
            raise TerminalError(_err(f"writing {path}", res), command=res.argv)

    def remove_file(self, path: str) -> None:
        self._run(["rm", "-f", path])

    def alive(self, pid: int) -> bool:
        res = self._run(["cat", f"/proc/{int(pid)}/stat"])
        return res.ok and _stat_alive(res.stdout)

    def is_process(self, pid: int, comm: str, env_entry: str) -> bool:
        comm_res = self._run(["cat", f"/proc/{int(pid)}/comm"])
        if not comm_res.ok or comm_res.stdout.strip() != comm:
            return False
        env_res = self._run(["cat", f"/proc/{int(pid)}/environ"])
        return env_res.ok and env_entry in env_res.stdout.split("\0") and self.alive(pid)

    def kill(self, pid: int) -> None:
        self._run(["kill", "-9", str(int(pid))])

    def tail(self, path: str, size: int) -> str:
        res = self._run(["tail", "-c", str(int(size)), path])
        return res.stdout.strip() if res.ok else ""


# ---------------------------------------------------------------------------------- helpers


def _target_obs(show: TgtShow, target: Target) -> TargetObs:
    """Map a parsed show to the observation of ``target`` (see ``TgtAdapter.observe``)."""
    current = show.target(target.tid)
    if current is None:
        # tgtd answers but our target is not there: a start interrupted before `target new`
        # (agent killed), or a target deleted by hand. Not "running": the primary starts it
        # again (start is idempotent), a secondary stops this tgtd.
        return TargetObs(
            running=False, error=f"tgtd runs without target {target.tid} (an interrupted start?)"
        )
    if set(current.acls) != set(target.initiators):
        return TargetObs(
            running=False,
            error=(
                f"target {target.tid} allows {', '.join(current.acls) or 'no initiator'}, the "
                f"spec says {', '.join(target.initiators)} (an interrupted start?)"
            ),
        )
    if current.iqn != target.iqn:
        why = f"tid {target.tid} carries {current.iqn}, expected {target.iqn}"
        return TargetObs(running=True, error=why)
    if current.state and current.state != "ready":
        return TargetObs(running=True, error=f"target {target.tid} State is {current.state!r}")
    spec = {x.lun: x for x in target.luns}
    exported: set[int] = set()
    wrong: list[str] = []
    for item in current.data_luns:
        want = spec.get(item.lun)
        if want is None or (item.scsi_id, item.scsi_sn) == (want.scsi_id, want.scsi_sn):
            exported.add(item.lun)
        else:
            wrong.append(f"LUN {item.lun} has SCSI ID/SN {item.scsi_id}/{item.scsi_sn}")
    return TargetObs(
        running=True, exported_luns=frozenset(exported), error="; ".join(wrong) or None
    )


def _acl_option(item: str) -> list[str]:
    """tgtadm wants initiator names with -Q (--initiator-name), addresses and ALL with -I."""
    if re.match(r"^(iqn|eui|naa)\.", item):
        return ["-Q", item]
    return ["-I", item]


def _normalise_portal(portal: str) -> str:
    """``IP`` or ``IP:PORT`` -> ``IP:PORT`` (the spelling ``portal show`` prints)."""
    host, sep, port = portal.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return portal
    return f"{portal}:{ISCSI_PORT}"


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return _stat_alive(stat)


def _stat_alive(stat: str) -> bool:
    """``/proc/PID/stat`` text of a process that is not a zombie."""
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], [])


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def _err(what: str, res: CommandResult) -> str:
    return f"{what} exited {res.rc}: {(res.stderr or res.stdout).strip()[:300]}"


def _no_check() -> None:
    return None
