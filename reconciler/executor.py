"""The executor: applies a plan through the adapters.

Invariants:
- the only place with retries: tenacity retries ``TransientError`` with exponential backoff;
  ``TerminalError`` (and anything unexpected) fails the step at once;
- runs the plan per dependency chain (``Action.after``/``after_any``, set by the planner): an
  action whose dependency failed is skipped (reported, never run) while the other chains go on,
  so a failed promote never leads to a VIP or a target that needs it, and one failing resource
  does not keep the others unserved; within a chain it stops at the first failed step (a plan
  without explicit chains is one chain: it stops at the first failure);
- never raises: the report says what ran, what failed and why; the next tick re-observes;
- sleeping is a parameter (tests pass a recorder and never sleep for real).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from adapters.base import NodeAdapters
from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.spec import StorageCluster


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    backoff: float = 0.2
    backoff_max: float = 2.0

    @classmethod
    def from_spec(cls, spec: StorageCluster) -> RetryPolicy:
        t = spec.spec.timings
        return cls(t.retry_attempts, t.retry_backoff, t.retry_backoff_max)


@dataclass(frozen=True, slots=True)
class StepReport:
    action: Action
    ok: bool
    attempts: int
    seconds: float
    error: str | None = None
    skipped: bool = False  # not run: an action it depends on failed (``error`` says which)


@dataclass(frozen=True, slots=True)
class ApplyReport:
    steps: tuple[StepReport, ...] = field(default=())

    @property
    def applied(self) -> tuple[Action, ...]:
        return tuple(s.action for s in self.steps if s.ok)

    @property
    def failed(self) -> StepReport | None:
        """The first step that ran and failed (skipped steps are its consequences)."""
        return next((s for s in self.steps if not s.ok and not s.skipped), None)

    @property
    def skipped(self) -> tuple[StepReport, ...]:
        return tuple(s for s in self.steps if s.skipped)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(f"{s.action.describe()}: {s.error}" for s in self.steps if not s.ok)


def apply(
    plan: Plan,
    spec: StorageCluster,
    adapters: NodeAdapters,
    *,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    after_step: Callable[[StepReport], None] | None = None,
) -> ApplyReport:
    policy = retry or RetryPolicy.from_spec(spec)
    steps: list[StepReport] = []
    failed: set[int] = set()
    done: set[int] = set()
    for index, action in enumerate(plan.actions):
        blocker = action.waits_for(index, failed=failed, done=done)
        if blocker is not None:
            failed.add(index)
            if action.after is None:
                break  # one chain (a hand-built plan): stop at the first failure, as always
            steps.append(skipped_step(action, plan.actions[blocker]))
            continue
        report = _run_step(action, spec, adapters, policy, sleep, clock)
        steps.append(report)
        if after_step is not None:
            after_step(report)
        (done if report.ok else failed).add(index)
    return ApplyReport(tuple(steps))


def skipped_step(action: Action, blocker: Action) -> StepReport:
    """The report of an action not run because ``blocker`` (a dependency) failed or was
    itself skipped."""
    return StepReport(
        action, False, 0, 0.0, f"not run: it depends on {blocker.describe()}, which failed", True
    )


def _run_step(
    action: Action,
    spec: StorageCluster,
    adapters: NodeAdapters,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> StepReport:
    started = clock()
    if action.kind in _ONE_ATTEMPT:
        # The witness's calls are not retried within a tick: the timing rule counts one
        # retryTimeout per call, and the next tick (or the step-down) is the retry.
        policy = replace(policy, attempts=1)
    # Fast path: most steps succeed at once, and building tenacity's machinery per step was
    # ~40% of a simulated tick. Only a TransientError enters tenacity, for the retries.
    try:
        _dispatch(action, spec, adapters)
        return StepReport(action, True, 1, clock() - started)
    except TransientError as exc:
        if policy.attempts <= 1:
            return StepReport(action, False, 1, clock() - started, _describe(exc))
    except Exception as exc:
        return StepReport(action, False, 1, clock() - started, _describe(exc))

    attempts = 1

    def count(_: RetryCallState) -> None:
        nonlocal attempts
        attempts += 1

    first_wait = min(policy.backoff, policy.backoff_max)
    sleep(first_wait)  # the wait tenacity would have put between attempts 1 and 2
    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts - 1),
        wait=wait_exponential(multiplier=policy.backoff * 2, max=policy.backoff_max),
        retry=retry_if_exception_type(TransientError),
        sleep=sleep,
        before=count,
        reraise=True,
    )
    try:
        retrying(_dispatch, action, spec, adapters)
    except Exception as exc:
        return StepReport(action, False, attempts, clock() - started, _describe(exc))
    return StepReport(action, True, attempts, clock() - started)


def _describe(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, TransientError):
        return f"{text} (transient; gave up after retries)"
    return text


_ONE_ATTEMPT = frozenset({ActionKind.CLAIM_WITNESS, ActionKind.RELEASE_WITNESS})

_DRBD_KINDS = frozenset(
    {
        ActionKind.START_DRBD,
        ActionKind.PROMOTE,
        ActionKind.DEMOTE,
        ActionKind.CONNECT,
        ActionKind.DISCONNECT,
        ActionKind.CONNECT_DISCARD,
    }
)


def _dispatch(action: Action, spec: StorageCluster, a: NodeAdapters) -> None:
    s = spec.spec
    kind = action.kind
    if kind in _DRBD_KINDS:
        res = next(r for r in s.resources if r.name == action.resource)
        if kind is ActionKind.START_DRBD:
            a.drbd.up(res)
        elif kind is ActionKind.PROMOTE:
            a.drbd.primary(res, force=action.force)
        elif kind is ActionKind.DEMOTE:
            a.drbd.secondary(res)
        elif kind is ActionKind.DISCONNECT:
            a.drbd.disconnect(res)
        elif kind is ActionKind.CONNECT_DISCARD:
            a.drbd.connect(res, discard_my_data=True)
        else:
            a.drbd.connect(res)
    elif kind in (ActionKind.ADD_VIP, ActionKind.REMOVE_VIP, ActionKind.ANNOUNCE_VIP):
        vip = next(v for v in s.vips if v.ip == action.vip)
        if kind is ActionKind.ADD_VIP:
            a.vip.add(vip, probe=action.probe)
        elif kind is ActionKind.REMOVE_VIP:
            a.vip.remove(vip)
        else:
            a.vip.announce(vip)
    elif kind is ActionKind.REMOVE_OLD_VIP:
        assert action.vip is not None and action.interface is not None
        a.vip.remove_old(action.vip, action.interface)
    elif kind is ActionKind.UNEXPORT_OLD_LUN:
        assert action.tid is not None and action.iqn is not None and action.lun is not None
        a.target.unexport_old_lun(action.tid, action.iqn, action.lun)
    elif kind is ActionKind.DELETE_OLD_TARGET:
        assert action.tid is not None and action.iqn is not None
        a.target.delete_old_target(action.tid, action.iqn)
    elif kind is ActionKind.START_TARGET:
        a.target.start(s.target)
    elif kind is ActionKind.START_DAEMON:
        a.target.start_daemon()
    elif kind is ActionKind.STOP_TARGET:
        a.target.stop(s.target)
    elif kind in (ActionKind.EXPORT_LUN, ActionKind.UNEXPORT_LUN):
        lun = next(x for x in s.target.luns if x.lun == action.lun)
        if kind is ActionKind.EXPORT_LUN:
            res = next(r for r in s.resources if r.name == lun.resource)
            a.target.export_lun(s.target, lun, res)
        else:
            a.target.unexport_lun(s.target, lun)
    elif kind in (ActionKind.PLUG_PBD, ActionKind.REPLUG_PBD):
        if a.hypervisor is None or action.pbd is None:
            raise TerminalError(f"{kind.value}: no hypervisor adapter configured on this node")
        if kind is ActionKind.PLUG_PBD:
            a.hypervisor.plug(action.pbd)
        else:
            a.hypervisor.replug(action.pbd)
    elif kind in (ActionKind.CLAIM_WITNESS, ActionKind.RELEASE_WITNESS):
        if a.witness is None:
            raise TerminalError(f"{kind.value}: no witness adapter configured on this node")
        if kind is ActionKind.CLAIM_WITNESS:
            a.witness.claim()
        else:
            a.witness.release()
    else:  # pragma: no cover - ActionKind is exhaustive above
        raise AssertionError(f"no dispatch for {kind}")
