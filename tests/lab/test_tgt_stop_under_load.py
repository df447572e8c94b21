"""TgtAdapter.stop while a client keeps reading: tgt refuses ``target delete --force`` while a
LUN has a command in flight, which once made every such stop wait the full ``stop_timeout``
(1 s) before SIGKILL, with sessions still serving. Now a refused delete means SIGKILL at once.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.tgt import TgtAdapter
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.lab.specs import IQN, LUN, LabCluster
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

READER = Path(__file__).resolve().parents[1] / "bench" / "swap.py"
STOP_TIMEOUT = 20.0


def reads_ok(path: Path) -> int:
    """Reads the client logged as verified so far."""
    return path.read_text().count(" ok") if path.exists() else 0


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
            want = reads_ok(reads) + 20
            wait_for(
                "20 more client reads through the target",
                lambda: reads_ok(reads) >= want,  # noqa: B023  (called before `want` changes)
                timeout=5,
            )
            tgt.stop(spec.target)
            stops.append(tgt.timings["stop"])
            assert tgt.observe(spec.target).running is False
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait(timeout=5)
        tgt.stop(spec.target)
    # No stop waited for the daemon to exit by itself (how long stops take: tests/bench/lab.py).
    assert max(stops) < STOP_TIMEOUT, stops
