"""The XAPI adapters over the real ``XenAPI`` SDK and the protocol-level fake
(``tests/fakes/xapi.py``): no patching of the SDK, the fake server is the seam.

Each XAPI failure mode (unreachable, timeout, garbage, SESSION_INVALID, HOST_IS_SLAVE, an error
code) is an observation with a reason: no exception leaves ``observe``, and the role source
says UNKNOWN (or what pool.conf says), never PRIMARY on its own."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from adapters.base import Alert
from adapters.poolconf import PoolConfRoleSource
from adapters.xapi import XapiClient, XapiHypervisor, XapiRoleSource, read_credentials
from adapters.xapi.lvm import parse_vgs, vg_name
from adapters.xapi.messages import PoolMessageAlerter
from adapters.xapi.session import Credentials, master_url
from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.observed import Role
from reconciler.core.spec import Lun, Target, Vip
from tests.fakes.lvm import FakeLvmRunner, fixture
from tests.fakes.xapi import FakeXapiPool, Sr
from tests.simcluster import SimCluster, demo_spec

IQN = "iqn.2024-01.org.example.tandem:iscsi1"
VIP = Vip(address="198.51.100.3/24", interface="eth0")
TARGET = Target(iqn=IQN, luns=(Lun(lun=1, resource="r0", scsi_id="t1", scsi_sn="T1"),))
CREDS = Credentials("root", "secret")


@pytest.fixture
def fake() -> Iterator[FakeXapiPool]:
    pool = FakeXapiPool.start()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def sr(fake: FakeXapiPool) -> Sr:
    return fake.pool.add_iscsi_sr("tandem-iscsi", target=VIP.ip, iqn=IQN)


def client(url: str, *, timeout: float = 5.0, creds: Credentials = CREDS) -> XapiClient:
    return XapiClient(url=url, credentials=creds, timeout=timeout)


def hypervisor(
    url: str, node: str = "node1", lvm: FakeLvmRunner | None = None, *, timeout: float = 5.0
) -> XapiHypervisor:
    return XapiHypervisor(
        client(url, timeout=timeout), host_name=node, runner=lvm or FakeLvmRunner()
    )


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ------------------------------------------------------------------------------ observe
def test_observe_lists_this_hosts_pbds_of_the_served_srs_only(fake: FakeXapiPool, sr: Sr) -> None:
    fake.pool.add_iscsi_sr("other-iqn", target=VIP.ip, iqn="iqn.2024-01.org.example:other")
    fake.pool.add_iscsi_sr("other-target", target="198.51.100.99", iqn=IQN)
    fake.pool.add_iscsi_sr("nfs", target=VIP.ip, iqn=IQN, kind="nfs")
    multipath = fake.pool.add_iscsi_sr("multipath", target=f"198.51.100.98,{VIP.ip}", iqn=IQN)
    obs = hypervisor(fake.url("node1")).observe(TARGET, [VIP])
    assert obs.enabled and obs.error is None and obs.source == f"xapi ({fake.url('node1')})"
    expected = {fake.pool.pbd_of("node1", s).uuid for s in (sr, multipath)}
    assert {p.uuid for p in obs.pbds} == expected
    assert {p.sr_name for p in obs.pbds} == {"tandem-iscsi", "multipath"}
    assert all(p.attached is False and p.usable is None for p in obs.pbds)


def test_usable_comes_from_the_hosts_volume_group(fake: FakeXapiPool, sr: Sr) -> None:
    fake.pool.pbd_of("node1", sr).currently_attached = True
    lvm = FakeLvmRunner(vgs={vg_name(sr.uuid)})
    (pbd,) = hypervisor(fake.url("node1"), lvm=lvm).observe(TARGET, [VIP]).pbds
    assert (pbd.attached, pbd.usable, pbd.error) == (True, True, None)
    assert lvm.calls == [("vgs", "--noheadings", "-o", "vg_name", vg_name(sr.uuid))]
    lvm.vgs.clear()  # the SR breaks on the host (SR_BACKEND_FAILURE_40/46 after a failover)
    (pbd,) = hypervisor(fake.url("node1"), lvm=lvm).observe(TARGET, [VIP]).pbds
    assert (pbd.attached, pbd.usable) == (True, False)


def test_parse_vgs_on_captured_output() -> None:
    name = "VG_XenStorage-0b4a"
    assert parse_vgs(name, 0, fixture("vgs-found.txt", name), "") == (True, None)
    assert parse_vgs(name, 5, "", fixture("vgs-not-found.txt", name)) == (False, None)
    usable, error = parse_vgs(name, 5, "", "  /dev/mapper/control: open failed: No such device\n")
    assert usable is None and error and "No such device" in error
    usable, error = parse_vgs(name, 0, fixture("vgs-found.txt", "VG_other"), "")
    assert usable is None and error


# ------------------------------------------------------------------------- plug/replug
def test_plug_attaches_and_is_idempotent(fake: FakeXapiPool, sr: Sr) -> None:
    hv = hypervisor(fake.url("node1"))
    pbd = fake.pool.pbd_of("node1", sr)
    hv.plug(pbd.uuid)
    assert pbd.currently_attached
    hv.plug(pbd.uuid)
    assert pbd.currently_attached and not fake.pool.pbd_of("node2", sr).currently_attached


def test_plug_fails_transiently_while_the_target_does_not_serve(fake: FakeXapiPool, sr: Sr) -> None:
    fake.pool.probe = lambda pool, pbd: False
    pbd = fake.pool.pbd_of("node1", sr)
    with pytest.raises(TransientError, match=r"SR_BACKEND_FAILURE_141.*Unable to connect"):
        hypervisor(fake.url("node1")).plug(pbd.uuid)
    assert not pbd.currently_attached


def test_replug_unplugs_then_plugs(fake: FakeXapiPool, sr: Sr) -> None:
    pbd = fake.pool.pbd_of("node1", sr)
    pbd.currently_attached = True
    fake.pool.calls.clear()
    hypervisor(fake.url("node1")).replug(pbd.uuid)
    assert pbd.currently_attached
    acting = [c for c in fake.pool.calls if c in ("PBD.unplug", "PBD.plug")]
    assert acting == ["PBD.unplug", "PBD.plug"]


def test_plug_of_an_unknown_pbd_is_terminal(fake: FakeXapiPool, sr: Sr) -> None:
    with pytest.raises(TerminalError, match="UUID_INVALID"):
        hypervisor(fake.url("node1")).plug("00000000-0000-0000-0000-000000000000")


# ------------------------------------------------------------------------ failure modes
def _assert_failed_observation(url: str, reason: str, *, timeout: float = 5.0) -> None:
    obs = hypervisor(url, timeout=timeout).observe(TARGET, [VIP])
    assert obs.enabled and obs.pbds == ()
    assert obs.error is not None and reason in obs.error, obs.error
    source = XapiRoleSource(client(url, timeout=timeout), host_name="node1", fallback=None)
    verdict = source.observe()
    assert verdict.role is Role.UNKNOWN and reason in verdict.detail, verdict.detail


def test_unreachable_is_an_observation_with_a_reason() -> None:
    _assert_failed_observation(closed_port_url(), "unreachable (ConnectionRefusedError")


def test_timeout_is_an_observation_with_a_reason(fake: FakeXapiPool, sr: Sr) -> None:
    fake.servers["node1"].set_mode("hang")
    try:
        _assert_failed_observation(fake.url("node1"), "timed out after 0.2s", timeout=0.2)
    finally:
        fake.servers["node1"].set_mode("ok")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("garbage", "garbage (ExpatError"), ("http-error", "garbage (ProtocolError")],
)
def test_garbage_is_an_observation_with_a_reason(
    fake: FakeXapiPool, sr: Sr, mode: str, reason: str
) -> None:
    fake.servers["node1"].set_mode(mode)
    _assert_failed_observation(fake.url("node1"), reason)


def test_an_error_code_is_an_observation_with_a_reason(fake: FakeXapiPool) -> None:
    bad = client(fake.url("node1"), creds=Credentials("root", "wrong"))
    obs = XapiHypervisor(bad, host_name="node1", runner=FakeLvmRunner()).observe(TARGET, [VIP])
    assert obs.error and "SESSION_AUTHENTICATION_FAILED" in obs.error
    unknown = hypervisor(fake.url("node1"), node="node9").observe(TARGET, [VIP])
    assert unknown.error and "0 host(s) named 'node9'" in unknown.error


def test_session_invalid_logs_in_again(fake: FakeXapiPool, sr: Sr) -> None:
    hv = hypervisor(fake.url("node1"))
    assert len(hv.observe(TARGET, [VIP]).pbds) == 1 and fake.pool.logins == 1
    fake.pool.invalidate_sessions()  # xapi restarted
    assert len(hv.observe(TARGET, [VIP]).pbds) == 1 and fake.pool.logins == 2


def test_a_session_that_stays_invalid_is_an_observation_with_a_reason(
    fake: FakeXapiPool, sr: Sr
) -> None:
    fake.pool.always_invalid = True
    _assert_failed_observation(fake.url("node1"), "SESSION_INVALID")
    # The SDK's own retries (3 tries, each with a new login) ran before giving up.
    assert fake.pool.logins >= 3


def test_host_is_slave_is_followed_to_the_master(fake: FakeXapiPool, sr: Sr) -> None:
    hv = hypervisor(fake.url("node2"), node="node2")
    obs = hv.observe(TARGET, [VIP])
    assert obs.error is None and [p.uuid for p in obs.pbds] == [fake.pool.pbd_of("node2", sr).uuid]
    assert "the master" in obs.source and fake.url("node1") in obs.source
    role = XapiRoleSource(client(fake.url("node2")), host_name="node2", fallback=None).observe()
    assert role.role is Role.SECONDARY and "node1" in role.detail


def test_the_local_socket(fake: FakeXapiPool, sr: Sr, tmp_path: Path) -> None:
    path = str(tmp_path / "xapi")
    fake.serve_local(path)
    local = XapiClient(url=None, credentials=CREDS, timeout=5.0, local_socket=path)
    obs = XapiHypervisor(local, host_name="node2", runner=FakeLvmRunner()).observe(TARGET, [VIP])
    assert obs.error is None and obs.source == "xapi (local socket)" and len(obs.pbds) == 1
    fake.local[0].stop()
    missing = XapiHypervisor(local, host_name="node2", runner=FakeLvmRunner())
    failed = missing.observe(TARGET, [VIP])
    assert failed.error and f"XAPI at {path} is unreachable" in failed.error


def test_master_url_keeps_scheme_and_port() -> None:
    assert master_url("https://10.0.0.2/", "10.0.0.1") == "https://10.0.0.1/"
    assert master_url("http://127.0.0.2:4711/", "127.0.0.1") == "http://127.0.0.1:4711/"
    assert master_url(None, "10.0.0.1") == "https://10.0.0.1/"


# -------------------------------------------------------------------------- role source
def test_role_from_the_pool_master(fake: FakeXapiPool) -> None:
    def role(node: str) -> Role:
        source = XapiRoleSource(client(fake.url("node1")), host_name=node, fallback=None)
        return source.observe().role

    assert (role("node1"), role("node2")) == (Role.PRIMARY, Role.SECONDARY)
    fake.pool.set_master("node2")
    assert (role("node1"), role("node2")) == (Role.SECONDARY, Role.PRIMARY)


def test_pool_conf_answers_when_xapi_is_unreachable(tmp_path: Path) -> None:
    conf = tmp_path / "pool.conf"
    conf.write_text("slave:198.51.100.2\n")
    source = XapiRoleSource(
        client(closed_port_url()), host_name="node1", fallback=PoolConfRoleSource(conf)
    )
    verdict = source.observe()
    assert verdict.role is Role.SECONDARY
    assert verdict.detail.startswith("pool.conf (XAPI unreachable:"), verdict.detail


def test_xapi_unreachable_promotes_nobody(tmp_path: Path) -> None:
    """A whole tick on a cold simulated cluster: node1 would promote on the simulated pool's
    word; with the role source on an unreachable XAPI it plans no promote."""
    spec = demo_spec()
    cold = SimCluster.create(spec, tmp_path / "a")
    assert "promote" in [a.kind.value for a in cold.tick("node1", dry_run=True).plan.actions]
    cluster = SimCluster.create(spec, tmp_path / "b")
    source = XapiRoleSource(client(closed_port_url()), host_name="node1", fallback=None)
    cluster.adapters["node1"] = replace(cluster.adapters["node1"], role_source=source)
    report = cluster.tick("node1")
    assert "promote" not in [a.kind.value for a in report.plan.actions]
    assert report.observed.role_source.role is Role.UNKNOWN


# -------------------------------------------------------------------------- credentials
def test_credentials_files_must_be_private(tmp_path: Path) -> None:
    creds = tmp_path / "xapi-credentials"
    creds.write_text("root\nsecret\n")
    os.chmod(creds, 0o644)
    with pytest.raises(TerminalError, match=r"mode 0644.*chmod 600"):
        read_credentials(credentials_file=str(creds))
    os.chmod(creds, 0o600)
    assert read_credentials(credentials_file=str(creds)) == Credentials("root", "secret")
    user, password = tmp_path / "user", tmp_path / "password"
    user.write_text("admin\n")
    password.write_text("pw with spaces\n")
    for f in (user, password):
        os.chmod(f, 0o600)
    got = read_credentials(username_file=str(user), password_file=str(password))
    assert got == Credentials("admin", "pw with spaces")
    assert read_credentials() == Credentials("root", "")


# ------------------------------------------------------------------------------- alerts
def test_alerts_become_pool_messages(fake: FakeXapiPool) -> None:
    alerter = PoolMessageAlerter(client(fake.url("node2")), node="node2")
    failure = alerter.send(
        [Alert("k1", "critical", "both nodes Secondary"), Alert("k2", "info", "resynced")]
    )
    assert failure is None
    got = [(m.name, m.priority, m.cls, m.obj_uuid, m.body) for m in fake.pool.messages]
    assert got == [
        (
            "TANDEM_ALERT",
            2,
            "Pool",
            fake.pool.uuid,
            "tandem on node2: [critical] both nodes Secondary",
        ),
        ("TANDEM_ALERT", 5, "Pool", fake.pool.uuid, "tandem on node2: [info] resynced"),
    ]


def test_a_pool_message_that_cannot_be_sent_is_reported_not_raised() -> None:
    alerter = PoolMessageAlerter(client(closed_port_url()), node="node1")
    failure = alerter.send([Alert("k", "warning", "degraded")])
    assert (
        failure and failure.startswith("alert as pool message failed:") and "unreachable" in failure
    )
