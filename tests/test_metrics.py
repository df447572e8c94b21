"""Metrics of the agent (reconciler.metrics) over the simulated cluster, in-process, and the
HTTP endpoint (reconciler.httpserve) and the cluster view's fetch (reconciler.cluster) over a
real loopback socket."""

from __future__ import annotations

import io
import json
import math
import socket
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from reconciler import cluster
from reconciler.agent import TickReport, write_status
from reconciler.core.observed import ConnState, ObservedState, Role, TargetObs, VipObs
from reconciler.core.planner import plan as make_plan
from reconciler.httpserve import Address, StatusServer, parse_address, status_payload
from reconciler.metrics import Metrics, drbd9_connection_state
from tests.simcluster import SimCluster, demo_spec


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, metric: str, /, **labels: str) -> float:
    return samples(metrics)[(metric, frozenset(labels.items()))]


@pytest.fixture
def sim(tmp_path: Path) -> SimCluster:
    return SimCluster.create(demo_spec(), tmp_path)


def observe_all(sim: SimCluster, metrics: dict[str, Metrics], rounds: int = 6) -> None:
    for _ in range(rounds):
        for node in sim.spec.node_names:
            metrics[node](sim.tick(node))


def test_metric_values_follow_a_failover_one_registry_per_agent(sim: SimCluster) -> None:
    m = {n: Metrics(sim.spec, n) for n in sim.spec.node_names}
    observe_all(sim, m)
    role = "drbd_resource_role"
    assert value(m["node1"], role, name="iscsi1", drbd_resource_role="Primary") == 1
    assert value(m["node1"], role, name="iscsi1", drbd_resource_role="Secondary") == 0
    assert value(m["node2"], role, name="iscsi1", drbd_resource_role="Secondary") == 1
    assert value(m["node1"], "tandem_vip_local", address="198.51.100.3") == 1
    assert value(m["node2"], "tandem_vip_local", address="198.51.100.3") == 0
    assert value(m["node1"], "tandem_target_running") == 1
    assert value(m["node1"], "tandem_role_source_verdict", role="Primary") == 1
    conn = {"name": "iscsi1", "conn_name": "node2", "drbd_connection_state": "Connected"}
    assert value(m["node1"], "drbd_connection_state", **conn) == 1

    sim.world.pool_master = "node2"
    observe_all(sim, m)
    assert value(m["node1"], role, name="iscsi1", drbd_resource_role="Secondary") == 1
    assert value(m["node2"], role, name="iscsi1", drbd_resource_role="Primary") == 1
    assert value(m["node1"], "tandem_vip_local", address="198.51.100.3") == 0
    assert value(m["node2"], "tandem_vip_local", address="198.51.100.3") == 1
    assert value(m["node2"], "tandem_target_running") == 1
    # The old primary's target is gone; its resident tgtd stays.
    assert value(m["node1"], "tandem_target_running") == 0
    assert value(m["node1"], "tandem_target_daemon_running") == 1
    assert value(m["node1"], "tandem_desired_role", role="Secondary") == 1
    # Each action counted once by kind and result; node1's bring-up and node2's takeover.
    assert value(m["node1"], "tandem_actions_total", kind="promote", result="ok") == 1
    assert value(m["node1"], "tandem_actions_total", kind="demote", result="ok") == 1
    assert value(m["node2"], "tandem_actions_total", kind="promote", result="ok") == 1
    ticks = value(m["node1"], "tandem_tick_duration_seconds_count")
    assert ticks == 12


def test_blocked_by_kind_while_the_peer_is_still_primary(sim: SimCluster) -> None:
    sim.converge()
    metrics = Metrics(sim.spec, "node2")
    sim.world.pool_master = "node2"
    metrics(sim.tick("node2"))  # node1 has not demoted yet
    assert value(metrics, "tandem_blocked", kind="peer-primary") == 1
    assert value(metrics, "tandem_blocked", kind="split-brain") == 0
    assert value(metrics, "tandem_last_tick_exit_code") == 3
    sim.tick("node1")
    metrics(sim.tick("node2"))
    assert value(metrics, "tandem_blocked", kind="peer-primary") == 0


def test_what_the_observation_could_not_tell_is_nan_not_a_guess(sim: SimCluster) -> None:
    sim.converge()
    report = sim.tick("node1")
    blind = replace(
        report.observed,
        target=TargetObs(running=None, error="tgtadm timed out"),
        vips=(VipObs(address="198.51.100.3", local=None, error="ip failed"),),
    )
    metrics = Metrics(sim.spec, "node1")
    metrics(_report(sim, blind))
    assert math.isnan(value(metrics, "tandem_target_running"))
    assert math.isnan(value(metrics, "tandem_vip_local", address="198.51.100.3"))
    assert math.isnan(value(metrics, "tandem_drbd_sync_percent", name="iscsi1"))
    unknown = replace(
        report.observed, resources=(replace(report.observed.resources[0], known=False),)
    )
    metrics(_report(sim, unknown))
    connection = [v for (n, _labels), v in samples(metrics).items() if n == "drbd_connection_state"]
    assert connection and not any(connection), "an unknown connection has no 1"
    assert value(metrics, "tandem_degraded", name="iscsi1") == 1


def _report(sim: SimCluster, observed: ObservedState) -> TickReport:
    return TickReport(observed, make_plan(sim.spec, observed), None, 1.0, 0.01)


