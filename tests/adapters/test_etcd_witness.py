"""EtcdWitness beyond the shared contract: garbage from the gateway, the endpoint rules, and
how ``lease_left`` is counted (a test clock against the real etcd)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from adapters.witness.etcd import EtcdWitness, LeaseRecord, lease_record_path
from adapters.witness.gateway import EtcdGateway, parse_endpoint
from reconciler.core.errors import TransientError
from tests.etcd_cluster import EtcdCluster


class _Garbage(BaseHTTPRequestHandler):
    answers: list[tuple[int, bytes]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body = self.answers[0] if self.answers else (200, b"")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def garbage_gateway() -> Iterator[tuple[str, type[_Garbage]]]:
    handler = type("Handler", (_Garbage,), {"answers": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _witness(url: str, tmp_path: Path, **kw: object) -> EtcdWitness:
    return EtcdWitness(
        EtcdGateway([url], timeout=1.0),
        cluster="c",
        node="node1",
        prefix="/t/",
        ttl=3.0,
        record_path=lease_record_path(tmp_path, "node1"),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"<html>a proxy's login page</html>"),
        (200, json.dumps({"kvs": "nope"}).encode()),
        (200, json.dumps({"header": {}, "kvs": [{"value": "***not base64***"}]}).encode()),
        (200, json.dumps({"header": {}, "kvs": [{"value": "//79/Q=="}]}).encode()),  # not UTF-8
        (200, json.dumps([1, 2]).encode()),
    ],
)
def test_garbage_from_the_gateway_is_unknown(
    garbage_gateway: tuple[str, type[_Garbage]], tmp_path: Path, answer: tuple[int, bytes]
) -> None:
    url, handler = garbage_gateway
    handler.answers[:] = [answer]
    witness = _witness(url, tmp_path)
    obs = witness.observe()
    assert obs.enabled and obs.reachable is False and obs.holder is None
    assert obs.error is not None and "garbage" in obs.error
    with pytest.raises(TransientError, match="garbage"):
        witness.claim()


def test_an_error_page_is_unreachable_not_a_crash(
    garbage_gateway: tuple[str, type[_Garbage]], tmp_path: Path
) -> None:
    url, handler = garbage_gateway
    handler.answers[:] = [(503, b"etcdserver: no leader")]
    obs = _witness(url, tmp_path).observe()
    assert obs.reachable is False and obs.error is not None and "no leader" in obs.error


def test_nothing_listening_is_unreachable(tmp_path: Path) -> None:
    from tests.etcd_cluster import free_port

    obs = _witness(f"http://127.0.0.1:{free_port()}", tmp_path).observe()
    assert obs.reachable is False and obs.holder is None and obs.lease_left is None


def test_https_to_a_plain_server_is_unreachable(
    garbage_gateway: tuple[str, type[_Garbage]], tmp_path: Path
) -> None:
    url, _ = garbage_gateway
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    gateway = EtcdGateway([url.replace("http:", "https:")], timeout=1.0, ca_file=str(ca))
    witness = EtcdWitness(
        gateway, cluster="c", node="node1", prefix="/t/", ttl=3, record_path=tmp_path / "w.json"
    )
    obs = witness.observe()
    assert obs.reachable is False and obs.error


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("etcd1:2379", "http"),
        ("ftp://etcd1:2379", "http"),
        ("http://user:secret@etcd1:2379", "credentials"),
        ("http://etcd1:2379/v3", "only scheme"),
        ("http://:2379", "no host"),
    ],
)
def test_endpoint_rules(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_endpoint(url)


def test_endpoint_default_port_and_https() -> None:
    e = parse_endpoint("https://etcd-a.example")
    assert (e.protocol, e.host, e.port) == ("https", "etcd-a.example", 2379)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lease_left_counts_from_the_send_time_and_survives_unreachability(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    clock = _Clock()
    link = etcd.link()
    boot = ["boot-a"]
    witness = EtcdWitness(
        EtcdGateway(link.endpoints, timeout=0.6),
        cluster="clock",
        node="node1",
        prefix="/tandem-test/",
        ttl=3.0,
        record_path=lease_record_path(tmp_path, "node1"),
        clock=clock,
        boot=lambda: boot[0],
    )
    try:
        witness.claim()
        record = LeaseRecord.of(json.loads(lease_record_path(tmp_path, "node1").read_text()))
        assert record.sent == 1000.0 and record.ttl == 3.0 and record.boot == "boot-a"
        clock.now += 1.25
        assert witness.observe().lease_left == pytest.approx(1.75)
        link.cut()
        cut = witness.observe()
        assert cut.reachable is False and cut.lease_left == pytest.approx(1.75)
        clock.now += 5
        assert witness.observe().lease_left == 0.0
        boot[0] = "boot-b"  # rebooted: the recorded send time is on another clock
        assert witness.observe().lease_left is None
        link.heal()
        witness.claim()  # the refresh is sent at the new boot's time
        assert witness.observe().lease_left == pytest.approx(3.0)
        witness.release()
        assert not lease_record_path(tmp_path, "node1").exists()
    finally:
        witness.close()
        link.close()


def test_the_factory_builds_the_etcd_witness_from_the_spec(tmp_path: Path) -> None:
    from adapters.factory import build_adapters
    from reconciler.core.specload import load_spec
    from tests.simcluster import ROOT

    text = (ROOT / "specs" / "demo.yaml").read_text()
    text = text.replace("whenDisconnected: quorum", "whenDisconnected: witness")
    text = text.replace(
        "  timings:\n",
        "  witness:\n    endpoints: [https://etcd-a.example:2379, https://etcd-b.example]\n"
        "    prefix: /site-a/\n    ttl: 14\n    caFile: /etc/tandem/etcd-ca.pem\n  timings:\n",
    )
    spec = load_spec(text)
    assert spec.spec.adapters.witness == "etcd"
    adapters = build_adapters(spec, "node2", tmp_path)
    witness = adapters.witness
    assert isinstance(witness, EtcdWitness)
    assert witness.key == "/site-a/demo/leader" and witness.node == "node2" and witness.ttl == 14
    assert witness.record_path == lease_record_path(tmp_path.absolute(), "node2")
    assert [e.port for e in witness.gateway.endpoints] == [2379, 2379]
    assert witness.gateway.timeout == 2.0
    adapters.close()  # opened nothing: building starts nothing


def test_a_client_certificate_needs_its_key() -> None:
    from reconciler.core.specload import SpecError, load_spec
    from tests.simcluster import ROOT

    text = (
        (ROOT / "specs" / "demo.yaml")
        .read_text()
        .replace(
            "  timings:\n", "  witness:\n    certFile: /etc/tandem/etcd-client.pem\n  timings:\n"
        )
    )
    with pytest.raises(SpecError, match=r"certFile and witness\.keyFile go together"):
        load_spec(text)
