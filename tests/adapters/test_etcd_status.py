"""Status records in etcd (many pairs, one place) on the real 3-member etcd: publishing is
best effort and the newest record wins; reading finds one cluster or every cluster sharing the
etcd, and leaves keys that are not tandem's alone."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import requests

from adapters.witness.etcd import EtcdWitness, lease_record_path
from adapters.witness.gateway import EtcdGateway, EtcdUnavailable
from adapters.witness.status import EtcdStatusPublisher, read_all, read_cluster
from tests.etcd_cluster import EtcdCluster, NodeLink
from tests.waiting import wait_for

PREFIX = "/tandem-status-test/"


@pytest.fixture
def link(etcd: EtcdCluster) -> Iterator[NodeLink]:
    made = etcd.link()
    try:
        yield made
    finally:
        made.close()


def _gateway(link: NodeLink) -> EtcdGateway:
    return EtcdGateway(link.endpoints, timeout=0.6)


def _record(node: str, n: int) -> str:
    return json.dumps({"node": node, "n": n})


def test_the_newest_record_is_published_and_read_back(link: NodeLink) -> None:
    publisher = EtcdStatusPublisher(_gateway(link), prefix=PREFIX, cluster="pub1", node="node1")
    reader = _gateway(link)
    try:
        for n in range(5):
            publisher.offer(_record("node1", n))
        wait_for(
            "the last record in etcd",
            lambda: (
                read_cluster(reader, prefix=PREFIX, cluster="pub1").records.get("node1")
                == _record("node1", 4)
            ),
        )
    finally:
        publisher.close()
        reader.close()
    publisher.offer(_record("node1", 9))  # after close: dropped, no thread, no error


def test_publishing_to_an_unreachable_etcd_says_why_and_never_raises(link: NodeLink) -> None:
    publisher = EtcdStatusPublisher(_gateway(link), prefix=PREFIX, cluster="pub2", node="node1")
    link.cut()
    try:
        problem = publisher.publish_now(_record("node1", 1))
        assert problem is not None and "timed out" in problem
        assert publisher.error == problem and publisher.published == 0
        publisher.offer(_record("node1", 2))
        link.heal()
        publisher.offer(_record("node1", 3))
        reader = _gateway(link)
        wait_for(
            "the record after the cut healed",
            lambda: (
                read_cluster(reader, prefix=PREFIX, cluster="pub2").records.get("node1")
                == _record("node1", 3)
            ),
        )
        reader.close()
    finally:
        publisher.close()


def test_every_cluster_sharing_the_etcd_is_listed(etcd: EtcdCluster, link: NodeLink) -> None:
    prefix = "/tandem-all-test/"
    gateway = _gateway(link)
    for cluster, nodes in (("alpha", ("a1", "a2")), ("beta", ("b1",))):
        for node in nodes:
            p = EtcdStatusPublisher(_gateway(link), prefix=prefix, cluster=cluster, node=node)
            assert p.publish_now(_record(node, 0)) is None
            p.close()
    witness = EtcdWitness(
        _gateway(link),
        cluster="beta",
        node="b1",
        prefix=prefix,
        ttl=5,
        record_path=lease_record_path(etcd.base, "b1-list"),
    )
    witness.claim()
    # A key under the prefix that is not tandem's: not a cluster, not an error.
    key = base64.b64encode(f"{prefix}notes/readme.txt".encode()).decode()
    requests.post(f"{etcd.endpoints[0]}/v3/kv/put", json={"key": key, "value": ""}, timeout=5)
    try:
        every = read_all(gateway, prefix=prefix)
        assert [c.cluster for c in every] == ["alpha", "beta"]
        alpha, beta = every
        assert sorted(alpha.records) == ["a1", "a2"] and alpha.leader is None
        assert list(beta.records) == ["b1"] and beta.leader == "b1"
        assert json.loads(beta.records["b1"]) == {"node": "b1", "n": 0}
        assert read_cluster(gateway, prefix=prefix, cluster="gamma").records == {}
    finally:
        witness.release()
        witness.close()
        gateway.close()


def test_reading_an_unreachable_etcd_raises_in_words(link: NodeLink) -> None:
    link.cut()
    gateway = _gateway(link)
    with pytest.raises(EtcdUnavailable, match="read the status records"):
        read_all(gateway, prefix=PREFIX)
    gateway.close()
