"""The watch loop (``reconcile --watch``): tick, then wait for the next reason to tick.

Between ticks the loop blocks on the adapters' ``Wakeup`` (``adapters.wake``): it spends no CPU
until something happens. Like an operator's work queue, a tick comes
- at once when something the agent watches changed: a wake source's file (pool.conf, the
  operator's choices, the simulated world, the spec file: ``NodeAdapters.wake``, watched by
  one ``adapters.wake.FileWatch`` thread through inotify, polled every ``timings.wakePoll``
  seconds only where inotify cannot be used) or an event-fed adapter's stream (it calls
  ``wakeup.notify``);
- after ``timings.blockedRetry`` when a safety rule refused a change the node wants (typically
  "the peer is still Primary" in the middle of a planned swap), doubling while the same refusal
  persists, up to the tick interval;
- after ``timings.verifyAfter`` when the tick applied actions: the next tick checks what they
  did and refreshes the status record (doubling while ticks keep acting, so a plan that
  never converges cannot spin the agent);
- else after the tick interval (the periodic resync that catches what no wake source shows).
The wait says why it ended (``wait_for_next``: ``wake:<reason>``, ``timer``, ``stop``).

Under ``--watch`` the spec file is a wake source too (``spec_watch``): a valid edit is taken
at the start of the next tick (the adapters rebuilt when what they are built from changed); an
invalid one keeps the last good spec (``reconciler.specfile.SpecWatch``).

Waking early never changes a decision: every tick observes everything afresh.
Invariants: the loop never raises out of a tick (``tick`` does not raise); it ends after the
current tick once ``stop`` is set, never in the middle of one, and a wait ends at once when
``stop`` is set; it closes the adapters (``NodeAdapters.close``) and the file watcher when it
rebuilds them for a new spec and when it ends, also by an exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from adapters.base import NodeAdapters, WakeSource
from adapters.wake import FileWatch, Wakeup
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


class Stop(threading.Event):
    """The loop's stop flag whose ``set`` also interrupts the wait between ticks at once: the
    loop subscribes its adapters' ``Wakeup`` (``notify("stop")``). Safe to set from a signal
    handler (the CLI's SIGINT/SIGTERM). A plain ``threading.Event`` works too: the loop then
    watches it from a helper thread (blocked on it; it notices the loop's end within 0.5 s)."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[Callable[[], None]] = []
        self._hooks_lock = threading.RLock()  # re-entrant: a signal may come while held

    def set(self) -> None:
        super().set()
        with self._hooks_lock:
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    def subscribe(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` when set (at once if already set); returns the unsubscribe."""
        with self._hooks_lock:
            self._hooks.append(hook)
        if self.is_set():
            hook()

        def unsubscribe() -> None:
            with self._hooks_lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)

        return unsubscribe


def _on_stop(stop: threading.Event, hook: Callable[[], None]) -> Callable[[], None]:
    """Call ``hook`` once ``stop`` is set; returns what ends the watch (see ``Stop``)."""
    if isinstance(stop, Stop):
        return stop.subscribe(hook)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.5):
                hook()
                return

    threading.Thread(target=watch, name="loop-stop", daemon=True).start()
    return done.set


def wait_for_next(wakeup: Wakeup, stop: threading.Event, delay: float) -> str:
    """Block until ``wakeup`` is notified, ``delay`` passes or ``stop`` is set; say which:
    ``wake:<reason>``, ``timer`` or ``stop``. A notification that came during the tick (after
    the loop's ``clear``) returns at once. ``stop`` must notify ``wakeup`` to interrupt the
    wait (``Stop`` and the loop's helper for a plain Event do)."""
    if stop.is_set():
        return "stop"
    reason = wakeup.wait(delay)
    if stop.is_set():
        return "stop"
    return "timer" if reason is None else f"wake:{reason}"


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
    a new spec whose adapter settings changed (the old ones are closed); ``on_spec`` is told
    of every spec taken. ``stop``: a ``Stop`` (or a plain Event, watched by a helper
    thread)."""
    pace = pace or Pace.from_spec(spec)
    extra: tuple[WakeSource, ...] = (spec_watch.wake,) if spec_watch is not None else ()
    current = [adapters]
    files = FileWatch(adapters.wake + extra, adapters.wakeup, poll=pace.wake_poll)
    unsubscribe = _on_stop(stop, lambda: current[0].wakeup.notify("stop"))
    streak = 0
    acting = 0
    last_blocked: tuple[object, ...] = ()
    try:
        with ThreadPoolExecutor(max_workers=6, thread_name_prefix="observe") as pool:
            files.start()
            while not stop.is_set():
                if spec_watch is not None and (fresh := spec_watch.poll()) is not None:
                    if rebuild is not None and adapter_settings(fresh) != adapter_settings(spec):
                        old, old_files = adapters, files
                        adapters = rebuild(fresh)
                        current[0] = adapters
                        old_files.close()
                        old.close()
                        files = FileWatch(
                            adapters.wake + extra, adapters.wakeup, poll=pace.wake_poll
                        )
                        files.start()
                        if stop.is_set():  # set while the old Wakeup was the one subscribed
                            break
                    spec = fresh
                    if on_spec is not None:
                        on_spec(fresh)
                # Cleared *before* the tick: a change during the tick (the peer demoting
                # while this node observes) wakes the next wait at once instead of being
                # missed. A wake source must therefore not fire on this node's own changes
                # (the simulated world's digest leaves them out): the verify tick checks them.
                adapters.wakeup.clear()
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
                wait_for_next(adapters.wakeup, stop, pace.delay(streak, acting))
    finally:
        unsubscribe()
        files.close()
        adapters.close()


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