@pytest.mark.parametrize(
    ("conn", "drbd9"),
    [
        (ConnState.CONNECTED, "Connected"),
        (ConnState.SYNC_SOURCE, "Connected"),
        (ConnState.VERIFY_T, "Connected"),
        (ConnState.WF_CONNECTION, "Connecting"),
        (ConnState.STANDALONE, "StandAlone"),
        (ConnState.NETWORK_FAILURE, "NetworkFailure"),
        (ConnState.UNKNOWN, None),
    ],
)
def test_drbd9_connection_state(conn: ConnState, drbd9: str | None) -> None:
    assert drbd9_connection_state(conn) == drbd9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9942", Address("127.0.0.1", 9942)),
        ("[::1]:9942", Address("::1", 9942)),
        ("mgmt-1.example:80", Address("mgmt-1.example", 80)),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("9942", "HOST:PORT"),
        ("127.0.0.1:0", "out of range"),
        ("127.0.0.1:70000", "out of range"),
        ("::1:9942", "HOST:PORT"),
        ("bad_host!:80", "neither an IP"),
    ],
)
def test_parse_address_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_address(text)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_server_serves_metrics_and_the_status_record_and_closes(
    sim: SimCluster, tmp_path: Path
) -> None:
    metrics = Metrics(sim.spec, "node1")
    server = StatusServer(
        Address("127.0.0.1", 0),
        metrics=metrics.render,
        status=lambda: status_payload(tmp_path, "node1"),
    ).start()
    base = server.address.url
    try:
        code, _ctype, body = _get(base + "/status")
        assert code == 503 and "no status record yet" in json.loads(body)["error"]
        sim.converge()
        report = sim.tick("node1")
        metrics(report)
        write_status(tmp_path, report)
        code, ctype, body = _get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert b'drbd_resource_role{drbd_resource_role="Primary",name="iscsi1"} 1.0' in body
        code, ctype, body = _get(base + "/status")
        assert code == 200 and ctype == "application/json"
        assert json.loads(body)["node"] == "node1"
        assert json.loads(body) == json.loads((tmp_path / "status-node1.json").read_text())
        assert _get(base + "/secret")[0] == 404
        (tmp_path / "status-node1.json").write_text("{not json")
        code, _ctype, body = _get(base + "/status")
        assert code == 503 and "unreadable" in json.loads(body)["error"]
    finally:
        server.close()
    # Closed: the listening socket is gone and nothing answers.
    with socket.socket() as again:
        # SO_REUSEADDR: connections in TIME_WAIT are fine; only a live listener would refuse.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.address.port))
    view = cluster.fetch_view("node1", base + "/status", timeout=1)
    assert view.unreachable and view.record is None


def test_cluster_view_names_the_node_that_did_not_answer(sim: SimCluster, tmp_path: Path) -> None:
    sim.converge()
    write_status(tmp_path, sim.tick("node1"))
    # A peer that accepts the connection but never answers: the request times out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/status"
        peer = cluster.fetch_view("node2", url, timeout=0.2)
    assert peer.unreachable and "no answer within 0.2 s" in (peer.problem or "")
    here = cluster.local_view(tmp_path, "node1")
    record = here.record
    assert record is not None
    console = Console(record=True, width=160, file=io.StringIO())
    ok = cluster.render_cluster(console, sim.spec, [here, peer], record.time)
    text = console.export_text()
    assert not ok
    assert "node2 could not be reached" in text and url in text
    assert "iscsi1 role:Primary" in text and "UNREACHABLE" in text
    assert cluster.as_json([here, peer], ok)["nodes"]["node2"]["unreachable"] is True


def test_peer_url_from_the_flag_or_the_spec() -> None:
    spec = demo_spec()
    assert cluster.peer_url(spec, "node2", None) is None
    assert cluster.peer_url(spec, "node2", "10.0.0.2:9942") == "http://10.0.0.2:9942/status"
    nodes = list(spec.spec.nodes)
    nodes[1] = nodes[1].model_copy(update={"status_address": "198.51.100.2:9942"})
    with_address = spec.model_copy(
        update={"spec": spec.spec.model_copy(update={"nodes": tuple(nodes)})}
    )
    assert cluster.peer_url(with_address, "node2", None) == "http://198.51.100.2:9942/status"


def test_events_tail_hook_reads_nothing_from_todays_records(
    sim: SimCluster, tmp_path: Path
) -> None:
    write_status(tmp_path, sim.tick("node1"))
    view = cluster.local_view(tmp_path, "node1")
    assert cluster.events_tail(view) == []
    with_events = replace(view, raw={**view.raw, "events": ["a", {"action": "promote"}]})
    assert cluster.events_tail(with_events) == ["a", "promote"]


def test_the_record_role_is_typed(sim: SimCluster, tmp_path: Path) -> None:
    write_status(tmp_path, sim.tick("node1"))
    record = cluster.local_view(tmp_path, "node1").record
    assert record is not None and record.desired_role is Role.PRIMARY


def test_command_spawns_are_counted_across_ticks_and_a_rebuilt_runner(sim: SimCluster) -> None:
    """``spawns_total`` is the runner's count at the end of each tick (in the report and its
    JSON); the counter adds its growth, and a rebuilt runner's whole count."""
    from adapters.runner import Runner

    m = Metrics(sim.spec, "node1")
    runner = sim.adapters["node1"].runner
    assert runner is not None
    first = sim.tick("node1")  # the simulated concerns run no command
    assert first.spawns_total == runner.spawned == 0
    m(first)
    runner.run(["true"])
    runner.run(["true"])
    second = sim.tick("node1")
    assert second.spawns_total == 2 and second.to_json()["spawns_total"] == 2
    m(second)
    m(sim.tick("node1"))  # nothing new
    assert value(m, "tandem_command_spawns_total") == 2
    fresh = Runner()  # adapters rebuilt for a spec edit: a new runner from zero
    sim.adapters["node1"].runner = fresh
    fresh.run(["true"])
    m(sim.tick("node1"))
    assert value(m, "tandem_command_spawns_total") == 3
