"""CHAP on a real tgtd in the namespace lab, checked by a real libiscsi initiator: the right
secret logs in, a wrong one and none are refused; mutual CHAP (libiscsi checks the target's
answer); accounts that differ from the spec are seen and repaired; the password is in no log.

libiscsi 1.19 takes the initiator's secret in the URL (``iscsi://user%password@host/iqn/lun``)
or in ``LIBISCSI_CHAP_USERNAME``/``LIBISCSI_CHAP_PASSWORD``, the target's (mutual) in
``LIBISCSI_CHAP_TARGET_USERNAME``/``LIBISCSI_CHAP_TARGET_PASSWORD``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.runner import CommandResult
from adapters.tgt import TgtAdapter, parse_tgtadm_show
from adapters.tgt.chap import ChapSecrets, load_chap_secrets
from reconciler.core.spec import Chap, Target
from tests.lab.agents import AgentCluster, reconcile_command
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.lab.specs import IQN as CLUSTER_IQN
from tests.lab.specs import LabCluster
from tests.lab.test_tgt_lab import IQN, LUN1, R0, make_adapter

pytestmark = pytest.mark.lab

USER, PASSWORD = "xen-pool", "Lab-chap-0042x"
TGT_USER, TGT_PASSWORD = "tandem-tgt", "Lab-mutual-77q"
URL = f"iscsi://{VIP_IP}/{IQN}/1"


def chap_target(*, mutual: bool = False) -> Target:
    chap = Chap(secrets_file="/etc/tandem/chap.yaml", mutual=mutual)
    return Target(iqn=IQN, luns=(LUN1,), chap=chap)


def chap_adapter(lab: Lab, tmp_path: Path, *, mutual: bool = False) -> TgtAdapter:
    tgt = make_adapter(lab, "node1", tmp_path)
    tgt.chap = ChapSecrets(
        user=USER,
        password=PASSWORD,
        mutual_user=TGT_USER if mutual else None,
        mutual_password=TGT_PASSWORD if mutual else None,
    )
    return tgt


def inq(lab: Lab, url: str = URL, **env: str) -> CommandResult:
    return lab.runner("client", env=env).run(["iscsi-inq", url], check=False, timeout=10)


@pytest.fixture
def served(lab: Lab, tmp_path: Path) -> Iterator[tuple[Lab, TgtAdapter, Target]]:
    tgt = chap_adapter(lab, tmp_path)
    spec = chap_target()
    try:
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
        yield lab, tgt, spec
    finally:
        tgt.stop(spec)


def test_the_right_secret_logs_in_a_wrong_one_and_none_are_refused(
    served: tuple[Lab, TgtAdapter, Target],
) -> None:
    lab, tgt, spec = served
    right = inq(lab, f"iscsi://{USER}%{PASSWORD}@{VIP_IP}/{IQN}/1")
    assert right.ok and "DIRECT_ACCESS" in right.stdout, right.stdout + right.stderr
    by_env = inq(lab, LIBISCSI_CHAP_USERNAME=USER, LIBISCSI_CHAP_PASSWORD=PASSWORD)
    assert by_env.ok, by_env.stderr
    wrong = inq(lab, f"iscsi://{USER}%Wrong-secret-01@{VIP_IP}/{IQN}/1")
    assert not wrong.ok and "Authentication failure" in wrong.stdout + wrong.stderr
    none = inq(lab)
    assert not none.ok and "Authentication failure" in none.stdout + none.stderr
    obs = tgt.observe(spec)
    assert obs.running is True and obs.exported_luns == {1} and obs.error is None
    shown = parse_tgtadm_show(tgt._iscsi("target", "show").stdout).target(spec.tid)
    assert shown is not None and [a.user for a in shown.accounts] == [USER]
    assert PASSWORD not in Path(tgt.log_path).read_text()  # tgtd logs no secret


def test_mutual_chap_lets_the_initiator_check_the_target(lab: Lab, tmp_path: Path) -> None:
    tgt = chap_adapter(lab, tmp_path, mutual=True)
    spec = chap_target(mutual=True)
    try:
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
        creds = {"LIBISCSI_CHAP_USERNAME": USER, "LIBISCSI_CHAP_PASSWORD": PASSWORD}
        good = inq(
            lab,
            **creds,
            LIBISCSI_CHAP_TARGET_USERNAME=TGT_USER,
            LIBISCSI_CHAP_TARGET_PASSWORD=TGT_PASSWORD,
        )
        assert good.ok, good.stdout + good.stderr
        fake = inq(
            lab,
            **creds,
            LIBISCSI_CHAP_TARGET_USERNAME=TGT_USER,
            LIBISCSI_CHAP_TARGET_PASSWORD="Not-the-target1",
        )
        assert not fake.ok and "CHAP_R" in fake.stdout + fake.stderr, fake.stdout + fake.stderr
        assert tgt.observe(spec).running is True
    finally:
        tgt.stop(spec)


def test_accounts_that_differ_are_seen_and_repaired(
    served: tuple[Lab, TgtAdapter, Target],
) -> None:
    lab, tgt, spec = served
    # someone binds a second account by hand: its owner could log in
    tgt._iscsi("account", "new", "--user", "intruder", "--password", "Intruder-pass1")
    tgt._iscsi("account", "bind", "--tid", str(spec.tid), "--user", "intruder")
    assert inq(lab, f"iscsi://intruder%Intruder-pass1@{VIP_IP}/{IQN}/1").ok
    obs = tgt.observe(spec)
    assert obs.running is False and "intruder" in (obs.error or ""), obs
    tgt.start(spec)  # what the primary's next tick does
    assert tgt.observe(spec).running is True
    assert not inq(lab, f"iscsi://intruder%Intruder-pass1@{VIP_IP}/{IQN}/1").ok
    assert inq(lab, LIBISCSI_CHAP_USERNAME=USER, LIBISCSI_CHAP_PASSWORD=PASSWORD).ok


def test_dropping_chap_from_the_spec_unbinds_the_account(
    served: tuple[Lab, TgtAdapter, Target],
) -> None:
    lab, tgt, _ = served
    open_spec = Target(iqn=IQN, luns=(LUN1,))
    obs = tgt.observe(open_spec)
    assert obs.running is False and USER in (obs.error or "")
    tgt.start(open_spec)
    assert tgt.observe(open_spec).running is True
    assert inq(lab).ok


@pytest.fixture
def chap_agents(lab: Lab) -> Iterator[AgentCluster]:
    """The end-to-end lab cluster (both agents, real tgt and VIP) with CHAP required, the
    secrets in one root-only file both agents read (identical on both nodes by construction)."""
    try:
        reconcile_command()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    root = Path(tempfile.mkdtemp(prefix="tdmchap"))  # short: tgtd's socket path limit
    try:
        files = LabCluster.create(root)
        secrets = root / "chap.yaml"
        secrets.write_text(f"username: {USER}\npassword: '{PASSWORD}'\n")
        secrets.chmod(0o600)
        text = files.spec_path.read_text()
        chap = f"    initiators: [ALL]\n    chap:\n      secretsFile: {secrets}\n"
        files.spec_path.write_text(text.replace("    initiators: [ALL]\n", chap))
        cluster = AgentCluster(lab, files)
        assert cluster.target.chap is not None
        for observer in cluster._tgt.values():  # the test's own view of each tgtd
            observer.chap = load_chap_secrets(cluster.target.chap)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_agents_serve_with_chap_on_either_node(chap_agents: AgentCluster, lab: Lab) -> None:
    agents = chap_agents
    url = f"iscsi://{VIP_IP}/{CLUSTER_IQN}/1"
    agents.start("node1")
    agents.start("node2")
    for node in ("node1", "node2"):
        if node == "node2":
            agents.files.set_master("node2")  # a planned swap: the secret works there too
        agents.wait_serving(node)
        ok = inq(lab, url, LIBISCSI_CHAP_USERNAME=USER, LIBISCSI_CHAP_PASSWORD=PASSWORD)
        assert ok.ok, f"{node}: {ok.stdout}{ok.stderr}"
        refused = inq(lab, url)
        assert not refused.ok and "Authentication failure" in refused.stdout + refused.stderr
    for node in ("node1", "node2"):
        assert PASSWORD not in agents.log_text(node)
    for path in agents.files.state_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert PASSWORD.encode() not in path.read_bytes(), path
