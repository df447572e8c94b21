"""``EventFedDrbd``: the DRBD adapter fed by one long-running ``drbdsetup events2`` stream.

Like a Kubernetes informer feeding a controller: a reader thread folds the stream's lines into
a per-resource state (``adapters.drbd.parse.Events2State``), and ``observe`` answers from that
state instead of starting a process. Actions and the split-brain record are ``RealDrbd``'s
(the adapter delegates to one); ``observe`` stays level-based: every call returns a complete
observation of every requested resource, never a delta.

The stream. ``drbdsetup events2`` (no ``--now``: with it drbdsetup prints the current state
and exits) prints one ``exists`` line per object, then ``exists -``, then one ``create``/
``change``/``destroy`` line per change, until it is killed. It is started through the command
seam (``Runner.stream``) lazily, by the first ``observe`` (building the adapter starts nothing),
and killed by its handle by ``close()``.

Invariants:

- The cache is used only while it can be trusted: the current stream is running, has delivered
  its whole initial dump (``exists -``), has delivered nothing it could not read (garbage, a
  ``- skipped`` line, an unreadable resource), and the last full listing is younger than
  ``resync`` seconds. Otherwise the tick re-lists: one ``RealDrbd.observe`` (``drbdsetup status
  --json``, text fallback), whose result is the observation; if that fails too, every resource
  is UNKNOWN with the status error and why the stream was not used. Never a decision on old
  data: a stream that died, stalled or lied is never read again (a new stream, with its own
  fresh dump, replaces it).
- A full re-list happens at the first observe, whenever the stream is not trusted (above), at
  least every ``resync`` seconds, and on the observe right after an action of this adapter (the
  action's own event may still be on its way; the verify tick must see the action's effect).
- The periodic re-list is also a check of the stream: when it differs from the cache in a
  role, connection or disk state, the stream missed something; it is killed and replaced.
- A stream that has not delivered its dump within ``stall`` seconds is killed and replaced. A
  stream that ends (any exit code, any signal) is replaced at the next observe, at most once
  per ``restart_backoff`` seconds (doubling while streams keep failing, up to ``resync``;
  reset by a stream that delivered its dump); meanwhile every tick re-lists (polling).
- A transport that cannot stream (``Runner.stream`` raises ``TerminalError``) turns the adapter
  into ``RealDrbd`` for good: every observe re-lists.
- Each change the stream shows in a resource's role, connection or disk state (its own or the
  peer's), and the stream's end, calls ``wakeup.notify("drbd events")`` from the reader
  thread, so the watch loop ticks at once. Sync progress alone does not wake, nor does the
  change that only shows this adapter's own promote/demote (the verify tick checks it; like
  the simulated world's wake source, a node's own changes do not wake it).
- Split brain: ``call helper ... helper:split-brain`` lines are recorded as suspicions
  (``RealDrbd.mark_split_brain``) by the next observe, in the tick's thread (every record write
  happens there); the inference from StandAlone transitions is ``RealDrbd``'s, applied to the
  cache's observation exactly as to a listing.
- One DRBD state change can span several lines (a lost connection: the ``connection`` line,
  then the ``peer-device`` line with ``peer-disk:DUnknown``); a tick may read the cache
  between them, microseconds apart. Each line that changes what is observed wakes another
  tick, which then sees the whole change.
- ``close()`` is idempotent and safe from any thread; an observe after it re-lists (polling)
  without starting a stream again.
- ``disconnected_for`` (``ResourceObs``): counted from the monotonic instant this adapter
  last *knew* the connection was down with a trusted stream watching from then on: the
  stream's event that took it out of a connected state, or the stream's initial dump, or a
  full re-list (every re-list, whatever its reason: a heal hidden in a stream gap or a silent
  stall is then covered, "continuously disconnected since at least the re-list"). A connected
  state (event or listing) clears it; the instants belong to one stream (a new stream starts
  with none); with no trusted stream (polling, a dead or distrusted stream) it is None, like
  the polling adapter's: a heal between two listings is invisible.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from adapters.drbd.adapter import RealDrbd
from adapters.drbd.parse import Events2State
from adapters.runner import Process, Runner
from adapters.wake import Wakeup
from reconciler.core.errors import AdapterError, TerminalError
from reconciler.core.observed import ResourceObs, Role
from reconciler.core.spec import Resource

__all__ = ["EVENTS2", "EventFedDrbd"]

log = logging.getLogger(__name__)

EVENTS2 = ("drbdsetup", "events2")
WAKE_REASON = "drbd events"


def _essence(obs: ResourceObs) -> tuple[object, ...]:
    """What a change in wakes the agent, and what a re-list must agree on with the cache."""
    return (obs.up, obs.known, obs.role, obs.conn, obs.disk, obs.peer_role, obs.peer_disk)


_ESSENCE_ROLE = 2  # where this node's own role is in an essence


@dataclass
class _Stream:
    """One ``events2`` process and what it delivered (a new stream gets a new object, so a
    late line from a killed one never touches its successor's state)."""

    started: float
    state: Events2State = field(default_factory=Events2State)
    process: Process | None = None
    dumped: bool = False
    distrust: str | None = None  # why its state must not be used (garbage, events lost)
    ended: int | None = None  # exit code once it ended
    killed: str | None = None  # why this adapter killed it
    seen: dict[str, tuple[object, ...]] = field(default_factory=dict)
    # Per resource: the instant since which this stream knows it continuously disconnected.
    down_since: dict[str, float] = field(default_factory=dict)

    @property
    def usable(self) -> str | None:
        """None when its state may be used, else why not."""
        if self.killed is not None:
            return f"the events2 stream was stopped ({self.killed})"
        if self.ended is not None:
            return f"the events2 stream ended ({_exit(self.ended)})"
        if self.distrust is not None:
            return f"the events2 stream delivered what it could not read ({self.distrust})"
        if not self.dumped:
            return "the events2 stream has not delivered its initial state yet"
        return None


class EventFedDrbd:
    """``DrbdAdapter`` over one ``drbdsetup events2`` stream (see the module docstring).

    ``real`` does the actions and the re-lists; ``runner`` starts the stream; ``wakeup`` is
    notified on changes. ``resync``: the longest time between full listings (the spec's
    ``timings.resync``); ``stall``: how long a new stream may take to deliver its dump;
    ``clock``: monotonic seconds (a test seam)."""

    def __init__(
        self,
        runner: Runner,
        *,
        real: RealDrbd | None = None,
        wakeup: Wakeup | None = None,
        resync: float = 30.0,
        stall: float = 5.0,
        restart_backoff: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.real = RealDrbd(runner) if real is None else real
        self.wakeup = Wakeup() if wakeup is None else wakeup
        self._resync = resync
        self._stall = stall
        self._backoff_first = restart_backoff
        self._backoff = restart_backoff
        self._clock = clock
        # Reentrant: a transport may call on_end from inside kill(), or on_line from inside
        # stream(), in the calling thread.
        self._lock = threading.RLock()
        self._stream: _Stream | None = None
        self._next_start = float("-inf")
        self._last_listing: float | None = None
        self._acted = False
        self._closed = False
        self._helper_sb: set[str] = set()  # split-brain helper calls not yet recorded
        # The role this adapter's own promote/demote asked for, per resource: the event that
        # shows it does not wake the agent (its verify tick comes anyway; an immediate extra
        # tick would compete with the peer taking over for the same CPUs).
        self._own_roles: dict[str, Role] = {}
        self.polling: str | None = None  # why this adapter polls for good (cannot stream)
        self.relists = 0  # full listings so far (a figure for tests and benchmarks)

    # ---------------------------------------------------------------------------- observe

    @property
    def split_brain_suspects(self) -> frozenset[str]:
        return self.real.split_brain_suspects

    def mark_split_brain(self, name: str) -> None:
        self.real.mark_split_brain(name)

    def clear_split_brain(self, name: str) -> None:
        self.real.clear_split_brain(name)

    def observe(self, resources: Sequence[Resource]) -> tuple[ResourceObs, ...]:
        """From the stream's state when it can be trusted, else one full listing (see the
        module docstring). Never raises."""
        now = self._clock()
        with self._lock:
            before = self._stream
            was = None if before is None else before.usable
            stream = self._maintain(now)
            why = self._why_relist(stream, now)
            if why is not None and was is not None and stream is not before:
                why = f"{was}; a new one was started"
            cached = None if why is not None or stream is None else stream.state.result()
            if stream is not None and cached is not None:
                bad = [r.error for r in cached.resources.values() if not r.known]
                if cached.error is not None or bad:
                    stream.distrust = (cached.error or bad[0] or "unreadable")[:200]
                    why, cached = stream.usable, None
            periodic = why is not None and why.startswith("periodic")
            acted, self._acted = self._acted, False
            helper_sb, self._helper_sb = self._helper_sb, set()
        for name in sorted(helper_sb):
            log.warning("DRBD called its split-brain helper for %s (events2)", name)
            self.real.mark_split_brain(name)
        if cached is not None and not acted and stream is not None:
            return self._with_downtime(stream, self.real.report(cached, resources), now)
        return self._relist(
            resources, why or "an action was issued since the last listing", check=periodic
        )

    def _with_downtime(
        self, stream: _Stream | None, observed: Sequence[ResourceObs], now: float
    ) -> tuple[ResourceObs, ...]:
        """``observed`` with ``disconnected_for`` from ``stream``'s instants (see the module
        docstring); None for every resource when the stream is not trusted."""
        with self._lock:
            trusted = stream is not None and stream is self._stream and stream.usable is None
            since = dict(stream.down_since) if trusted and stream is not None else {}
        out = []
        for obs in observed:
            at = since.get(obs.name)
            gone = None if at is None or obs.conn.is_connected else max(0.0, now - at)
            out.append(obs if gone == obs.disconnected_for else replace(obs, disconnected_for=gone))
        return tuple(out)

    def _stamp(self, stream: _Stream, obs: ResourceObs, now: float, *, listing: bool) -> None:
        """Record what ``obs`` says of the connection's continuity (lock held): connected
        clears; disconnected keeps an instant this stream already knows, unless ``listing``
        (a full view taken at ``now``: the continuity restarts there)."""
        if obs.known and obs.conn.is_connected:
            stream.down_since.pop(obs.name, None)
        elif listing or obs.name not in stream.down_since:
            stream.down_since[obs.name] = now

    def _why_relist(self, stream: _Stream | None, now: float) -> str | None:
        if self.polling is not None:
            return self.polling
        if stream is None:
            return "no events2 stream runs"
        if (why := stream.usable) is not None:
            return why
        if self._last_listing is None or now - self._last_listing >= self._resync:
            return f"periodic re-list (every {self._resync:g}s)"
        return None

    def _relist(
        self, resources: Sequence[Resource], why: str, *, check: bool = False
    ) -> tuple[ResourceObs, ...]:
        """One full listing; with ``check`` (the periodic one), also a check of the stream."""
        log.debug("DRBD full listing: %s", why)
        listed = self.real.observe(resources)
        with self._lock:
            self.relists += 1
            self._last_listing = listed_at = self._clock()
            stream = self._stream
            check = check and stream is not None and stream.usable is None
            cached = stream.state.result() if check and stream is not None else None
        if cached is not None and stream is not None:
            self._compare(stream, cached.resources, listed)
        with self._lock:
            if stream is not None and stream is self._stream:
                for obs in listed:
                    # An event that came in during the listing is newer than the listing.
                    newer = stream.state.resource(obs.name) if stream.dumped else None
                    if newer is not None:
                        self._stamp(stream, newer, listed_at, listing=True)
                    elif obs.known:
                        self._stamp(stream, obs, listed_at, listing=True)
        return self._with_downtime(
            stream,
            [
                obs
                if obs.known
                else ResourceObs.unknown(obs.name, f"{obs.error} (events2 not used: {why})")
                for obs in listed
            ],
            listed_at,
        )

    def _compare(
        self, stream: _Stream, cached: dict[str, ResourceObs], listed: Sequence[ResourceObs]
    ) -> None:
        """A trusted stream whose state disagrees with a fresh listing missed something."""
        for obs in listed:
            if not obs.known:
                continue  # the listing failed: nothing to learn about the stream
            mine = cached.get(obs.name)
            if (mine is None and obs.up) or (mine is not None and _essence(mine) != _essence(obs)):
                log.warning(
                    "the DRBD events2 stream missed a change of %s (listed %s, streamed %s): "
                    "replacing it",
                    obs.name,
                    obs,
                    mine,
                )
                with self._lock:
                    if stream is self._stream:
                        self._kill(stream, "it missed a change a listing showed")
                        self._next_start = float("-inf")
                return

    # ---------------------------------------------------------------------------- stream

    def _maintain(self, now: float) -> _Stream | None:
        """Kill a stream that stalled or lied, start one when none runs (lazily, with
        backoff); called with the lock held. The stream that is current afterwards."""
        stream = self._stream
        if stream is not None and stream.killed is None and stream.ended is None:
            if not stream.dumped and now - stream.started > self._stall:
                self._kill(stream, f"no initial state within {self._stall:g}s")
            elif stream.distrust is not None:
                self._kill(stream, stream.distrust)
        if self._closed or self.polling is not None:
            return stream
        if stream is not None and stream.killed is None and stream.ended is None:
            return stream
        if now < self._next_start:
            return stream
        if stream is not None:  # it failed: the next one waits longer if it fails too
            self._next_start = now + self._backoff
            self._backoff = min(self._backoff * 2, max(self._resync, self._backoff_first))
        return self._start(now)

    def _start(self, now: float) -> _Stream | None:
        stream = _Stream(started=now)
        self._stream = stream  # before it runs: its first lines may come before the handle
        try:
            stream.process = self.runner.stream(
                list(EVENTS2),
                on_line=lambda line: self._on_line(stream, line),
                on_end=lambda rc: self._on_end(stream, rc),
            )
        except TerminalError as exc:
            self.polling = f"cannot stream DRBD events ({exc}); polling drbdsetup status"
            log.warning("%s", self.polling)
            self._stream = None
            return None
        except AdapterError as exc:
            log.warning("cannot start the DRBD events2 stream: %s", exc)
            self._stream = None
            self._next_start = now + self._backoff
            return None
        if stream.killed is not None and stream.process is not None:
            stream.process.kill()  # closed or distrusted while it was starting
        return stream

    def _kill(self, stream: _Stream, why: str) -> None:
        """Called with the lock held."""
        if stream.killed is None and stream.ended is None:
            log.info("stopping the DRBD events2 stream: %s", why)
            stream.killed = why
            if stream.process is not None:
                stream.process.kill()

    def _on_line(self, stream: _Stream, line: str) -> None:
        wake = False
        with self._lock:
            if stream is not self._stream or stream.killed is not None:
                return
            what = stream.state.apply(line)
            if what.kind == "end-of-dump":
                stream.dumped = True
                self._backoff = self._backoff_first
                dumped = stream.state.result().resources
                stream.seen = {name: _essence(obs) for name, obs in dumped.items()}
                at = self._clock()
                for obs in dumped.values():  # the stream's own listing
                    self._stamp(stream, obs, at, listing=True)
            elif what.kind == "garbage":
                stream.distrust = stream.distrust or what.why or "unreadable line"
                wake = True
            elif what.kind == "lost":
                stream.distrust = stream.distrust or "events were lost (- skipped)"
                wake = True
            elif what.kind == "helper" and what.helper == "split-brain" and what.name:
                self._helper_sb.add(what.name)
                wake = True
            elif what.kind == "event" and what.name and stream.dumped:
                now = stream.state.resource(what.name)
                if now is None:
                    stream.down_since.setdefault(what.name, self._clock())  # destroyed
                else:
                    self._stamp(stream, now, self._clock(), listing=False)
                essence = None if now is None else _essence(now)
                before = stream.seen.get(what.name)
                if before != essence:
                    if essence is None:
                        stream.seen.pop(what.name, None)
                    else:
                        stream.seen[what.name] = essence
                    wake = not self._own_role_change(what.name, before, essence)
            if wake:  # under the lock: whoever sees the new state sees the wake too
                self.wakeup.notify(WAKE_REASON)

    def _own_role_change(
        self, name: str, before: tuple[object, ...] | None, after: tuple[object, ...] | None
    ) -> bool:
        """True for the change that only shows this adapter's own promote/demote (which
        is then no longer expected). Called with the lock held."""
        expected = self._own_roles.get(name)
        if expected is None or before is None or after is None:
            return False
        role = _ESSENCE_ROLE
        only_role = all(
            b == a for i, (b, a) in enumerate(zip(before, after, strict=True)) if i != role
        )
        if only_role and after[role] is expected:
            del self._own_roles[name]
            return True
        return False

    def _on_end(self, stream: _Stream, rc: int) -> None:
        with self._lock:
            stream.ended = rc
            current = stream is self._stream and stream.killed is None and not self._closed
        if current:
            log.warning("the DRBD events2 stream ended (%s)", _exit(rc))
            self.wakeup.notify(WAKE_REASON)

    def close(self) -> None:
        """Kill the stream (by its handle); idempotent."""
        with self._lock:
            self._closed = True
            if self._stream is not None:
                self._kill(self._stream, "the adapter was closed")

    @property
    def streaming(self) -> bool:
        """True while a stream runs whose state this adapter would use."""
        with self._lock:
            return self._stream is not None and self._stream.usable is None

    def streamed(self, name: str) -> ResourceObs | None:
        """What the current stream shows of resource ``name`` (without split-brain
        tracking), or None when no usable stream shows it."""
        with self._lock:
            stream = self._stream
            if stream is None or stream.usable is not None:
                return None
            return stream.state.resource(name)

    @property
    def process(self) -> Process | None:
        """The current stream's handle (tests kill it to show what a dead stream does)."""
        with self._lock:
            return None if self._stream is None else self._stream.process

    # ---------------------------------------------------------------------------- actions

    def _acting(self, name: str | None = None, role: Role | None = None) -> None:
        with self._lock:
            self._acted = True
            if name is not None and role is not None:
                self._own_roles[name] = role

    def up(self, resource: Resource) -> None:
        self._acting()
        self.real.up(resource)

    def primary(self, resource: Resource, *, force: bool = False) -> None:
        self._acting(resource.name, Role.PRIMARY)
        self.real.primary(resource, force=force)

    def secondary(self, resource: Resource) -> None:
        self._acting(resource.name, Role.SECONDARY)
        self.real.secondary(resource)

    def connect(self, resource: Resource, *, discard_my_data: bool = False) -> None:
        self._acting()
        self.real.connect(resource, discard_my_data=discard_my_data)

    def disconnect(self, resource: Resource) -> None:
        self._acting()
        self.real.disconnect(resource)


def _exit(rc: int) -> str:
    return f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
