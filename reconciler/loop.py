"""The watch loop (``reconcile --watch``): tick, then wait for the next reason to tick.

Like an operator's work queue, a tick comes
- at once when a wake source changes (pool.conf, the operator's choices, the simulated world:
  ``NodeAdapters.wake``), polled every ``timings.wakePoll`` seconds;
- after ``timings.blockedRetry`` when a safety rule refused a change the node wants (typically
  "the peer is still Primary" in the middle of a planned swap), doubling while the same refusal
  persists, up to the tick interval;
- after ``timings.verifyAfter`` when the tick applied actions: the next tick checks what they
  did and refreshes the status record (doubling while ticks keep acting, so a plan that
  never converges cannot spin the agent);
- else after the tick interval (the periodic resync that catches what no wake source shows).

Under ``--watch`` the spec file is a wake source too (``spec_watch``): a valid edit is taken
at the start of the next tick (the adapters rebuilt when what they are built from changed); an
invalid one keeps the last good spec (``reconciler.specfile.SpecWatch``).

Waking early never changes a decision: every tick observes everything afresh.
Invariants: the loop never raises out of a tick (``tick`` does not raise); it ends after the
current tick once ``stop`` is set, never in the middle of one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from adapters.base import NodeAdapters, WakeSource
from reconciler.agent import TickReport, tick
from reconciler.core.spec import StorageCluster
from reconciler.executor import RetryPolicy
from reconciler.specfile import SpecWatch


@dataclass(frozen=True, slots=True)
class Pace:
    """How long the loop waits between ticks (seconds)."""

    interval: float
    wake_poll: float
    blocked_retry: float
    verify_after: float | None = None  # None: no early tick after an acting one

    @classmethod
    def from_spec(cls, spec: StorageCluster, interval: float | None = None) -> Pace:
        t = spec.spec.timings
        every = t.tick_interval if interval is None else interval
        return cls(
            interval=every,
            wake_poll=t.wake_poll,
            blocked_retry=min(t.blocked_retry, every),
            verify_after=min(t.verify_after, every),
        )

    def delay(self, blocked_streak: int, acting_streak: int = 0) -> float:
        """The wait after a tick; ``blocked_streak`` counts consecutive ticks refused the same
        way (0: the last tick was not blocked), ``acting_streak`` consecutive ticks that
        applied actions (0: the last one applied none)."""
        if acting_streak > 0 and self.verify_after is not None:
            return _backoff(self.verify_after, acting_streak, self.interval)
        if blocked_streak <= 0:
            return self.interval
        return _backoff(self.blocked_retry, blocked_streak, self.interval)


def _backoff(first: float, streak: int, ceiling: float) -> float:
    return min(ceiling, first * float(2 ** min(streak - 1, 30)))


class Watcher:
    """Remembers the wake sources' fingerprints and says when one changed."""

    def __init__(self, sources: Sequence[WakeSource]) -> None:
        self.sources = tuple(sources)
        self._seen: list[object] = []
        self.woken_by: str | None = None

    def remember(self) -> None:
        self._seen = [_fingerprint(s) for s in self.sources]

    def changed(self) -> bool:
        for i, source in enumerate(self.sources):
            now = _fingerprint(source)
            if i < len(self._seen) and now != self._seen[i]:
                self.woken_by = source.name
                return True
        return False


def _fingerprint(source: WakeSource) -> object:
    try:
        return source.fingerprint()
    except Exception as exc:  # a wake source must not stop the agent; the tick observes anyway
        return ("failed", type(exc).__name__)


def wait_for_next(
    watcher: Watcher,
    stop: threading.Event,
    delay: float,
    poll: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Block until a wake source changes, ``delay`` passes or ``stop`` is set; say which."""
    deadline = clock() + delay
    watcher.woken_by = None
    while not stop.is_set():
        if watcher.sources and poll > 0 and watcher.changed():
            return f"wake:{watcher.woken_by}"
        left = deadline - clock()
        if left <= 0:
            return "timer"
        stop.wait(min(poll, left) if watcher.sources and poll > 0 else left)
    return "stop"


TickObserver = Callable[[TickReport], None]
"""Something told about every completed tick (the --watch printer, status record, alerts,
event history, log, systemd notifier; metrics can be one more)."""


def each(observers: Sequence[TickObserver]) -> TickObserver:
    """One ``on_report`` for ``run`` that tells every observer, in order. An observer's
    exception is the caller's bug and ends the loop, as ``on_report``'s does."""
    chain = tuple(observers)

    def tell(report: TickReport) -> None:
        for observer in chain:
            observer(report)

    return tell


def run(
    spec: StorageCluster,
    adapters: NodeAdapters,
    *,
    stop: threading.Event,
    on_report: Callable[[TickReport], None],
    pace: Pace | None = None,
    retry: RetryPolicy | None = None,
    spec_watch: SpecWatch | None = None,
    rebuild: Callable[[StorageCluster], NodeAdapters] | None = None,
    on_spec: Callable[[StorageCluster], None] | None = None,
) -> None:
    """Tick until ``stop`` is set. ``on_report`` gets every tick's report (print, status
    record, alerts); an exception from it is the caller's bug and ends the loop.

    ``spec_watch``: reload the spec file before each tick; ``rebuild`` makes the adapters for
    a new spec whose adapter settings changed; ``on_spec`` is told of every spec taken."""
    pace = pace or Pace.from_spec(spec)
    extra: tuple[WakeSource, ...] = (spec_watch.wake,) if spec_watch is not None else ()
    watcher = Watcher(adapters.wake + extra)
    streak = 0
    acting = 0
    last_blocked: tuple[object, ...] = ()
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="observe") as pool:
        while not stop.is_set():
            # Fingerprints are taken *before* the tick: a change during the tick (the peer
            # demoting while this node observes) wakes the next one instead of being missed.
            # A wake source must therefore not fire on this node's own changes (the simulated
            # world leaves them out): those are checked by the verify tick, later.
            if spec_watch is not None and (fresh := spec_watch.poll()) is not None:
                if rebuild is not None and adapter_settings(fresh) != adapter_settings(spec):
                    adapters = rebuild(fresh)
                    watcher = Watcher(adapters.wake + extra)
                spec = fresh
                if on_spec is not None:
                    on_spec(fresh)
            watcher.remember()
            report = tick(spec, adapters, retry=retry, executor=pool)
            on_report(report)
            # "Refused the same way": the same kinds of refusal of the same changes (the
            # reasons' text, a resync's percentage say, may change without anything new).
            blocked = tuple((b.kind, b.what, b.resource) for b in report.plan.blocked)
            if blocked and not report.plan.actions:
                streak = streak + 1 if blocked == last_blocked else 1
            else:
                streak = 0
            last_blocked = blocked
            acting = acting + 1 if report.result is not None and report.result.applied else 0
            wait_for_next(watcher, stop, pace.delay(streak, acting), pace.wake_poll)


def adapter_settings(spec: StorageCluster) -> object:
    """What ``adapters.factory`` builds a node's adapters from: a spec edit that changes any
    of it rebuilds them (the tgt portal is the first VIP, the liveness probes name the peer's
    addresses and the heuristics, the runners take the nodes' transports and timeouts)."""
    s = spec.spec
    return (
        s.adapters,
        s.nodes,
        s.role_source,
        s.vips[:1],
        s.promotion.heuristics,
        s.timings.command_timeout,
        s.witness,  # the etcd witness's endpoints, prefix, lease TTL and timeout
    )
