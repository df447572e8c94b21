"""Benchmark: the idle cost of `reconcile --watch` at 1 s ticks (not collected by pytest).

    python tests/bench/idle.py [--seconds N] [--warmup W] [--only demo|lab]

Two setups, each with two converged agents (node1 serving, node2 standing by), idle:
- demo: `reconcile --watch --node NODE --interval 1 --json` on the embedded demo (everything
  simulated), both agents in one state directory (sharing the simulated world file);
- lab: the namespace lab (tests/lab/, root and the lab's Debian packages): the real VIP, tgt
  and pool.conf adapters over simulated DRBD, one agent inside each node's namespace
  (tests.lab.agents.AgentCluster at `--interval 1`).

After a warm-up (start-up and bring-up are not idle cost), over a window of N seconds (30 by
default) it reads for each agent:
- CPU share: utime + stime of the agent's process from /proc/PID/stat over the window, divided
  by the window's wall time; "+children" adds cutime + cstime, the CPU of the commands it ran
  and reaped in the window (`ip`, `tgtadm`, ...), which is its cost too;
- process spawns per idle tick: the growth of `spawns_total` (the runner's `Runner.spawned`,
  in every `--json` tick report and the status record; also the Prometheus counter
  `tandem_command_spawns_total`) over the window, divided by the ticks in the window.
It prints figures and where they stand against issue 14's targets (< 1% of a core, <= 1 spawn
per idle tick on average, real adapters); it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TICKS = os.sysconf("SC_CLK_TCK")
NODES = ("node1", "node2")
CPU_TARGET = 0.01
SPAWN_TARGET = 1.0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own CPU, own + reaped children's CPU) of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    children = int(fields[13]) + int(fields[14])  # cutime, cstime (16, 17)
    return own / TICKS, (own + children) / TICKS


def reports(path: Path) -> list[dict[str, Any]]:
    """The ``--json`` tick reports in an agent's output file (log lines are skipped)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
    return out


@dataclass
class Figure:
    node: str
    cpu: float  # own share of a core
    cpu_children: float  # with the reaped commands
    ticks: int
    spawns: int | None

    @property
    def per_tick(self) -> float | None:
        if self.spawns is None or self.ticks == 0:
            return None
        return self.spawns / self.ticks


