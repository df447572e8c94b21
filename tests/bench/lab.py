"""Benchmark: the namespace lab's real-tool figures (not collected by pytest: no test_ prefix).

    sudo python tests/bench/lab.py [--rounds N]

(root and the lab's Debian packages: tgt, iputils-arping, libiscsi-bin, qemu-utils.)

The lab tests (tests/lab/) assert behaviour only (the daemon is gone after a stop, an answer
ends an ARP wait, announce returns before its later rounds, the pings run concurrently, no tgtd
stop waits out its stop_timeout under client reads); the durations they used to assert as
limits are printed here, min / median / max over N rounds, each in a fresh lab:

- tgt (the resident tgtd): start-daemon, start-target on the resident tgtd (a takeover) and
  with tgtd down, export one LUN, idle observe (time and processes per call), stop-target
  (tests/lab/test_tgt_lab.py), stop-target with a logged-in session, stop-target while a
  client reads continuously (test_tgt_stop_under_load.py);
- VIP (tests/lab/test_vip_lab.py): `python -m tests.lab.vipcli observe` of two VIPs (one held by
  the peer), an ARP probe answered / free (30 ms window), announce: time to return, all three
  rounds, until the client's ARP entry moves; CommandArp (arping) probe answered / free and
  announce spawn; PingLiveness of 4 addresses (one unused) and of an unused address alone;
- the lab itself: up and down (tests/lab/test_lab_network.py prints these as well).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.liveness import PingLiveness
from adapters.tgt import TgtAdapter, parse_tgtadm_show
from adapters.vip import CommandArp
from tests.lab.conftest import lab_unavailable
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.lab.specs import IQN as LAB_IQN
from tests.lab.specs import LUN as LAB_LUN
from tests.lab.specs import LabCluster
from tests.lab.test_tgt_lab import IQN, LUN1, R0, make_adapter, target
from tests.lab.test_vip_lab import FREE_IP, UNUSED_IP, adapter, the_vip, vip_cli

READER = Path(__file__).resolve().parent / "swap.py"
Figures = dict[str, list[float]]


@contextmanager
def fresh_lab() -> Iterator[tuple[Lab, Path]]:
    work = Path(tempfile.mkdtemp(prefix="tdmb"))  # short: tgtd's socket path
    lab = Lab(f"bn{os.getpid() % 100000}-", tmp_dir=work)
    try:
        yield lab.up(), work
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


def _ms(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return (time.monotonic() - started) * 1000


def tgt_round(out: Figures, counts: Figures) -> None:
    """The resident tgtd: start-daemon (the secondary's), start-target on it (a takeover
    defines the target, no daemon starts), idle observes (cached listing: processes per call
    in ``counts``), stop-target (the target deleted, tgtd stays), and start-target with the
    daemon down (spawn tgtd, ``target new`` as its first request)."""
    with fresh_lab() as (lab, work):
        tgt = make_adapter(lab, "node1", work)
        spec = target(LUN1)
        out.setdefault("start-daemon (resident tgtd, no target)", []).append(_ms(tgt.start_daemon))
        tgt.start(spec)
        out.setdefault("start-target on the resident tgtd", []).append(tgt.timings["start"] * 1000)
        tgt.export_lun(spec, LUN1, R0)
        out.setdefault("export one LUN", []).append(tgt.timings["export"] * 1000)
        tgt.observe(spec)  # the listing after the actions
        before, calls = tgt.runner.spawned, 200
        per_call = _ms(lambda: [tgt.observe(spec) for _ in range(calls)]) / calls
        out.setdefault("observe, idle (the listing)", []).append(per_call)
        counts.setdefault("processes per idle observe", []).append(
            (tgt.runner.spawned - before) / calls
        )
        out.setdefault("stop-target (no session; tgtd stays)", []).append(
            _ms(lambda: tgt.stop(spec))
        )
        tgt.stop_daemon(spec)
        tgt.start(spec)
        out.setdefault("start-target with tgtd down (spawns it)", []).append(
            tgt.timings["start"] * 1000
        )
        tgt.stop_daemon(spec)

        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
        lab.spawn(
            "client",
            ["qemu-io", "-f", "raw", f"iscsi://{VIP_IP}:3260/{IQN}/1", "-c", "sleep 20000"],
            log_name="qemu-io.log",
        )
        show = ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"]
        for _ in range(500):
            res = tgt.runner.run(show, env=tgt.env)
            if parse_tgtadm_show(res.stdout).targets[0].sessions:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("the client never logged in")
        out.setdefault("stop-target with a session (tgtd stays)", []).append(
            _ms(lambda: tgt.stop(spec))
        )


def tgt_under_load(out: Figures, rounds: int) -> None:
    with fresh_lab() as (lab, _):
        root = Path(tempfile.mkdtemp(prefix="tdmbs"))
        try:
            files = LabCluster.create(root)
            with open(files.device, "r+b") as fh:
                fh.write(b"\x5a" * (1 << 20))
            spec = files.spec().spec
            tgt = TgtAdapter(
                lab.runner("node1"), control_dir=str(files.tgt_control_dir("node1")), portal=VIP_IP
            )
            lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
            reads = lab.path("reads.txt")
            reader = lab.spawn(
                "client",
                [sys.executable, str(READER), "reader", "--portal", VIP_IP, "--iqn", LAB_IQN,
                 "--lun", str(LAB_LUN), "--period", "0", "--out", str(reads)],
                log_name="reader.log",
            )  # fmt: skip
            try:
                for _ in range(rounds):
                    tgt.start(spec.target)
                    tgt.export_lun(spec.target, spec.target.luns[0], spec.resources[0])
                    seen = reads.read_text().count(" ok") if reads.exists() else 0
                    for _ in range(500):
                        if (reads.read_text().count(" ok") if reads.exists() else 0) >= seen + 20:
                            break
                        time.sleep(0.01)
                    else:
                        raise RuntimeError("the client never read through the target")
                    tgt.stop(spec.target)
                    out.setdefault("stop-target under continuous reads", []).append(
                        tgt.timings["stop"] * 1000
                    )
            finally:
                reader.send_signal(signal.SIGTERM)
                reader.wait(timeout=5)
                tgt.stop(spec.target)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def vip_round(out: Figures) -> None:
    def add(name: str, value: float) -> None:
        out.setdefault(name, []).append(value)

    with fresh_lab() as (lab, _):
        node1, node2 = adapter(lab, "node1"), adapter(lab, "node2")
        node1.add(the_vip())
        got = vip_cli(lab, "node2", "observe", f"eth0={VIP}", f"eth0={FREE_IP}/24")
        add("vipcli observe, 2 VIPs (one held)", got["ms"])
        add(
            "ARP probe answered (30 ms window)",
            vip_cli(lab, "node2", "probe", "eth0", VIP_IP)["ms"],
        )
        add("ARP probe free (30 ms window)", vip_cli(lab, "node2", "probe", "eth0", FREE_IP)["ms"])

        arp = CommandArp(lab.runner("node2"))
        add(
            "arping probe answered (1st: + start-up)",
            arp.probe("eth0", VIP_IP, timeout=0.03).seconds * 1000,
        )
        add("arping probe free (30 ms)", arp.probe("eth0", FREE_IP, timeout=0.03).seconds * 1000)
        add("arping announce spawn", _ms(lambda: arp.announce("eth0", VIP_IP)))
        arp.drain(timeout=6.0)

        lab.run("client", ["ping", "-c", "1", "-W", "1", VIP_IP])
        node1.remove(the_vip())
        node2.add(the_vip())
        proc = lab.spawn(
            "node2",
            [sys.executable, "-m", "tests.lab.vipcli", "announce", "--netns", lab.ns("node2"),
             "eth0", VIP_IP],
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            log_name="announce.json",
        )  # fmt: skip
        seen_at = None
        for _ in range(2500):
            if lab.neigh("client", VIP_IP) == lab.mac("node2"):
                seen_at = time.monotonic()
                break
            time.sleep(0.002)
        proc.wait(timeout=10)
        report = json.loads(lab.path("announce.json").read_text())
        add("announce() returns (in-process)", report["ms"])
        add("announce, all 3 rounds", report["total_ms"])
        if seen_at is not None:
            add("announce -> client ARP entry moved", (seen_at - report["t_started"]) * 1000)

        live = PingLiveness(
            lab.runner("node1"),
            peer_addresses=[lab.addr("node2"), "198.51.100.130"],
            heuristics=[lab.addr("client"), UNUSED_IP],
            timeout=0.5,
        )
        add("PingLiveness, 4 addresses (one unused)", _ms(live.observe))
        dead = PingLiveness(lab.runner("node1"), peer_addresses=[UNUSED_IP], timeout=0.5)
        add("PingLiveness, unused address alone", _ms(dead.observe))


def lab_round(out: Figures) -> None:
    work = Path(tempfile.mkdtemp(prefix="tdmb"))
    lab = Lab(f"bn{os.getpid() % 100000}-", tmp_dir=work)
    try:
        out.setdefault("lab up", []).append(_ms(lab.up))
    finally:
        out.setdefault("lab down", []).append(_ms(lab.down))
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    reason = lab_unavailable()
    if reason:
        print(f"lab unavailable: {reason}", file=sys.stderr)
        return 2
    out: Figures = {}
    counts: Figures = {}
    for _ in range(args.rounds):
        lab_round(out)
        tgt_round(out, counts)
        vip_round(out)
    tgt_under_load(out, rounds=max(args.rounds, 12))
    for name, values in out.items():
        print(
            f"{name:<44} min {min(values):7.1f}  median {statistics.median(values):7.1f}  "
            f"max {max(values):7.1f} ms  (n={len(values)})"
        )
    for name, values in counts.items():
        print(
            f"{name:<44} min {min(values):7.2f}  median {statistics.median(values):7.2f}  "
            f"max {max(values):7.2f}     (n={len(values)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
