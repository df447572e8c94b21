"""Benchmark: the idle cost of the metrics and status server (not collected by pytest).

    python tests/bench/idle_metrics.py [--seconds N] [--rounds R] [--scrape-every S]

Runs two `reconcile --watch --node node1 --interval 1` agents on the embedded demo at the same
time, each in its own state directory: one plain, one with `--metrics-address 127.0.0.1:PORT`
(scraped at `/metrics` every S seconds, 15 by default: Prometheus' default interval; 0: never).
After a warm-up it reads each agent's CPU time (utime + stime from /proc/PID/stat) over N
seconds and prints the CPU share of each (CPU seconds / wall seconds), per round and the
median. Both run side by side so they see the same machine noise. It prints figures; it
asserts nothing (no timed asserts anywhere in the suite).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(state: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
    env.pop("TANDEM_SPEC", None)
    cmd = shutil.which("reconcile") or "reconcile"
    return subprocess.Popen(
        [cmd, "--watch", "--node", "node1", "--interval", "1", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def one_round(seconds: float, scrape_every: float, warmup: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        port = free_port()
        plain = start(Path(a), [])
        served = start(Path(b), ["--metrics-address", f"127.0.0.1:{port}"])
        try:
            time.sleep(warmup)  # start-up (imports, bring-up ticks) is not idle cost
            t0 = time.monotonic()
            c0 = cpu_seconds(plain.pid), cpu_seconds(served.pid)
            next_scrape = t0
            while (now := time.monotonic()) < t0 + seconds:
                if scrape_every > 0 and now >= next_scrape:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5):
                        pass
                    next_scrape += scrape_every
                time.sleep(min(0.2, t0 + seconds - now))
            c1 = cpu_seconds(plain.pid), cpu_seconds(served.pid)
            wall = time.monotonic() - t0
        finally:
            for proc in (plain, served):
                os.kill(proc.pid, signal.SIGTERM)
            for proc in (plain, served):
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        return (c1[0] - c0[0]) / wall, (c1[1] - c0[1]) / wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scrape-every", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=4.0)
    args = p.parse_args()
    plain, served = [], []
    for i in range(args.rounds):
        a, b = one_round(args.seconds, args.scrape_every, args.warmup)
        plain.append(a)
        served.append(b)
        print(
            f"round {i + 1}: without metrics {a * 100:.2f}% CPU, "
            f"with --metrics-address {b * 100:.2f}% CPU ({args.seconds:g} s at 1 s ticks)"
        )
        sys.stdout.flush()
    scraped = f"scraped every {args.scrape_every:g} s" if args.scrape_every > 0 else "never scraped"
    print(
        f"median over {args.rounds} rounds: without {statistics.median(plain) * 100:.2f}%, "
        f"with {statistics.median(served) * 100:.2f}% of one core "
        f"({scraped}; clock ticks of {1 / TICKS * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
