#!/usr/bin/env python3
"""Witness benchmark: the failover time the etcd witness gives with the default timings, on a
real 3-member etcd (Debian ``etcd-server``) on loopback.

Run (no root needed; etcd must be installed)::

    python tests/bench/witness.py [--rounds 3] [--ttl 10] [--retry-timeout 2] \\
        [--step-down-margin M] [--tick-interval T] [--json results.json]

Defaults are the shipped witness timings (specs/witness.yaml: ``witness.ttl`` 10,
``retryTimeout`` 1, ``stepDownMargin`` 1, ``timings.tickInterval`` 1); timings that break the
timing rule are refused with the spec's own message.

What it does, per round: two "agents" tick every ``tickInterval`` on their own thread, each
through its own ``EtcdWitness`` and node-side proxies (``tests.etcd_cluster.NodeLink``).
node1 serves: every tick it refreshes its lease (``claim``; the policy refreshes only below
``Witness.refresh_below``, so here the lease is as fresh as it can be at the cut: the
longest takeover). node2 is disconnected from node1
(the scenario's premise) and every tick it observes the witness and claims the key once it is
free (the witness part of the ``witness`` promotion policy). Then node1 is cut from etcd
(its proxies swallow traffic: a partition, not a refusal). Measured from the cut:

- ``node1 stops``: the first tick at which node1's own ``lease_left`` (counted from the send
  time of its last successful refresh) is below the policy's step-down threshold
  (``Witness.step_down_below``: one more observation gap, the margin and the clock drift);
- ``node2 owns``: when node2's claim succeeded, and ``node2 may promote``: the earlier of
  that plus the policy's settle time (``Witness.settle``: one observation gap of the other
  node plus its step-down) and, counted from the disconnect (``ResourceObs.disconnected_for``,
  DRBD seeing the cut ``--drbd-detect`` seconds after it, 0 by default), the later of the
  disconnect plus the settle time and the claim plus the watchdog's hold (``Witness.hold``:
  3.58 s with the shipped 4.5 s watchdog; 0 with ``--no-watchdog``). Then node2's next tick
  promotes (``node2 promotes``: its first tick at or after that, one tick after the claim at
  the earliest, counted in whole ticks from the claim);
- the margin between node1 stopping and node2 promoting (must be positive).

Besides, the latency of ``observe`` / ``claim`` (create and refresh) on a healthy cluster,
and how long an observation takes while cut (the ``retryTimeout`` budget).

Not a test: pytest does not collect it, and nothing here asserts a target. Figures measured
while other work shares the machine are provisional.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from adapters.witness.etcd import EtcdWitness, lease_record_path  # noqa: E402
from adapters.witness.gateway import EtcdGateway  # noqa: E402
from reconciler.core.errors import TransientError  # noqa: E402
from tests.etcd_cluster import ETCD, SKIP_REASON, EtcdCluster, NodeLink  # noqa: E402


def _shipped() -> tuple[float, float, float, float]:
    """(ttl, retryTimeout, stepDownMargin, tickInterval) of the shipped witness spec
    (specs/witness.yaml): the defaults of ttl and retryTimeout need a tick of 0.45 s or less
    under the timing rule, the shipped spec is what an installation starts from."""
    from reconciler.core.specload import load_spec

    spec = load_spec((REPO / "specs" / "witness.yaml").read_text())
    w = spec.spec.witness
    return w.ttl, w.retry_timeout, w.step_down_margin, spec.spec.timings.tick_interval


def _thresholds(
    ttl: float, timeout: float, margin: float, tick: float, dog: float | None = None
) -> tuple[float, float, float]:
    """(step down below, settle, hold): the policy's thresholds for these timings and this
    watchdog timeout (None: no watchdog) (spec.Witness)."""
    from reconciler.core.spec import Watchdog, Witness

    watchdog = None if dog is None else Watchdog(timeout=dog)
    w = Witness(ttl=ttl, retry_timeout=timeout, step_down_margin=margin, watchdog=watchdog)
    problem = w.timing_problem(tick)
    if problem is not None:
        raise SystemExit(problem)
    return w.step_down_below(tick), w.settle(tick), w.hold()


def _shipped_watchdog() -> float | None:
    from reconciler.core.specload import load_spec

    dog = load_spec((REPO / "specs" / "witness.yaml").read_text()).spec.witness.watchdog
    return None if dog is None else dog.timeout


def _witness(
    link: NodeLink, node: str, *, cluster: str, ttl: float, timeout: float, state: Path
) -> EtcdWitness:
    return EtcdWitness(
        EtcdGateway(link.endpoints, timeout=timeout),
        cluster=cluster,
        node=node,
        prefix="/tandem-bench/",
        ttl=ttl,
        record_path=lease_record_path(state, node),
    )


def latencies(etcd: EtcdCluster, state: Path, *, timeout: float, n: int = 50) -> dict[str, Any]:
    link = etcd.link()
    w = _witness(link, "node1", cluster="latency", ttl=10, timeout=timeout, state=state)
    out: dict[str, list[float]] = {"observe": [], "claim (create)": [], "claim (refresh)": []}
    try:
        for _ in range(n):
            t = time.monotonic()
            w.observe()
            out["observe"].append(time.monotonic() - t)
            t = time.monotonic()
            w.claim()
            out["claim (create)"].append(time.monotonic() - t)
            t = time.monotonic()
            w.claim()
            out["claim (refresh)"].append(time.monotonic() - t)
            w.release()
        link.cut()
        t = time.monotonic()
        obs = w.observe()
        cut = time.monotonic() - t
        assert obs.reachable is False
    finally:
        w.close()
        link.close()
    figures: dict[str, Any] = {
        k: {"median_ms": statistics.median(v) * 1e3, "max_ms": max(v) * 1e3} for k, v in out.items()
    }
    figures["observe while cut"] = {"seconds": cut}
    return figures


def failover_round(
    etcd: EtcdCluster,
    state: Path,
    *,
    r: int,
    ttl: float,
    timeout: float,
    margin: float,
    tick: float,
    dog: float | None,
    detect: float,
) -> dict[str, float]:
    cluster = f"failover{r}"
    links = {n: etcd.link() for n in ("node1", "node2")}
    w = {
        n: _witness(links[n], n, cluster=cluster, ttl=ttl, timeout=timeout, state=state)
        for n in links
    }
    stop_below, settle, hold = _thresholds(ttl, timeout, margin, tick, dog)
    stop = threading.Event()
    marks: dict[str, float] = {}
    cut_at: list[float] = []

    def node1() -> None:
        while not stop.is_set():
            started = time.monotonic()
            obs = w["node1"].observe()
            if cut_at and "node1 stops" not in marks:
                left = obs.lease_left
                if left is None or left < stop_below:
                    marks["node1 stops"] = time.monotonic()
            if "node1 stops" not in marks:
                with contextlib.suppress(TransientError):
                    w["node1"].claim()
            stop.wait(max(0.0, tick - (time.monotonic() - started)))

    def node2() -> None:
        while not stop.is_set() and "node2 owns" not in marks:
            started = time.monotonic()
            obs = w["node2"].observe()
            if obs.reachable and obs.holder is None:
                try:
                    w["node2"].claim()
                    owns = marks["node2 owns"] = time.monotonic()
                    by_disconnect = max(cut_at[0] + detect + settle, owns + hold)
                    may = marks["node2 may promote"] = min(owns + settle, by_disconnect)
                    # The claim's tick cannot promote (the key was free when it planned):
                    # node2's first tick from then on, one tick after the claim at the earliest.
                    ticks = max(1, math.ceil((may - owns) / tick - 1e-9))
                    marks["node2 promotes"] = owns + ticks * tick
                except TransientError:
                    pass
            stop.wait(max(0.0, tick - (time.monotonic() - started)))

    w["node1"].claim()
    threads = [threading.Thread(target=f, daemon=True) for f in (node1, node2)]
    for t in threads:
        t.start()
    # Cut at a random-ish point of node1's tick: one and a half ticks in.
    time.sleep(tick * 1.5)
    cut_at.append(time.monotonic())
    links["node1"].cut()
    deadline = time.monotonic() + ttl + 4 * tick + 10
    while time.monotonic() < deadline and not {"node1 stops", "node2 owns"} <= set(marks):
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=tick + timeout + 5)
    for n in links:
        w[n].close()
        links[n].close()
    t0 = cut_at[0]
    return {k: v - t0 for k, v in marks.items()}


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def main() -> int:
    ttl0, retry0, margin0, tick0 = _shipped()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ttl", type=float, default=ttl0)
    ap.add_argument("--retry-timeout", type=float, default=retry0)
    ap.add_argument("--step-down-margin", type=float, default=margin0)
    ap.add_argument("--tick-interval", type=float, default=tick0)
    ap.add_argument("--drbd-detect", type=float, default=0.0)
    ap.add_argument("--no-watchdog", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if ETCD is None:
        print(SKIP_REASON, file=sys.stderr)
        return 2
    ttl, timeout, tick = args.ttl, args.retry_timeout, args.tick_interval
    margin = args.step_down_margin
    dog = None if args.no_watchdog else _shipped_watchdog()
    stop_below, settle, hold = _thresholds(ttl, timeout, margin, tick, dog)
    print(
        f"witness.ttl={ttl:g}s witness.retryTimeout={timeout:g}s stepDownMargin={margin:g}s "
        f"tickInterval={tick:g}s watchdog={'none' if dog is None else f'{dog:g}s'} (step down "
        f"below {stop_below:.2f}s left, settle {settle:.2f}s, hold {hold:.2f}s; DRBD sees the "
        f"cut {args.drbd_detect:g}s after it)"
    )
    base = Path(tempfile.mkdtemp(prefix="tandem-bench-etcd-"))
    etcd = EtcdCluster.start(base)
    try:
        lat = latencies(etcd, base, timeout=timeout)
        print("etcd calls on a healthy 3-member cluster (loopback):")
        for k, v in lat.items():
            if "median_ms" in v:
                print(f"  {k:18} median {v['median_ms']:6.1f} ms  max {v['max_ms']:6.1f} ms")
        print(f"  observe while cut  {lat['observe while cut']['seconds']:.2f} s (the budget)")
        rounds = []
        for r in range(args.rounds):
            got = failover_round(
                etcd,
                base,
                r=r,
                ttl=ttl,
                timeout=timeout,
                margin=margin,
                tick=tick,
                dog=dog,
                detect=args.drbd_detect,
            )
            rounds.append(got)
            stops, owns = got.get("node1 stops"), got.get("node2 owns")
            may = got.get("node2 may promote")
            ahead = f"{may - stops:.2f}" if stops is not None and may is not None else "?"
            print(
                f"round {r + 1}: after the cut node1 stops at {_s(stops)}, node2 owns the key "
                f"at {_s(owns)}, may promote at {_s(may)} (node1 out {ahead} s before)"
            )
        for mark in ("node2 owns", "node2 may promote", "node2 promotes"):
            got_all = [g[mark] for g in rounds if mark in g]
            if got_all:
                print(
                    f"cut -> {mark}: median {statistics.median(got_all):.2f} s, worst "
                    f"{max(got_all):.2f} s (ttl + 2 ticks = {ttl + 2 * tick:g} s; ttl + settle + 3 "
                    f"ticks = {ttl + settle + 3 * tick:.2f} s)"
                )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "ttl": ttl,
                        "retry_timeout": timeout,
                        "tick_interval": tick,
                        "latency": lat,
                        "rounds": rounds,
                    },
                    indent=1,
                )
            )
    finally:
        etcd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
