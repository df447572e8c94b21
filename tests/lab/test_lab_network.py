"""The namespace lab itself: topology, isolation from the root namespace, cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from adapters.runner import Local, Runner
from tests.lab.netns import ADDRS, KEYS, MACS, Lab, LabError, lab_range_conflicts
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

_root = Runner(Local(), timeout=10)


def _root_json(*argv: str) -> Any:
    """Read-only queries of the root namespace (``ip -j ...``)."""
    assert argv[0] == "-j"
    return json.loads(_root.run(["ip", *argv]).stdout or "[]")


def root_snapshot() -> dict[str, set[tuple[Any, ...]]]:
    links = {(x.get("ifname"), x.get("address"), x.get("mtu")) for x in _root_json("-j", "link")}
    addrs = {
        (link.get("ifname"), a.get("family"), a.get("local"), a.get("prefixlen"))
        for link in _root_json("-j", "addr")
        for a in link.get("addr_info", ())
    }
    routes = {
        (r.get("dst"), r.get("dev"), r.get("gateway"), r.get("table"), r.get("type"))
        for r in _root_json("-j", "route", "show", "table", "all")
    }
    return {"links": links, "addrs": addrs, "routes": routes}


def namespaces_with(prefix: str) -> set[str]:
    return {
        str(n["name"])
        for n in _root_json("-j", "netns", "list")
        if str(n["name"]).startswith(prefix)
    }


def test_node1_pings_client(lab: Lab) -> None:
    res = lab.run("node1", ["ping", "-c", "1", "-W", "1", lab.addr("client")])
    assert res.ok, res.stdout + res.stderr


def test_replication_link(lab: Lab) -> None:
    res = lab.run("node1", ["ping", "-c", "1", "-W", "1", "198.51.100.130"])
    assert res.ok
    route = json.loads(lab.run("node1", ["ip", "-j", "route", "get", "198.51.100.130"]).stdout)
    assert route[0]["dev"] == "repl0"
    back = json.loads(lab.run("node2", ["ip", "-j", "route", "get", "198.51.100.129"]).stdout)
    assert back[0]["dev"] == "repl0"


def test_macs_addresses_and_sysctls(lab: Lab) -> None:
    for key in ("node1", "node2", "client"):
        link = json.loads(lab.run(key, ["ip", "-j", "addr", "show", "eth0"]).stdout)[0]
        assert link["address"] == MACS[key] == lab.mac(key)
        inet = [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]]
        assert inet == [ADDRS[key]]  # IPv4 only: IPv6 is off, no link-local address
        ipv6 = lab.run(key, ["sysctl", "-n", "net.ipv6.conf.all.disable_ipv6"]).stdout.strip()
        assert ipv6 == "1"
        routes = json.loads(lab.run(key, ["ip", "-j", "route"]).stdout)
        assert all(r["dst"] != "default" for r in routes)
    for key in ("node1", "node2"):
        nonlocal_bind = lab.run(key, ["sysctl", "-n", "net.ipv4.ip_nonlocal_bind"]).stdout
        assert nonlocal_bind.strip() == "1"
    # the client learns the fixed MACs over the shared segment
    assert lab.neigh("client", lab.addr("node1")) is None
    lab.run("client", ["ping", "-c", "1", "-W", "1", lab.addr("node1")])
    lab.run("client", ["ping", "-c", "1", "-W", "1", lab.addr("node2")])
    assert lab.neigh("client", lab.addr("node1")) == MACS["node1"]
    assert lab.neigh("client", lab.addr("node2")) == MACS["node2"]


def test_root_namespace_gains_nothing(lab_factory: Callable[[], Lab]) -> None:
    before = root_snapshot()
    lab = lab_factory()
    started = time.monotonic()
    lab.up()
    up_s = time.monotonic() - started
    assert namespaces_with(lab.prefix) == {lab.ns(k) for k in KEYS}
    assert root_snapshot() == before
    lab.run("node1", ["ping", "-c", "1", "-W", "1", lab.addr("client")])
    started = time.monotonic()
    lab.down()
    down_s = time.monotonic() - started
    print(f"lab up {up_s * 1e3:.0f} ms, down {down_s * 1e3:.0f} ms")
    assert root_snapshot() == before
    assert namespaces_with(lab.prefix) == set()


def test_down_is_idempotent_and_removes_everything(lab_factory: Callable[[], Lab]) -> None:
    lab = lab_factory().up()
    workdir = lab.workdir
    assert workdir is not None and workdir.is_dir()
    lab.down()
    lab.down()
    assert namespaces_with(lab.prefix) == set()
    assert not workdir.exists()


def test_failed_up_removes_what_it_created(
    lab_factory: Callable[[], Lab], monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = lab_factory()
    real_batch = Lab._batch

    def failing_batch(self: Lab, key: str, commands: list[str]) -> None:
        if key == "node2":  # the switch and node1 are configured by now
            raise RuntimeError("injected failure in the middle of up()")
        real_batch(self, key, commands)

    monkeypatch.setattr(Lab, "_batch", failing_batch)
    with pytest.raises(RuntimeError, match="injected"):
        lab.up()
    assert namespaces_with(lab.prefix) == set()
    assert lab.created == [] and lab.workdir is None
    lab.down()  # still fine


def test_up_refuses_a_name_collision(lab_factory: Callable[[], Lab]) -> None:
    lab = lab_factory()
    squatter = lab.ns("node2")
    lab._root(["ip", "netns", "add", squatter])
    try:
        with pytest.raises(LabError, match="already exist"):
            lab.up()
        # the lab created nothing and did not delete what it does not own
        assert namespaces_with(lab.prefix) == {squatter}
    finally:
        lab._root(["ip", "netns", "delete", squatter])
    assert namespaces_with(lab.prefix) == set()


def test_root_whitelist(lab: Lab) -> None:
    with pytest.raises(LabError, match="refusing"):
        lab._root(["ip", "addr", "add", "198.51.100.99/24", "dev", "lo"])
    with pytest.raises(LabError, match="refusing"):
        lab._root(["ip", "netns", "delete", "someone-elses"])


def test_the_current_root_namespace_is_acceptable(lab: Lab) -> None:
    lab.check_root_namespace()  # what up() ran; spelled out for the record


@pytest.mark.parametrize(
    ("routes", "addrs", "route_get", "expect"),
    [
        (
            [
                {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
                {"dst": "192.0.2.0/24", "dev": "eth0"},
            ],
            [],
            [{"dst": "198.51.100.1", "gateway": "192.0.2.1", "dev": "eth0"}],
            None,
        ),
        ([], [], None, None),  # no default route: unreachable is fine
        ([{"dst": "198.51.100.0/24", "dev": "eth1"}], [], None, "198.51.100.0/24"),
        (
            [{"dst": "198.51.0.0/16", "gateway": "10.0.0.1", "dev": "eth0"}],
            [],
            None,
            "198.51.0.0/16",
        ),
        (
            [{"dst": "198.51.100.7", "table": "local", "type": "local", "dev": "lo"}],
            [],
            None,
            "198.51.100.7",
        ),
        (
            [],
            [{"ifname": "dummy0", "addr_info": [{"family": "inet", "local": "198.51.100.9"}]}],
            None,
            "198.51.100.9",
        ),
        ([], [], [{"dst": "198.51.100.1", "dev": "eth2"}], "directly reachable"),
    ],
)
def test_lab_range_conflicts(
    routes: list[dict[str, Any]],
    addrs: list[dict[str, Any]],
    route_get: list[dict[str, Any]] | None,
    expect: str | None,
) -> None:
    problems = lab_range_conflicts(routes, addrs, route_get)
    if expect is None:
        assert problems == []
    else:
        assert problems and expect in problems[0]


def test_spawned_processes_are_killed_only_if_ours(lab_factory: Callable[[], Lab]) -> None:
    lab = lab_factory().up()
    ours = lab.spawn("node1", ["sleep", "60"], log_name="sleep.log")
    # started behind the lab's back: down() must leave it alone (and say so)
    foreign = subprocess.Popen(["ip", "netns", "exec", lab.ns("node2"), "sleep", "60"])
    try:
        _wait_inside(lab.ns("node1"), ours.pid)
        _wait_inside(lab.ns("node2"), foreign.pid)
        with pytest.warns(RuntimeWarning, match=str(foreign.pid)):
            lab.down()
        assert ours.returncode is not None  # killed and reaped
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()
    assert not os.path.exists(f"/proc/{ours.pid}")


def _wait_inside(namespace: str, pid: int, timeout: float = 2.0) -> None:
    wait_for(
        f"process {pid} inside namespace {namespace}",
        lambda: str(pid) in _root.run(["ip", "netns", "pids", namespace]).stdout.split(),
        timeout=timeout,
    )
