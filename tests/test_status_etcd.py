"""Many pairs, one place (issue 15): agents publish their status records in the real 3-member
etcd, and `reconcile status --cluster NAME` / `--all` read them back, as users run them (real
subprocesses on the demo spec with a ``witness`` section)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.witness.gateway import EtcdGateway
from adapters.witness.status import read_cluster
from tests import etcd_cluster
from tests.etcd_cluster import EtcdCluster, free_port
from tests.simcluster import ROOT
from tests.waiting import wait_for

RECONCILE = shutil.which("reconcile") or ""
pytestmark = pytest.mark.skipif(
    not RECONCILE, reason="reconcile is not installed (pip install -e .)"
)
DEMO = (ROOT / "specs" / "demo.yaml").read_text()
_n = iter(range(1, 10_000))
etcd = etcd_cluster.etcd  # the session's real 3-member etcd (a fixture)


def spec_file(where: Path, *, name: str, endpoints: list[str] | None, prefix: str) -> Path:
    text = DEMO.replace("  name: demo\n", f"  name: {name}\n")
    # Fresh means "younger than tickInterval + statusStaleness": generous, so a loaded machine
    # running the commands one after the other never makes a record stale by itself.
    text = text.replace("    tickInterval: 2\n", "    tickInterval: 2\n    statusStaleness: 600\n")
    if endpoints is not None:
        urls = ", ".join(endpoints)
        section = (
            f"  witness:\n    endpoints: [{urls}]\n    prefix: {prefix}\n    retryTimeout: 1\n"
        )
        text = text.replace("  timings:\n", section + "  timings:\n")
    path = where / f"{name}.yaml"
    path.write_text(text)
    return path


def run(state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state))
    env.pop("TANDEM_SPEC", None)
    env.pop("TANDEM_NODE", None)
    return subprocess.run(
        [RECONCILE, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def prefix() -> str:
    return f"/tandem-cli-{os.getpid()}-{next(_n)}/"


@pytest.fixture
def two_clusters(etcd: EtcdCluster, tmp_path: Path, prefix: str) -> Iterator[dict[str, Path]]:
    """Two demo clusters (alpha, beta) sharing the etcd, each ticked once on both nodes."""
    specs = {}
    for name in ("alpha", "beta"):
        state = tmp_path / name
        state.mkdir()
        spec = spec_file(tmp_path, name=name, endpoints=etcd.endpoints, prefix=prefix)
        for node in ("node1", "node2"):
            r = run(state, "--once", "-f", str(spec), "--node", node)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "not published" not in r.stderr
        specs[name] = spec
    yield specs


def test_status_cluster_name_reads_the_records_from_etcd(
    two_clusters: dict[str, Path], tmp_path: Path
) -> None:
    spec = str(two_clusters["alpha"])
    text = run(tmp_path, "status", "-f", spec, "--cluster", "alpha")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "cluster alpha" in text.stdout and "witness key free" in text.stdout
    assert "node1" in text.stdout and "node2" in text.stdout and "Primary" in text.stdout
    as_json = run(tmp_path, "status", "-f", spec, "--cluster", "alpha", "--json")
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert shown["ok"] is True and shown["cluster"] == "alpha"
    assert sorted(shown["nodes"]) == ["node1", "node2"]
    for node, entry in shown["nodes"].items():
        assert entry["record"]["node"] == node and entry["stale"] is False
    # beta's records are beta's: one cluster's read does not mix in another's
    beta = json.loads(run(tmp_path, "status", "-f", spec, "--cluster", "beta", "--json").stdout)
    assert beta["cluster"] == "beta" and sorted(beta["nodes"]) == ["node1", "node2"]


def test_status_all_lists_every_cluster_sharing_the_etcd(
    two_clusters: dict[str, Path], tmp_path: Path, etcd: EtcdCluster, prefix: str
) -> None:
    text = run(tmp_path, "status", "-f", str(two_clusters["beta"]), "--all")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "alpha" in text.stdout and "beta" in text.stdout
    # An operator machine without the clusters' specs: the embedded demo and --etcd.
    urls = [a for url in etcd.endpoints for a in ("--etcd", url)]
    bare = json.loads(run(tmp_path, "status", "--all", "--json", *urls).stdout)
    # the demo's prefix is the default /tandem/, not this test's: none of these clusters there
    assert bare["prefix"] == "/tandem/"
    assert not {c["cluster"] for c in bare["clusters"]} & {"alpha", "beta"}
    spec_json = run(tmp_path, "status", "-f", str(two_clusters["alpha"]), "--all", "--json")
    listed = json.loads(spec_json.stdout)
    assert spec_json.returncode == 0 and listed["ok"] is True and listed["prefix"] == prefix
    assert [c["cluster"] for c in listed["clusters"]] == ["alpha", "beta"]


def test_a_stale_record_fails_the_status(
    two_clusters: dict[str, Path], tmp_path: Path, etcd: EtcdCluster, prefix: str
) -> None:
    gateway = EtcdGateway(etcd.endpoints, timeout=2)
    found = read_cluster(gateway, prefix=prefix, cluster="alpha")
    old = json.loads(found.records["node2"])
    old["time"] -= 3600  # the agent on node2 stopped an hour ago
    from adapters.witness.status import EtcdStatusPublisher

    publisher = EtcdStatusPublisher(gateway, prefix=prefix, cluster="alpha", node="node2")
    assert publisher.publish_now(json.dumps(old)) is None
    publisher.close()
    r = run(tmp_path, "status", "-f", str(two_clusters["alpha"]), "--cluster", "alpha")
    assert r.returncode == 1 and "STALE" in r.stdout
    listed = run(tmp_path, "status", "-f", str(two_clusters["alpha"]), "--all")
    assert listed.returncode == 1 and "STALE OR MISSING" in listed.stdout


def test_an_unreachable_etcd_is_said_in_words(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = run(tmp_path, "status", "--cluster", "alpha", "--etcd", url)
    assert r.returncode == 1
    assert "cannot read the status records from etcd" in r.stdout and url in r.stdout
    as_json = run(tmp_path, "status", "--all", "--json", "--etcd", url)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False


def test_no_etcd_known_is_a_usage_error(tmp_path: Path) -> None:
    r = run(tmp_path, "status", "--cluster", "alpha")  # the embedded demo has no witness
    assert r.returncode == 2 and "--etcd" in r.stderr
    assert run(tmp_path, "status", "--all", "--cluster", "x").returncode == 2
    assert run(tmp_path, "status", "--etcd", "http://127.0.0.1:1").returncode == 2


def test_a_once_run_with_etcd_down_still_ticks_and_says_so(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    spec = spec_file(tmp_path, name="lonely", endpoints=[url], prefix="/tandem/")
    r = run(tmp_path, "--once", "-f", str(spec), "--node", "node1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "status not published in etcd" in r.stderr
    assert (tmp_path / "status-node1.json").exists()


def test_a_watching_agent_publishes_every_tick(
    etcd: EtcdCluster, tmp_path: Path, prefix: str
) -> None:
    spec = spec_file(tmp_path, name="watched", endpoints=etcd.endpoints, prefix=prefix)
    env = dict(os.environ, TANDEM_STATE_DIR=str(tmp_path))
    env.pop("TANDEM_SPEC", None)
    proc = subprocess.Popen(
        [RECONCILE, "--watch", "-f", str(spec), "--node", "node1", "--interval", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gateway = EtcdGateway(etcd.endpoints, timeout=2)
    try:
        times: list[float] = []

        def newer() -> bool:
            text = read_cluster(gateway, prefix=prefix, cluster="watched").records.get("node1")
            if text is None:
                return False
            stamp = float(json.loads(text)["time"])
            if not times or stamp > times[-1]:
                times.append(stamp)
            return len(times) >= 3

        wait_for("three successive records of node1 in etcd", newer, timeout=30, interval=0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        gateway.close()
    assert times == sorted(times) and time.time() - times[-1] < 3600
