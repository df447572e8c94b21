"""Real agents over HTTP: `reconcile --watch --metrics-address` on the embedded demo (two
subprocesses sharing one simulated world in tmp_path), scraped with urllib, checked with
Prometheus' own `promtool check metrics`, and `reconcile status --cluster` against them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

RECONCILE = shutil.which("reconcile") or ""
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    not RECONCILE, reason="reconcile is not installed (pip install -e .)"
)
VIP = "198.51.100.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(state: Path) -> dict[str, str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state))
    env.pop("TANDEM_SPEC", None)
    env.pop("TANDEM_NODE", None)
    return env


def run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILE, *args], capture_output=True, text=True, env=env_for(state), timeout=60
    )


class Agents:
    """`reconcile --watch` agents, each with its metrics address; killed by PID at the end."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.urls: dict[str, str] = {}

    def start(self, node: str) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [
                RECONCILE,
                "--watch",
                "--node",
                node,
                "--interval",
                "0.2",
                "--metrics-address",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(self.state),
        )
        self.procs[node] = proc
        self.urls[node] = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(self.urls[node] + "/status")[0] == 200, f"{node}'s agent serving")
        return self.urls[node]

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tmp_path)
    try:
        yield a
    finally:
        a.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_for(cond: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    code, body = get(url + "/metrics")
    assert code == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def role_is(url: str, role: str) -> bool:
    key = ("drbd_resource_role", frozenset({("name", "iscsi1"), ("drbd_resource_role", role)}))
    return scrape(url).get(key) == 1


def vip_local(url: str) -> float | None:
    return scrape(url).get(("tandem_vip_local", frozenset({("address", VIP)})))


@pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool missing: apt-get install --no-install-recommends prometheus (CI does)",
)
def test_a_running_agents_metrics_pass_promtool(agents: Agents) -> None:
    url = agents.start("node1")
    wait_for(lambda: role_is(url, "Primary"), "node1 Primary in its metrics")
    _code, body = get(url + "/metrics")
    check = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert b"tandem_tick_duration_seconds_bucket" in body


def test_metrics_follow_a_role_move_between_two_running_agents(
    agents: Agents, tmp_path: Path
) -> None:
    one = agents.start("node1")
    two = agents.start("node2")
    wait_for(lambda: role_is(one, "Primary") and vip_local(one) == 1, "node1 serving")
    wait_for(lambda: role_is(two, "Secondary") and vip_local(two) == 0, "node2 standing by")
    for node in ("node1", "node2"):
        assert run(tmp_path, "manual-mode", "enable", "--node", node).returncode == 0
    moved = run(tmp_path, "become-secondary", "--node", "node1", "--json")
    assert moved.returncode == 0 and json.loads(moved.stdout)["deferred_to_agent"]
    wait_for(lambda: role_is(one, "Secondary") and vip_local(one) == 0, "node1 stepped down")
    # node2's agent holds its lock: the command records the choice and node2's agent acts.
    wait_for(
        lambda: run(tmp_path, "become-primary", "--node", "node2").returncode == 0,
        "node2 accepted as Primary",
    )
    wait_for(lambda: role_is(two, "Primary") and vip_local(two) == 1, "node2 serving")
    after = scrape(two)
    ok = after[("tandem_actions_total", frozenset({("kind", "promote"), ("result", "ok")}))]
    assert ok >= 1
    assert after[("tandem_manual_mode", frozenset())] == 1


def test_status_cluster_against_two_agents_and_with_one_stopped(
    agents: Agents, tmp_path: Path
) -> None:
    agents.start("node1")
    two = agents.start("node2")
    wait_for(lambda: role_is(two, "Secondary"), "node2 standing by")
    code, body = get(two + "/status")
    record = json.loads(body)
    assert code == 200 and record["node"] == "node2" and record["desired_role"] == "Secondary"
    peer = two.removeprefix("http://")
    both = run(tmp_path, "status", "--cluster", "--node", "node1", "--peer", peer)
    assert both.returncode == 0, both.stdout + both.stderr
    assert "iscsi1 role:Primary" in both.stdout and "iscsi1 role:Secondary" in both.stdout
    assert "could not be reached" not in both.stdout
    as_json = run(tmp_path, "status", "--cluster", "--node", "node1", "--peer", peer, "--json")
    nodes = json.loads(as_json.stdout)["nodes"]
    assert as_json.returncode == 0 and nodes["node2"]["record"]["node"] == "node2"

    agents.stop("node2")
    one_left = run(tmp_path, "status", "--cluster", "--node", "node1", "--peer", peer)
    assert one_left.returncode == 1
    assert "node2 could not be reached" in one_left.stdout
    assert "node1 could not be reached" not in one_left.stdout
    assert "iscsi1 role:Primary" in one_left.stdout  # node1 is still shown


def test_a_busy_metrics_address_is_a_clear_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run(tmp_path, "--watch", "--node", "node1", "--metrics-address", f"127.0.0.1:{port}")
    assert r.returncode == 2
    assert "cannot listen there" in r.stderr and "Traceback" not in r.stderr


def test_status_cluster_without_a_peer_address_says_how_to_give_one(tmp_path: Path) -> None:
    r = run(tmp_path, "status", "--cluster", "--node", "node1")
    assert r.returncode == 2 and "--peer" in r.stderr and "statusAddress" in r.stderr