def measure(pids: dict[str, int], outputs: dict[str, Path], seconds: float) -> dict[str, Figure]:
    before = {n: (cpu_seconds(p), len(reports(outputs[n]))) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    figures = {}
    for node, pid in pids.items():
        (own0, all0), n0 = before[node]
        own1, all1 = cpu_seconds(pid)
        window = reports(outputs[node])
        # The reports written in the window: the first one before it is the baseline.
        inside = window[n0:]
        base = window[n0 - 1] if n0 > 0 else None
        spawns: int | None = None
        if inside and base is not None:
            first, last = base.get("spawns_total"), inside[-1].get("spawns_total")
            if isinstance(first, int) and isinstance(last, int):
                spawns = last - first
        figures[node] = Figure(
            node, (own1 - own0) / wall, (all1 - all0) / wall, len(inside), spawns
        )
    return figures


def show(title: str, figures: dict[str, Figure], *, real: bool) -> None:
    print(f"\n{title}")
    print(f"  {'agent':8} {'CPU':>7} {'+children':>10} {'ticks':>6} {'spawns/tick':>12}")
    for f in figures.values():
        per = "n/a" if f.per_tick is None else f"{f.per_tick:.2f}"
        print(f"  {f.node:8} {f.cpu:7.2%} {f.cpu_children:10.2%} {f.ticks:6d} {per:>12}")
    if real:
        worst_cpu = max(f.cpu_children for f in figures.values())
        pers = [f.per_tick for f in figures.values() if f.per_tick is not None]
        worst_spawns = max(pers) if pers else float("nan")
        print(
            f"  targets (issue 14): CPU < {CPU_TARGET:.0%} of a core: "
            f"{'met' if worst_cpu < CPU_TARGET else 'NOT met'} (worst {worst_cpu:.2%}); "
            f"<= {SPAWN_TARGET:g} spawn per idle tick: "
            f"{'met' if worst_spawns <= SPAWN_TARGET else 'NOT met'} (worst {worst_spawns:.2f})"
        )


def reconcile_command() -> str:
    found = shutil.which("reconcile", path=os.path.dirname(sys.executable)) or shutil.which(
        "reconcile"
    )
    if found is None:
        raise SystemExit("the `reconcile` command is not installed (pip install -e .)")
    return found


def settled(outputs: dict[str, Path], *, quiet_ticks: int = 2) -> Callable[[], bool]:
    """Every agent's last ``quiet_ticks`` reports converged without acting."""

    def check() -> bool:
        for path in outputs.values():
            tail = reports(path)[-quiet_ticks:]
            if len(tail) < quiet_ticks or any(r["applied"] or not r["converged"] for r in tail):
                return False
        return True

    return check


def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


@contextmanager
def demo_agents() -> Iterator[tuple[dict[str, int], dict[str, Path]]]:
    with tempfile.TemporaryDirectory(prefix="tdmidle") as tmp:
        state = Path(tmp) / "state"
        env = dict(os.environ, TANDEM_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
        env.pop("TANDEM_SPEC", None)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        outputs = {n: Path(tmp) / f"{n}.out" for n in NODES}
        try:
            for node in NODES:
                argv = [reconcile_command(), "--watch", "--node", node, "--interval", "1"]
                with open(outputs[node], "wb") as out:
                    procs[node] = subprocess.Popen(
                        [*argv, "--json"],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
            yield {n: p.pid for n, p in procs.items()}, outputs
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@contextmanager
def lab_agents() -> Iterator[tuple[dict[str, int], dict[str, Path]]]:
    from tests.lab.agents import AgentCluster
    from tests.lab.netns import Lab
    from tests.lab.specs import LabCluster

    work = Path(tempfile.mkdtemp(prefix="tdmi"))  # short: tgtd's socket path
    lab = Lab(f"bi{os.getpid() % 100000}-", tmp_dir=work)
    try:
        lab.up()
        cluster = AgentCluster(lab, LabCluster.create(work / "c", interval=1), interval=1)
        try:
            procs = {n: cluster.start(n) for n in NODES}
            cluster.wait_serving("node1", timeout=30)
            outputs = {n: lab.path(cluster.log_name(n)) for n in NODES}
            for node, proc in procs.items():  # the handle must be the agent, not a wrapper
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
                assert any(b"reconcile" in part for part in cmdline), (node, cmdline)
            yield {n: p.pid for n, p in procs.items()}, outputs
        finally:
            cluster.close()
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window")
    parser.add_argument("--warmup", type=float, default=5.0, help="idle seconds before it")
    parser.add_argument("--only", choices=("demo", "lab"), default=None)
    args = parser.parse_args()
    print(
        f"idle reconcile --watch at --interval 1: {args.seconds:g} s window after "
        f"{args.warmup:g} s of settled idling; CPU as a share of one core"
    )
    if args.only in (None, "demo"):
        with demo_agents() as (pids, outputs):
            wait("the demo agents to converge", settled(outputs), timeout=60)
            time.sleep(args.warmup)
            show("demo (all simulated)", measure(pids, outputs, args.seconds), real=False)
    if args.only in (None, "lab"):
        from tests.lab.conftest import lab_unavailable

        if (why := lab_unavailable()) is not None:
            print(f"\nlab: skipped ({why})")
            return
        with lab_agents() as (pids, outputs):
            wait("the lab agents to converge", settled(outputs), timeout=60)
            time.sleep(args.warmup)
            show(
                "namespace lab (real VIP, tgt, pool.conf; simulated DRBD)",
                measure(pids, outputs, args.seconds),
                real=True,
            )


if __name__ == "__main__":
    main()
