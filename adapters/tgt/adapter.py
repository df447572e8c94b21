"""The tgt (scsi-target-utils, ``tgtd``/``tgtadm``) iSCSI target adapter.

Invariants:

- Every command goes through the injected ``Runner`` (the product's only command seam); this
  module never spawns a process itself. The node's files and process table (control directory,
  PID file, log, ``/proc``, SIGKILL) are reached through a ``ProcessHost``
  (``adapters.tgt.process``).
- Each adapter owns one tgtd with its own control socket ``<control_dir>/socket`` (tgtd and every
  tgtadm get ``TGT_IPC_SOCKET``; tgtd appends ``.0``). Network namespaces do not isolate path-based
  unix sockets, so two adapters on one machine must use two control directories; a second tgtd
  on a busy socket exits with "another tgtd is using ...lock".
- tgtd is *resident* on both nodes: ``start_daemon`` (the planner's ``start-daemon``) starts it
  with no target defined on a node that does not serve, ``start`` defines the target in it
  (starting tgtd only when it is down), ``stop`` deletes the target with its sessions
  (``--force``) and leaves tgtd running; a tgtd that cannot delete the target at once is
  SIGKILLed (the target must be gone quickly). "Serving" is the target defined, not tgtd
  running: ``TargetObs.running`` is the target, ``TargetObs.daemon`` the daemon.
- tgtd runs in the foreground (``tgtd -f``) started by ``Runner.spawn``: the PID is known
  exactly, recorded in ``<control_dir>/tgtd.pid`` (on the node), and reaped through the handle.
  A watcher thread waits on that handle: when tgtd dies it drops the listing below and calls
  ``wakeup.notify("tgtd exited")``, and the next ``observe`` reports the daemon down without a
  process. A tgtd this adapter did not start (the agent restarted) is found through the PID
  file (``/proc``, no process with the local ``ProcessHost``). ``control_dir`` is a path on the
  node.
- The observation cache (the informer pattern: a complete listing is the state of the
  stream, and the stream here is this adapter's own actions plus tgtd's exit): ``observe``
  answers from the last full ``tgtadm --op show --mode target`` (plus ``portal show`` when a
  portal is configured), re-listed when it is older than ``resync`` seconds, after every action
  of this adapter (each one drops it, before and after), and whenever the handle says tgtd
  exited or was started. It is still level-based: every tick gets a complete observation, of
  a listing no older than ``resync`` that nothing this adapter did has changed since; nothing
  else on the node defines targets on this adapter's private control socket, and what
  someone does by hand with ``tgtadm`` on it is seen at the next re-list. A re-list that fails
  is ``running=None`` (unknown), never an answer from the older listing. An idle tick spawns
  no process.
- ``observe`` never raises: daemon down or not answering -> ``daemon=False``, ``running=False``;
  unreadable or truncated output -> ``running=None`` with ``error``. A LUN counts as exported only
  when its SCSI ID and SN are the spec's (a LUN with default IDs would show initiators a
  different disk).
- Actions are idempotent by observation (show first, then change only what differs) and raise
  only ``TransientError``/``TerminalError``. No action carries a belief into the next and none
  reads the cache: ``start`` asks tgtd whether it runs even right after ``observe`` found it
  absent, and ``export_lun`` shows the target even right after ``start`` defined it (the only
  thing kept between calls for actions is the handle of the tgtd child, a resource, see
  ``_proc``).
- Parsing is ``adapters.tgt.parse`` (pure and total).
- CHAP (``target.chap``, secrets read by ``adapters.tgt.chap``): accounts are bound before the
  ACL admits anyone, and compared by user name only (tgtadm shows no password); a target with
  other accounts observes as not running, like one with other ACLs. A password reaches tgtadm
  in argv only (tgtadm has no other way) and never an error this adapter raises.
- What this adapter created is kept in its ``Inventory`` (targets tid+IQN, LUNs): recorded
  after a successful ``target new`` / ``logicalunit new``, dropped after a successful delete
  or ``stop`` (the daemon's targets go with it). ``leftovers`` names only inventory entries the
  spec no longer declares; ``unexport_old_lun``/``delete_old_target`` remove them, and never a
  target whose IQN is not the recorded one.

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
- tgtd takes its portal at start only. With a portal configured, the re-list asks for the
  portal list too (one more ``tgtadm`` call) and reports a tgtd listening elsewhere (the VIP's
  address was changed in the spec) as a daemon down (``daemon=False`` with the reason); ``start``
  and ``start_daemon`` then restart it on the portal.
- ``target --op delete --force`` of a target with sessions drops them and returns within
  milliseconds; with commands in flight on a LUN it fails ("this logical unit is still
  active"): ``stop`` then SIGKILLs tgtd.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from adapters.inventory import FileInventory
from adapters.redact import REDACTED, redact
from adapters.runner import CommandResult, Process, Runner
from adapters.tgt.chap import ChapSecrets
from adapters.tgt.parse import (
    TgtAccount,
    TgtShow,
    parse_tgtadm_portals,
    parse_tgtadm_show,
    parse_tgtadm_sys,
)
from adapters.tgt.process import LocalProcessHost, ProcessHost, failure_text
from adapters.wake import Wakeup
from reconciler.core.errors import AdapterError, TerminalError, TransientError
from reconciler.core.observed import Leftovers, TargetObs
from reconciler.core.spec import Lun, Resource, Target

NOT_RUNNING_RC = 107  # ENOTCONN: nothing listens on the control socket
ISCSI_PORT = 3260

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; tgtd appends ".<port>"


@dataclass(frozen=True, slots=True)
class _Listing:
    """One full listing of our tgtd: ``show`` None when nothing answered on the socket;
    ``elsewhere``: why tgtd does not listen on the portal (None: it does, or no portal);
    ``taken``: the clock when the re-list began; ``generation``: tgtd's starts and exits seen
    through the handle until then."""

    show: TgtShow | None
    elsewhere: str | None
    taken: float
    generation: int


class TgtAdapter:
    """``TargetAdapter`` backed by one tgtd this adapter starts and stops.

    ``backing_for`` maps a resource to the path tgt exports (default: ``Resource.device``, the
    DRBD device ``/dev/drbdN`` unless the spec's ``devicePath`` names a stand-in file).
    ``direct_io`` (default on) creates LUNs with ``--bsoflags direct``: tgt's rdwr backing store
    then opens the device with O_DIRECT, so a write the initiator saw acknowledged has reached
    DRBD (and, with protocol C, the peer) and is never only in this node's page cache when it
    fails over. It is applied when a LUN is created; an existing LUN is not re-created for it.
    ``timings`` keeps the duration of the last start/export/stop (seconds) for measurements.
    ``resync``: the longest a target listing is used for ``observe`` (the spec's
    ``timings.resync``); ``wakeup``: notified from the watcher thread when tgtd exits;
    ``clock``: monotonic seconds (tests move it instead of sleeping).
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
        chap: ChapSecrets | None = None,
        inventory: FileInventory | None = None,
        resync: float = 30.0,
        wakeup: Wakeup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.inventory = FileInventory() if inventory is None else inventory
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
        self.chap = chap
        self.timings: dict[str, float] = {}
        # The handle of the tgtd child this adapter spawned: a resource it owns (to reap it
        # and to know its PID exactly), not a belief about the world. No call trusts it for a
        # decision: every action asks tgtd (or the node's /proc and PID file) afresh, so a
        # restarted agent or a `--once` run decides the same way without it.
        self._proc: Process | None = None
        self.resync = resync
        self.wakeup = wakeup
        self.clock = clock
        # The observation cache (see the module docstring); ``_generation`` counts tgtd starts
        # and exits seen through the handle: a listing of another generation is not used.
        self._lock = threading.Lock()
        self._listing: _Listing | None = None
        self._generation = 0
        self._killing: set[int] = set()  # PIDs this adapter kills itself: no wake for them
        self._closed = False

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
        """Never raises; spawns no process while the listing is fresh (see the module
        docstring). ``daemon``: tgtd runs and answers on our socket (False: down, or alive but
        not answering, or listening elsewhere than the portal). ``running``: the target
        ``tid``/``iqn`` is defined with the spec's ACLs and accounts. ``exported_luns``: its
        data LUNs (target State ready) whose SCSI ID/SN match the spec (LUNs the spec does not
        list are reported too)."""
        alive = self._daemon_alive()
        if alive is False:
            return TargetObs(running=False, daemon=False)
        listing = self._current_listing()
        if isinstance(listing, str):
            return TargetObs(running=None, daemon=alive, error=listing)
        if listing.show is None:
            if alive:
                why = f"tgtd pid {self._known_pid()} runs but does not answer on {self.socket}"
                return TargetObs(running=False, daemon=False, error=why)
            return TargetObs(running=False, daemon=False)
        if listing.elsewhere is not None:
            return TargetObs(running=False, daemon=False, error=listing.elsewhere)
        try:
            accounts = self._wanted_accounts(target)
        except TerminalError as exc:
            return TargetObs(running=None, daemon=True, error=str(exc))
        return _target_obs(listing.show, target, accounts)

    def _daemon_alive(self) -> bool | None:
        """What the node's process table says, with no process spawned (the local host):
        True for our live tgtd child or a live tgtd of the PID file, False when our child
        exited or the recorded PID is no tgtd of ours any more, None when no tgtd is known
        (no PID file: the re-list asks the socket, and a tgtd found there that way has its
        death seen at the next re-list only)."""
        proc = self._proc
        if proc is not None:
            # While the watcher thread sits in waitpid, Popen.poll() answers None even for a
            # tgtd that just died (it cannot take the wait lock): the node's /proc says it
            # (a zombie or gone), with no process spawned, when the host is this machine.
            if proc.poll() is None and (
                not isinstance(self.host, LocalProcessHost) or self.host.alive(proc.pid)
            ):
                return True
            self._proc = None
            self._forget_pid(proc.pid)
            with self._lock:
                self._generation += 1
                self._listing = None
            return False
        text = self.host.read_file(self.pid_file)
        if text is None:
            return None
        try:
            pid = int(text.strip())
        except ValueError:
            return None
        if self._is_our_tgtd(pid):
            return True
        # The recorded tgtd died (or the PID is someone else's now): down, and the listing
        # (taken while it ran) is of no use any more.
        self._forget_pid(pid)
        self.invalidate()
        return False

    def _current_listing(self) -> _Listing | str:
        """The cached listing if it is fresh, else a re-list (cached when it succeeds); a
        failed re-list is its reason (unknown), never the older listing."""
        now = self.clock()
        with self._lock:
            cached, generation = self._listing, self._generation
        if (
            cached is not None
            and cached.generation == generation
            and now - cached.taken < self.resync
        ):
            return cached
        listing = self._relist(now, generation)
        if isinstance(listing, _Listing):
            with self._lock:
                if self._generation == generation:  # tgtd did not start or exit meanwhile
                    self._listing = listing
        return listing

    def _relist(self, now: float, generation: int) -> _Listing | str:
        """``target show`` (and ``portal show`` with a portal): one full listing."""
        quick = self.observe_timeout
        try:
            res = self._iscsi("target", "show", check=False, timeout=quick)
        except AdapterError as exc:
            return str(exc)
        if res.rc == NOT_RUNNING_RC:
            return _Listing(show=None, elsewhere=None, taken=now, generation=generation)
        if not res.ok:
            return failure_text("tgtadm target show", res)
        show = parse_tgtadm_show(res.stdout)
        if not show.ok:
            return "unreadable tgtadm target show output: " + "; ".join(show.problems[:3])
        elsewhere = self._listens_elsewhere(timeout=quick)
        return _Listing(show=show, elsewhere=elsewhere, taken=now, generation=generation)

    def invalidate(self) -> None:
        """Drop the listing: the next ``observe`` re-lists (every action calls it)."""
        with self._lock:
            self._listing = None

    @contextlib.contextmanager
    def _acting(self) -> Iterator[None]:
        """An action changes what tgtd shows: no listing from before or during it is used."""
        self.invalidate()
        try:
            yield
        finally:
            self.invalidate()

    def _listens_elsewhere(self, *, timeout: float | None = None) -> str | None:
        """Why our running tgtd does not listen on the configured portal, or None (it does,
        no portal is configured, or the question could not be answered: that is observed
        again at the next tick)."""
        if not self.portal:
            return None
        try:
            res = self._iscsi("portal", "show", check=False, timeout=timeout)
        except AdapterError:
            return None
        if not res.ok:
            return None
        portals = parse_tgtadm_portals(res.stdout)
        if self.portal in portals:
            return None
        listening = ", ".join(portals) or "nothing"
        return f"tgtd listens on {listening}, not on the portal {self.portal}: restart it there"

    # ------------------------------------------------------------------ start
    def start(self, target: Target) -> None:
        """tgtd running (started only if it is down: it is resident), system State ready,
        target ``tid``/``iqn`` defined and State ready, CHAP accounts bound as the spec's
        ``chap`` says, ACLs exactly ``target.initiators``. Idempotent.

        On a resident tgtd (the takeover case) the first request is ``target new`` itself:
        "already exists" means it is defined, and the show-and-compare path takes over."""
        with self._acting():
            began = time.monotonic()
            self._start(target)
            self.timings["start"] = time.monotonic() - began

    def _start(self, target: Target) -> None:
        new = ("--mode", "target", "--op", "new", "--tid", str(target.tid), "-T", target.iqn)
        fresh = self._define_on_resident(target, new)
        verify: Callable[[], None] | None = None
        if fresh is None:  # no usable resident tgtd: start one
            verify = self._ensure_daemon(first=new)
            fresh = verify is not None
            if fresh:  # the new tgtd's first request defined the target
                self.inventory.change("drop_all_targets")
                self.inventory.change("add_target", target.tid, target.iqn)
            else:  # a tgtd answers after all (started meanwhile by another agent run)
                fresh = self._target_new(target, new)
        try:
            self._define(target, fresh)
        except BaseException:
            if verify is not None:
                with contextlib.suppress(Exception):
                    verify()
            raise
        if verify is not None:
            verify()

    def _define_on_resident(self, target: Target, new: Sequence[str]) -> bool | None:
        """The takeover on the resident tgtd: ``target new`` with, beside it (concurrently,
        each a ``tgtadm``), whether tgtd answers in State ready (``sys show``; offline is set
        ready) and listens on the portal. True: defined now; False: it was defined already;
        None: no usable resident tgtd (none answers, or it listened elsewhere and was stopped):
        the caller starts one."""
        sys_res, elsewhere, res = _concurrently(
            lambda: self._sys("show", check=False),
            self._listens_elsewhere,
            lambda: self._adm(["--lld", "iscsi", *new], check=False),
        )
        if elsewhere is not None:
            self._stop_daemon(target)  # tgtd binds its portal at start only: start it there
            return None
        if NOT_RUNNING_RC in (sys_res.rc, res.rc):
            return None
        if not sys_res.ok:
            raise TransientError(failure_text("tgtadm sys show", sys_res), command=sys_res.argv)
        if parse_tgtadm_sys(sys_res.stdout).state == "offline":
            self._sys("update", "--name", "State", "-v", "ready")
        return self._target_new(target, new, res)

    def _target_new(
        self, target: Target, new: Sequence[str], res: CommandResult | None = None
    ) -> bool:
        """``target new`` (or its result ``res``): True when it defined the target, False when
        it already existed; raises otherwise."""
        if res is None:
            res = self._adm(["--lld", "iscsi", *new], check=False)
        if res.ok:
            self.inventory.change("add_target", target.tid, target.iqn)
            return True
        if "already exists" in res.stderr:
            return False
        error = TransientError if res.rc == NOT_RUNNING_RC else TerminalError
        raise error(failure_text("tgtadm target new", res), command=res.argv)

    def start_daemon(self) -> None:
        """The resident tgtd running and answering on the portal, with the targets it has
        (none when it was down: a new tgtd starts empty). Idempotent: a tgtd that answers
        (State offline is set ready) is kept; one listening elsewhere than the portal is
        stopped and started there."""
        with self._acting():
            began = time.monotonic()
            if self._listens_elsewhere() is not None:
                self._stop_daemon(None)
            verify = self._ensure_daemon()
            if verify is not None:
                self.inventory.change("drop_all_targets")
                verify()
            self.timings["start_daemon"] = time.monotonic() - began

    def _define(self, target: Target, fresh: bool) -> None:
        """Target defined with State ready and the spec's ACLs; ``fresh``: ``target new`` just
        defined it (on a tgtd just started, or on the resident one)."""
        tid = str(target.tid)
        # Accounts before ACLs: until an ACL admits initiators nobody can log in, so a target
        # that requires CHAP never accepts a login without it, not even while it is set up.
        if fresh:
            self._sync_accounts(target, ())
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
            self.inventory.change("add_target", target.tid, target.iqn)
            acls: tuple[str, ...] = ()
            accounts: tuple[TgtAccount, ...] = ()
        elif current.iqn != target.iqn:
            raise TerminalError(f"tid {target.tid} carries {current.iqn}, expected {target.iqn}")
        else:
            acls, accounts = current.acls, current.accounts
            if current.state and current.state != "ready":
                self._iscsi("target", "update", "--tid", tid, "--name", "state", "--value", "ready")
        self._sync_accounts(target, accounts)
        self._sync_acls(target, acls)

    def _wanted_accounts(self, target: Target) -> frozenset[tuple[str, bool]]:
        """(user, outgoing) pairs the target should have bound: none without ``chap``."""
        if target.chap is None:
            return frozenset()
        if self.chap is None:
            raise TerminalError(
                f"the spec requires CHAP on target {target.tid} but no secrets were loaded "
                f"from {target.chap.secrets_file}"
            )
        return self.chap.accounts

    def _sync_accounts(self, target: Target, current: Sequence[TgtAccount]) -> None:
        """Bind the spec's accounts, each (re)created with the secrets file's password, then
        unbind the others: a target that required CHAP never stops requiring it on the way
        from one account to another. tgt allows one outgoing account per target, so an
        outgoing account to replace is unbound first (the initiators' check of the target,
        not the target's check of them, lapses for that moment).

        tgtadm shows no passwords: an account already bound under the right name is kept as
        it is (a password changed in the file is applied when the account is next created:
        docs/operations.md)."""
        wanted = self._wanted_accounts(target)
        have = {(a.user, a.outgoing) for a in current}
        tid = str(target.tid)
        for user, outgoing in sorted(have - wanted, key=lambda a: not a[1]):
            if outgoing:
                self._iscsi("account", "unbind", "--tid", tid, "--user", user, "--outgoing")
        for user, outgoing in sorted(wanted - have):
            assert self.chap is not None  # wanted is empty without secrets
            password = self.chap.mutual_password if outgoing else self.chap.password
            assert password is not None
            self._create_account(user, password)
            extra = ("--outgoing",) if outgoing else ()
            self._iscsi("account", "bind", "--tid", tid, "--user", user, *extra)
        for user, outgoing in sorted(have - wanted):
            if not outgoing:
                self._iscsi("account", "unbind", "--tid", tid, "--user", user)

    def _create_account(self, user: str, password: str) -> None:
        """The tgt account ``user`` with ``password``, replacing one of that name (its password
        may be an old one). tgtadm takes the password only in argv: the process is visible in
        /proc for its few milliseconds. Its errors never carry the password: message, command
        and output are redacted, and the runner's error (whose cause holds the whole argv) is
        not chained."""
        self._iscsi("account", "delete", "--user", user, check=False)
        try:
            self._iscsi("account", "new", "--user", user, "--password", password)
        except AdapterError as exc:
            raise type(exc)(
                redact(str(exc)).replace(password, REDACTED),
                command=tuple(REDACTED if a == password else a for a in exc.command),
                output=redact(exc.output).replace(password, REDACTED),
            ) from None

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
        ``_spawn_daemon``). It asks tgtd itself rather than trusting an earlier observation:
        a tgtd started meanwhile (another agent run on the same state directory) is used."""
        stale = self._recorded_pid()
        res = self._sys("show", check=False)
        if res.ok:
            if parse_tgtadm_sys(res.stdout).state == "offline":
                self._sys("update", "--name", "State", "-v", "ready")
            return None
        if res.rc != NOT_RUNNING_RC:
            raise TransientError(failure_text("tgtadm sys show", res), command=res.argv)
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
        with self._lock:
            self._generation += 1
            self._listing = None
            self._killing.discard(proc.pid)  # a recycled PID: this tgtd's exit must wake
        self._watch(proc)
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
                raise TerminalError(
                    failure_text("tgtadm " + " ".join(first[:4]), res), command=res.argv
                )
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
        with self._acting():
            self._export_lun(target, lun, resource)

    def _export_lun(self, target: Target, lun: Lun, resource: Resource) -> None:
        began = time.monotonic()
        path = self.backing_for(resource)
        current = self._show().target(target.tid)
        if current is None or current.iqn != target.iqn:
            raise TerminalError(f"target {target.tid} ({target.iqn}) is not defined; start() first")
        have = current.lun(lun.lun)
        where = ("--tid", str(target.tid), "--lun", str(lun.lun))
        if have is not None and have.backing_store_path != path:
            self._iscsi("logicalunit", "delete", *where)
            have = None
        if have is None:
            flags = ("--bsoflags", "direct") if self.direct_io else ()
            self._iscsi("logicalunit", "new", *where, "-b", path, *flags)
            self.inventory.change("add_lun", target.tid, lun.lun)
        if have is None or (have.scsi_id, have.scsi_sn) != (lun.scsi_id, lun.scsi_sn):
            params = f"scsi_id={lun.scsi_id},scsi_sn={lun.scsi_sn}"
            self._iscsi("logicalunit", "update", *where, "--params", params)
        self.timings["export"] = time.monotonic() - began

    def unexport_lun(self, target: Target, lun: Lun) -> None:
        """Remove the LUN (sessions stay; initiators get LOGICAL UNIT NOT SUPPORTED).
        Idempotent: nothing to do when tgtd, the target or the LUN is absent."""
        self.unexport_old_lun(target.tid, target.iqn, lun.lun)

    def unexport_old_lun(self, tid: int, iqn: str, lun: int) -> None:
        """Remove LUN ``lun`` of target ``tid`` when that target carries ``iqn``; drop it from
        the inventory. Idempotent (see ``unexport_lun``)."""
        with self._acting():
            self._unexport_old_lun(tid, iqn, lun)

    def _unexport_old_lun(self, tid: int, iqn: str, lun: int) -> None:
        res = self._iscsi("target", "show", check=False)
        if res.rc == NOT_RUNNING_RC:
            self.inventory.change("drop_all_targets")
            return
        if not res.ok:
            raise TransientError(failure_text("tgtadm target show", res), command=res.argv)
        show = parse_tgtadm_show(res.stdout)
        current = show.target(tid)
        if current is None or current.iqn != iqn or current.lun(lun) is None:
            if not show.ok:
                raise TransientError(
                    "unreadable tgtadm target show output", output=res.stdout[:2000]
                )
            self.inventory.change("drop_lun", tid, lun)
            return
        self._iscsi("logicalunit", "delete", "--tid", str(tid), "--lun", str(lun))
        self.inventory.change("drop_lun", tid, lun)

    def delete_old_target(self, tid: int, iqn: str) -> None:
        """Delete target ``tid`` (``--force``: its sessions drop) when it carries ``iqn``, the
        IQN this adapter recorded; a tid now carrying another IQN is left alone. Drops the entry
        from the inventory. Idempotent: nothing to do when tgtd or the target is absent."""
        with self._acting():
            self._delete_old_target(tid, iqn)

    def _delete_old_target(self, tid: int, iqn: str) -> None:
        res = self._iscsi("target", "show", check=False)
        if res.rc == NOT_RUNNING_RC:
            self.inventory.change("drop_all_targets")
            return
        if not res.ok:
            raise TransientError(failure_text("tgtadm target show", res), command=res.argv)
        show = parse_tgtadm_show(res.stdout)
        if not show.ok:
            raise TransientError("unreadable tgtadm target show output", output=res.stdout[:2000])
        current = show.target(tid)
        if current is not None and current.iqn == iqn:
            self._iscsi("target", "delete", "--force", "--tid", str(tid))
        self.inventory.change("drop_target", tid)

    def leftovers(self, target: Target) -> Leftovers:
        """Targets and LUNs this adapter created that ``target`` no longer declares (no command
        runs: the inventory alone)."""
        targets, luns = self.inventory.read().target_leftovers(target)
        return Leftovers(targets=targets, luns=luns, error=self.inventory.error)

    # ------------------------------------------------------------------ stop
    def stop(self, target: Target) -> None:
        """Stop serving fast and surely: every target of our tgtd deleted with ``--force``
        (its sessions drop, its backing stores close); tgtd stays resident. When a target
        cannot be deleted at once (tgt refuses while a LUN has commands in flight), when
        tgtd does not answer or prints something unreadable, tgtd is stopped instead
        (``_stop_daemon``: SIGKILL as the last resort): afterwards no target of ours is
        defined (else ``TerminalError``). Idempotent."""
        with self._acting():
            began = time.monotonic()
            if not self._delete_targets(target):
                self._stop_daemon(target)
            self.inventory.change("drop_all_targets")
            self.timings["stop"] = time.monotonic() - began

    def _delete_targets(self, target: Target) -> bool:
        """Force-delete every target of a tgtd that answers; False when that did not work
        (the caller stops tgtd). True also when no tgtd runs at all."""
        quick = 2.0
        try:
            shown = self._iscsi("target", "show", check=False, timeout=quick)
        except AdapterError:
            return False
        if shown.rc == NOT_RUNNING_RC:
            return self._known_pid() is None  # a live tgtd that does not answer is wedged
        show = parse_tgtadm_show(shown.stdout)
        if not shown.ok or not show.ok:
            return False
        for tid in sorted({t.tid for t in show.targets}):
            try:
                deleted = self._iscsi(
                    "target", "delete", "--force", "--tid", str(tid), check=False, timeout=quick
                )
            except AdapterError:
                return False
            if not deleted.ok and "can't find the target" not in deleted.stderr:
                return False
        return True

    def stop_daemon(self, target: Target | None = None) -> None:
        """tgtd itself stopped, its targets with it (not an action the planner plans: tgtd is
        resident; for tests' clean-up and for taking a node out of service by hand)."""
        with self._acting():
            self._stop_daemon(target)

    def _stop_daemon(self, target: Target | None) -> None:
        """Stop tgtd fast and surely; afterwards no tgtd of ours runs (else ``TerminalError``).

        Order: system State offline (no new logins), ``delete --force`` every target (drops
        sessions, closes backing stores), ``delete --mode system`` started without waiting,
        watch the PID for ``stop_timeout``, SIGKILL as the last resort, or at once when tgt
        refused to delete a target (see ``_orderly_shutdown``)."""
        pid = self._known_pid()
        killer: Process | None = None
        kill_now = False
        if pid is not None:
            with self._lock:
                self._killing.add(pid)  # its exit is this stop's work, not news
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
        self.inventory.change("drop_all_targets")  # no tgtd of ours runs: its targets are gone

    def _wait_exit(self, pid: int, killer: Process | None) -> bool:
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

    def _orderly_shutdown(self, target: Target | None) -> tuple[Process | None, bool]:
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
        tids = {t.tid for t in parse_tgtadm_show(shown.stdout).targets}
        if target is not None:
            tids.add(target.tid)
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
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._proc = None
            self._forget_pid(proc.pid)
            with self._lock:
                self._generation += 1
                self._listing = None

    def _watch(self, proc: Process) -> None:
        """A thread waiting on tgtd's handle: its exit drops the listing and wakes the agent
        (``wakeup.notify("tgtd exited")``), unless this adapter killed it itself or was
        closed. The thread ends with tgtd (it holds nothing else)."""

        def wait() -> None:
            with contextlib.suppress(Exception):
                proc.wait()
            with self._lock:
                self._generation += 1
                self._listing = None
                ours = proc.pid in self._killing
                self._killing.discard(proc.pid)
            if not ours and not self._closed and self.wakeup is not None:
                self.wakeup.notify("tgtd exited")

        threading.Thread(target=wait, name=f"tgtd-watch-{proc.pid}", daemon=True).start()

    def close(self) -> None:
        """Stop waking the agent (idempotent). tgtd itself stays: it is resident, and the
        next adapter (a rebuilt one, a restarted agent) finds it through the PID file."""
        self._closed = True

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
        with self._lock:
            self._killing.add(pid)
        self.host.kill(pid)
        self._wait_gone(pid, 2.0)
        self._forget_pid(pid)

    def _forget_pid(self, pid: int) -> None:
        if (self.host.read_file(self.pid_file) or "").strip() == str(pid):
            self.host.remove_file(self.pid_file)

    def _log_tail(self) -> str:
        return self.host.tail(self.log_path, 600) or "(no log)"


# ---------------------------------------------------------------------------------- helpers


def _target_obs(
    show: TgtShow, target: Target, accounts: frozenset[tuple[str, bool]] = frozenset()
) -> TargetObs:
    """Map a parsed show to the observation of ``target`` (see ``TgtAdapter.observe``);
    ``accounts``: the (user, outgoing) pairs that should be bound (user names only: tgtadm
    never shows a password)."""
    current = show.target(target.tid)
    if current is None:
        # The resident tgtd without our target: a node that does not serve (the normal state
        # of the secondary), a start interrupted before `target new`, or a target deleted by
        # hand. The primary defines it (start is idempotent); a secondary has nothing to do.
        return TargetObs(running=False, daemon=True)
    if set(current.acls) != set(target.initiators):
        return TargetObs(
            running=False,
            daemon=True,
            error=(
                f"target {target.tid} allows {', '.join(current.acls) or 'no initiator'}, the "
                f"spec says {', '.join(target.initiators)} (an interrupted start?)"
            ),
        )
    bound = {(a.user, a.outgoing) for a in current.accounts}
    if bound != accounts:
        return TargetObs(
            running=False,
            daemon=True,
            error=(
                f"target {target.tid} has CHAP accounts {_accounts_text(bound)}, the spec "
                f"wants {_accounts_text(accounts)} (an interrupted start, or the secrets "
                "file changed?)"
            ),
        )
    if current.iqn != target.iqn:
        why = f"tid {target.tid} carries {current.iqn}, expected {target.iqn}"
        return TargetObs(running=True, daemon=True, error=why)
    if current.state and current.state != "ready":
        why = f"target {target.tid} State is {current.state!r}"
        return TargetObs(running=True, daemon=True, error=why)
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
        running=True,
        daemon=True,
        exported_luns=frozenset(exported),
        error="; ".join(wrong) or None,
    )


def _accounts_text(accounts: set[tuple[str, bool]] | frozenset[tuple[str, bool]]) -> str:
    names = [f"{u} (outgoing)" if out else u for u, out in sorted(accounts)]
    return ", ".join(names) or "none"


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


def _no_check() -> None:
    return None


_A = TypeVar("_A")
_B = TypeVar("_B")
_C = TypeVar("_C")


def _concurrently(
    first: Callable[[], _A], second: Callable[[], _B], third: Callable[[], _C]
) -> tuple[_A, _B, _C]:
    """Run the three calls at once (the first two in threads, the third here) and return
    their results; the first exception raised, in order, is re-raised after all ended."""
    boxes: list[dict[str, Any]] = [{}, {}]

    def run(call: Callable[[], Any], box: dict[str, Any]) -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    threads = [
        threading.Thread(target=run, args=(call, box), name="tgtadm-beside", daemon=True)
        for call, box in zip((first, second), boxes, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        third_value = third()
    finally:
        for thread in threads:
            thread.join()
    for box in boxes:
        if "error" in box:
            raise box["error"]
    return boxes[0]["value"], boxes[1]["value"], third_value
