"""TgtAdapter.stop while a client keeps reading: tgt refuses ``target delete --force`` while a
LUN has a command in flight, which once made every such stop wait the full ``stop_timeout``
(1 s) before SIGKILL, with sessions still serving. Now a refused delete means SIGKILL at once.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.tgt import TgtAdapter
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.lab.specs import IQN, LUN, LabCluster

pytestmark = pytest.mark.lab

READER = Path(__file__).resolve().parents[1] / "bench" / "swap.py"
STOP_TIMEOUT = 20.0


@pytest.fixture
def files() -> Iterator[LabCluster]:
    root = Path(tempfile.mkdtemp(prefix="tdmstop"))  # short: tgtd's socket path
    try:
        yield LabCluster.create(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_stop_under_continuous_reads_is_fast(lab: Lab, files: LabCluster) -> None:
    with open(files.device, "r+b") as fh:
        fh.write(b"\x5a" * (1 << 20))
    spec = files.spec().spec
    # A stop_timeout far above any stop's real duration: the regression (waiting it out after
    # tgt refused the delete) shows as a stop that took the whole timeout, not as a slow box.
    tgt = TgtAdapter(
        lab.runner("node1"),
        control_dir=str(files.tgt_control_dir("node1")),
        portal=VIP_IP,
        stop_timeout=STOP_TIMEOUT,
    )
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
    reads = lab.path("reads.txt")
    reader = lab.spawn(
        "client",
        [sys.executable, str(READER), "reader", "--portal", VIP_IP, "--iqn", IQN,
         "--lun", str(LUN), "--period", "0", "--out", str(reads)],
        log_name="reader.log",
    )  # fmt: skip
    stops = []
    try:
        for _ in range(12):
            tgt.start(spec.target)
            tgt.export_lun(spec.target, spec.target.luns[0], spec.resources[0])
            seen = reads.read_text().count(" ok") if reads.exists() else 0
            deadline = time.monotonic() + 5
            while (reads.read_text().count(" ok") if reads.exists() else 0) < seen + 20:
                assert time.monotonic() < deadline, "the client never read through the target"
                time.sleep(0.01)
            tgt.stop(spec.target)
            stops.append(tgt.timings["stop"])
            assert tgt.observe(spec.target).running is False
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait(timeout=5)
        tgt.stop(spec.target)
    # No stop waited for the daemon to exit by itself (how long stops take: tests/bench/lab.py).
    assert max(stops) < STOP_TIMEOUT, stops
