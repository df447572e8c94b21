"""CHAP on a real tgtd in the namespace lab, checked by a real libiscsi initiator: the right
secret logs in, a wrong one and none are refused; mutual CHAP (libiscsi checks the target's
answer); accounts that differ from the spec are seen and repaired; the password is in no log.

libiscsi 1.19 takes the initiator's secret in the URL (``iscsi://user%password@host/iqn/lun``)
or in ``LIBISCSI_CHAP_USERNAME``/``LIBISCSI_CHAP_PASSWORD``, the target's (mutual) in
``LIBISCSI_CHAP_TARGET_USERNAME``/``LIBISCSI_CHAP_TARGET_PASSWORD``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.runner import CommandResult
from adapters.tgt import TgtAdapter, parse_tgtadm_show
from adapters.tgt.chap import ChapSecrets
from reconciler.core.spec import Chap, Target
from tests.lab.netns import VIP, VIP_IP, Lab
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
