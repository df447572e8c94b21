#!/usr/bin/env python3
"""Unplanned-failover benchmark: from a crash of the primary to the first verified client
read through the survivor, tandem against keepalived, in the same run and the same lab.

Run as root with the lab packages and Debian ``keepalived`` (see docs/testing.md)::

    python tests/bench/failover.py [--rounds 5] [--json results.json]

Each round of each setup runs in a fresh namespace lab (tests/lab/netns.py; 198.51.100.0/24
only) with one backing file both nodes export (the stand-in for DRBD protocol C):

- tandem, default: two ``reconcile --watch`` agents, static role source (node1 preferred),
  the quorum policy with the client as heuristic address, default ``liveness`` timings and
  the default ``tickInterval`` (10 s: the takeover is driven by the pinger's wake, not by the
  tick timer); the simulated DRBD drops its connection when node1's replication address went
  silent, as real DRBD does;
- tandem, tuned: ``liveness`` interval 0.05 s, timeout 0.05 s, misses 2 (detection
  0.1-0.15 s), agents at ``--interval 0.05``;
- keepalived 2.2 (VRRP version 3, which a sub-second ``advert_int`` needs; the VIP only: no
  DRBD, nothing moves but the address) with tgtd resident on both nodes exporting the same
  backing file, node1 MASTER (priority 200), node2 BACKUP (100), at ``advert_int 1`` and ``0.1``.

The crash is the same for all: node1's links go down (eth0 and repl0 in one ``ip -batch``),
then every process in node1's namespace is SIGKILLed by PID (the agent and its tgtd;
keepalived's processes and tgtd). The crash instant is when that ``ip`` command returned.

The client is swap.py's minimal iSCSI reader in the client namespace: one session, verified
4 KiB reads every 5 ms, and on a broken session a fresh login at once with a 20 ms connect
timeout. So its figure is the servers' gap: a SYN lost while the VIP moves costs 20 ms, not
the 1 s SYN retransmit a per-read login (qemu-io, libiscsi's own reconnect) pays when its SYN
falls into the switchover. The figure is the end of the first verified read after the crash
instant on a session opened after it (the reader logged its old session's failure): a read
already on the wire from node1 may still complete just after the link went down.

Prints per-setup min / median / max and the ratios of the medians. Not a test: pytest does not
collect it, and nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.swap import PATTERN, SPAN, Bench, Tail  # noqa: E402
from tests.lab.agents import AgentCluster, links_down, pids_in  # noqa: E402
from tests.lab.conftest import _base36, lab_unavailable  # noqa: E402
from tests.lab.netns import VIP, VIP_IP, Lab  # noqa: E402
from tests.lab.specs import LabCluster  # noqa: E402

TUNED = {"interval": 0.05, "timeout": 0.05, "misses": 2}
KEEPALIVED_CONF = """\
global_defs {{
    router_id {node}
    enable_script_security
    vrrp_version 3
}}
vrrp_instance lab {{
    state {state}
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {vip} dev eth0
    }}
}}
"""


class Round:
    """One fresh lab with the backing file holding the reader's pattern."""

    def __init__(self, tag: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tdmfo"))  # short: tgtd's socket path
        self.lab = Lab(f"f{_base36(os.getpid())}{tag}-", tmp_dir=self.root)
        self.bench: Bench | None = None

    def __enter__(self) -> Round:
        self.lab.up()
        return self

    def files(self, **kw: Any) -> LabCluster:
        files = LabCluster.create(self.root / "cluster", **kw)
        with open(files.device, "r+b") as fh:
            fh.write(bytes([PATTERN]) * SPAN)
            fh.flush()
            os.fsync(fh.fileno())
        self.bench = Bench(self.lab, files, period=0.005)
        return files

    def measure(self, crash: Callable[[], float], *, timeout: float = 30.0) -> float:
        """Start the reader, wait until reads flow, crash, return the seconds from the crash
        instant to the end of the first verified read after it."""
        assert self.bench is not None
        self.bench.start_reader()
        self.bench.wait_reads_flow(time.monotonic(), timeout=20)
        time.sleep(0.5)  # steady state: the pinger has answered for a while
        t0 = crash()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = first_read_on_a_new_session(self.bench.reads_path, t0)
            if first is not None:
                return first - t0
            time.sleep(0.01)
        raise RuntimeError(f"no verified read within {timeout:g} s of the crash")

    def __exit__(self, *exc: object) -> None:
        if self.bench is not None:
            with contextlib.suppress(Exception):
                self.bench.stop_reader()
        for node in ("node1", "node2"):  # keepalived's VRRP child, a tgtd the lab did not spawn
            for pid in pids_in(self.lab, node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.lab.down()
        shutil.rmtree(self.root, ignore_errors=True)


def first_read_on_a_new_session(path: Path, t0: float) -> float | None:
    """The end of the first verified read after ``t0`` that follows a failure after ``t0``
    (the reader logs ``<t> fail ...`` when its session breaks): a read that was already on
    the wire to node1 may still complete just after its link went down; only a read on a
    session opened after the crash is the survivor's."""
    broke = False
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            when, _, what = line.partition(" ")
            try:
                t = float(when)
            except ValueError:
                continue
            if t <= t0:
                continue
            if what.startswith("fail"):
                broke = True
            elif what == "ok" and broke:
                return t
    return None


def wait_standing_by(agents: AgentCluster, node: str, *, timeout: float) -> None:
    """Wait until ``node``'s agent settled as the standby: its last tick converged without
    acting (after the tick that started its resident tgtd; its pinger is past its first
    round). A crash before that measures the survivor's start-up, not a failover."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = agents.reports(node)[-1:]
        if tail and tail[0].get("converged") and not tail[0].get("applied"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{node} did not settle as the standby within {timeout:g} s")


def kill_all(lab: Lab, node: str) -> None:
    for pid in pids_in(lab, node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tandem_round(tag: str, *, tuned: bool) -> float:
    with Round(tag) as rnd:
        files = rnd.files(
            static=True,
            interval=0.05 if tuned else 10.0,
            liveness=TUNED if tuned else None,
        )
        agents = AgentCluster(rnd.lab, files, interval=0.05 if tuned else 10.0)
        tail = Tail(rnd.lab.path(agents.log_name("node2")))
        tail.start()
        wall: list[float] = []
        try:
            agents.start("node1")
            agents.start("node2")
            agents.wait_serving("node1", timeout=30, strict=False)
            wait_standing_by(agents, "node2", timeout=30)

            def crash() -> float:
                t0 = links_down(rnd.lab, "node1")
                wall.append(time.time() - (time.monotonic() - t0))
                kill_all(rnd.lab, "node1")  # the agent and its tgtd, by PID
                return t0

            took = rnd.measure(crash)
            time.sleep(0.1)  # the acting tick's report is printed after its actions
            BREAKDOWNS.setdefault("tandem tuned" if tuned else "tandem default", []).append(
                takeover_breakdown(tail.reports, wall[0])
            )
            return took
        finally:
            tail.finish()
            with contextlib.suppress(Exception):
                agents.close()


BREAKDOWNS: dict[str, list[str]] = {}


def takeover_breakdown(reports: list[dict[str, Any]], crash_wall: float) -> str:
    """node2's ticks from the crash to its first tick that exported the LUN: when each began
    (ms after the crash), its observation and each applied step (ms)."""
    parts = []
    for r in reports:
        if r["started"] < crash_wall - 0.2:
            continue
        began = (r["started"] - crash_wall) * 1e3
        steps = " ".join(f"{st['kind']}={st['ms']:.0f}" for st in r.get("steps", []))
        observe = r.get("observe_parts_ms", {})
        seen = ",".join(f"{k}={v:.0f}" for k, v in observe.items())
        parts.append(
            f"tick@{began:.0f} observe={r.get('observe_ms', 0):.0f}({seen}) {steps}".rstrip()
        )
        if any(a["kind"] == "export-lun" for a in r["applied"]):
            break
    return "; ".join(parts[-3:])


def keepalived_round(tag: str, *, advert: float) -> float:
    from adapters.tgt import TgtAdapter

    with Round(tag) as rnd:
        files = rnd.files(static=True)
        spec = files.spec()
        target, resource = spec.spec.target, spec.spec.resources[0]
        for node, state, prio in (("node1", "MASTER", 200), ("node2", "BACKUP", 100)):
            tgt = TgtAdapter(
                rnd.lab.runner(node), control_dir=str(files.tgt_control_dir(node)), portal=VIP_IP
            )
            tgt.start(target)  # resident on both nodes, serving the same backing file
            tgt.export_lun(target, target.luns[0], resource)
            conf = rnd.lab.path(f"keepalived-{node}.conf")
            conf.write_text(
                KEEPALIVED_CONF.format(
                    node=node, state=state, priority=prio, advert=advert, vip=VIP
                )
            )
            rnd.lab.spawn(
                node,
                [
                    "keepalived",
                    "--dont-fork",
                    "--log-console",
                    "--vrrp",
                    "-f",
                    str(conf),
                    "-p",
                    str(rnd.lab.path(f"ka-{node}.pid")),
                    "-r",
                    str(rnd.lab.path(f"ka-vrrp-{node}.pid")),
                ],
                log_name=f"keepalived-{node}.log",
            )
        deadline = time.monotonic() + 20
        while (
            VIP_IP not in rnd.lab.run("node1", ["ip", "-j", "addr", "show", "dev", "eth0"]).stdout
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("keepalived did not put the VIP on node1")
            time.sleep(0.05)

        def crash() -> float:
            t0 = links_down(rnd.lab, "node1")
            kill_all(rnd.lab, "node1")  # keepalived (parent and VRRP child) and tgtd
            return t0

        return rnd.measure(crash)


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    reason = lab_unavailable()
    if reason or shutil.which("keepalived") is None:
        why = reason or "keepalived is missing (apt-get install keepalived)"
        print(f"cannot run the failover benchmark: {why}", file=sys.stderr)
        return 2
    setups: dict[str, Callable[[str], float]] = {
        "tandem default": lambda tag: tandem_round(tag, tuned=False),
        "tandem tuned": lambda tag: tandem_round(tag, tuned=True),
        "keepalived advert_int 1": lambda tag: keepalived_round(tag, advert=1.0),
        "keepalived advert_int 0.1": lambda tag: keepalived_round(tag, advert=0.1),
    }
    figures: dict[str, list[float]] = {name: [] for name in setups}
    errors: dict[str, list[str]] = {name: [] for name in setups}
    for i in range(args.rounds):
        for j, (name, run) in enumerate(setups.items()):  # interleaved: same machine load
            try:
                figures[name].append(run(f"{i}{j}"))
            except Exception as exc:
                errors[name].append(f"round {i}: {exc!r}")
            print(f"round {i + 1}/{args.rounds} {name}: "
                  f"{figures[name][-1] if len(figures[name]) > i else float('nan'):.3f} s",
                  file=sys.stderr)  # fmt: skip
    report: dict[str, Any] = {
        "rounds": args.rounds,
        "tuned_liveness": TUNED,
        "seconds": figures,
        "errors": {k: v for k, v in errors.items() if v},
        "summary": {k: stats(v) for k, v in figures.items() if v},
    }
    s = report["summary"]

    def ratio(a: str, b: str) -> float | None:
        return s[a]["median"] / s[b]["median"] if a in s and b in s else None

    report["ratios"] = {
        "tandem default / keepalived advert_int 1": ratio(
            "tandem default", "keepalived advert_int 1"
        ),
        "tandem tuned / keepalived advert_int 0.1": ratio(
            "tandem tuned", "keepalived advert_int 0.1"
        ),
    }
    print("\ncrash of the primary -> first verified client read (seconds)")
    print("client: one iSCSI session, reads every 5 ms, fresh login at once on a break (20 ms "
          "connect timeout): the servers' gap, no 1 s SYN retransmit")  # fmt: skip
    for name in setups:
        if name in s:
            x = s[name]
            runs = ", ".join(f"{v:.3f}" for v in figures[name])
            print(f"  {name:<27} median {x['median']:.3f}  min {x['min']:.3f}  "
                  f"max {x['max']:.3f}   ({runs})")  # fmt: skip
        for err in errors[name]:
            print(f"  {name:<27} FAILED {err}")
    for name, lines in BREAKDOWNS.items():
        print(f"  {name}: node2's takeover ticks, ms after the crash (per round):")
        for line in lines:
            print(f"    {line}")
    report["breakdowns"] = BREAKDOWNS
    for label, value in report["ratios"].items():
        print(f"  {label}: " + ("n/a" if value is None else f"{value:.2f}x"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
