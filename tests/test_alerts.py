"""Alerts: the gate's rules, and real mail delivered to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message

from adapters.alerts import MailAlerter
from adapters.base import Alert
from reconciler.agent import TickReport
from reconciler.alerts import AlertGate, alerts_for
from reconciler.core.observed import ObservedState, Role
from reconciler.core.plan import Blocked, BlockKind, Plan, PlanWarning, WarningKind
from reconciler.core.spec import Alerts, Mail
from tests.simcluster import DEMO_TEXT, SimCluster, demo_spec


class Inbox(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[object] = []

    def handle_message(self, message: object) -> None:
        self.messages.append(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _report(plan: Plan) -> TickReport:
    return TickReport(ObservedState(node=plan.node), plan, None, started=0.0, seconds=0.0)


def test_alerts_are_built_from_the_kinds_not_from_the_text() -> None:
    plan = Plan(
        node="node1",
        desired_role=Role.PRIMARY,
        role_reason="x",
        blocked=(
            Blocked(BlockKind.PEER_PRIMARY, "promote", "wording for people", "iscsi1"),
            Blocked(BlockKind.VIP_ANSWERS_ELSEWHERE, "add-vip", "also for people"),
            # Raised from the observation already (an unknown resource): not twice.
            Blocked(BlockKind.DRBD_UNKNOWN, "observe", "cannot read", "iscsi2"),
        ),
        warnings=(
            # The message need not say "degraded": the kind decides.
            PlanWarning(WarningKind.DEGRADED, "replication of iscsi1: WFConnection", "iscsi1"),
            PlanWarning(WarningKind.SPLIT_BRAIN, "a degraded split brain", "iscsi1"),
            PlanWarning(WarningKind.DRBD_UNREADABLE, "degraded: holding the VIP"),
        ),
    )
    raised = alerts_for(_report(plan))
    assert [(a.key, a.refusal) for a in raised] == [
        ("node1:degraded:iscsi1", False),
        ("node1:blocked:peer-primary:promote:iscsi1", True),
        ("node1:blocked:vip-answers-elsewhere:add-vip:", True),
    ]
    assert raised[0].message == "node1: replication of iscsi1: WFConnection"
    assert raised[1].message == "node1: promote refused: wording for people"


def test_degraded_replication_in_the_simulator_raises_one_alert_per_resource(
    tmp_path: Path,
) -> None:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.converge()
    c.world.set_links(replication=False, management=True)
    degraded = [a for a in alerts_for(c.tick("node1")) if ":degraded:" in a.key]
    assert [a.key for a in degraded] == ["node1:degraded:iscsi1"]
    assert not degraded[0].refusal


def test_the_gate_holds_back_refusals_by_their_flag_not_their_key() -> None:
    clock = Clock()
    gate = AlertGate(Alerts(quiet_ticks=0, blocked_grace=10), clock=clock)
    looks_like_one = Alert("node1:blocked:promote:iscsi1", "warning", "not a refusal")
    refusal = Alert("node1:x", "warning", "a refusal", refusal=True)
    assert gate.admit([looks_like_one, refusal], manual_mode=False) == [looks_like_one]
    clock.now += 10
    assert gate.admit([refusal], manual_mode=False) == [refusal]


def test_gate_quiet_ticks_manual_mode_and_screen_time() -> None:
    clock = Clock()
    gate = AlertGate(Alerts(quiet_ticks=2, screen_time=1800), clock=clock)
    a = [Alert("k1", "warning", "one")]
    assert gate.admit(a, manual_mode=False) == []  # tick 1: quiet
    assert gate.admit(a, manual_mode=False) == []  # tick 2: quiet
    assert gate.admit(a, manual_mode=False) == a  # tick 3: sent
    clock.now += 60
    assert gate.admit(a, manual_mode=False) == []  # identical, screened
    assert gate.admit([Alert("k2", "error", "two")], manual_mode=False) != []  # new key
    assert gate.admit([Alert("k3", "error", "three")], manual_mode=True) == []  # manual mode
    clock.now += 1800
    assert gate.admit(a, manual_mode=False) == a  # screen time over


def test_a_refusal_is_mailed_only_once_it_lasted_the_grace() -> None:
    clock = Clock()
    gate = AlertGate(Alerts(quiet_ticks=0, blocked_grace=10), clock=clock)
    swap = [
        Alert(
            "node2:blocked:peer-primary:promote:iscsi1",
            "warning",
            "promote refused: peer Primary",
            refusal=True,
        )
    ]
    other = Alert("node2:vip-unknown:198.51.100.3", "warning", "VIP unreadable")
    assert gate.admit(swap, manual_mode=False) == []  # a planned swap's wait...
    clock.now += 0.3
    assert gate.admit([*swap, other], manual_mode=False) == [other]  # (others at once)
    clock.now += 0.1
    assert gate.admit([], manual_mode=False) == []  # ...ends: nothing was mailed
    clock.now += 20
    assert gate.admit(swap, manual_mode=False) == []  # a new refusal starts its own grace
    clock.now += 9.9
    assert gate.admit(swap, manual_mode=False) == []
    clock.now += 0.2
    assert gate.admit(swap, manual_mode=False) == swap  # raised on every tick for 10 s
    clock.now += 60
    assert gate.admit(swap, manual_mode=False) == []  # then screened like any alert
    immediate = AlertGate(Alerts(quiet_ticks=0, blocked_grace=0), clock=clock)
    assert immediate.admit(swap, manual_mode=False) == swap


def test_a_refusal_that_began_in_the_quiet_ticks_counts_from_its_start() -> None:
    clock = Clock()
    gate = AlertGate(Alerts(quiet_ticks=2, blocked_grace=10), clock=clock)
    held = [
        Alert(
            "node1:blocked:vip-answers-elsewhere:add-vip:",
            "warning",
            "add-vip refused: a stranger answers",
            refusal=True,
        )
    ]
    assert gate.admit(held, manual_mode=False) == []  # quiet tick 1 (the refusal begins)
    clock.now += 11
    assert gate.admit(held, manual_mode=False) == []  # quiet tick 2
    clock.now += 1
    assert gate.admit(held, manual_mode=False) == held  # 12 s old: no second grace


def test_alert_mail_reaches_a_real_smtp_server(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    c = SimCluster.create(demo_spec(), tmp_path)
    c.world.strangers.append("198.51.100.3")
    report = c.tick("node1")
    raised = alerts_for(report)
    assert any("answered by another host" in a.message for a in raised)
    mail = Mail(
        enabled=True,
        sender="tandem@example.com",
        to=("ops@example.com",),
        subject="storage alert",
        server="127.0.0.1",
        port=port,
    )
    assert MailAlerter(mail, timeout=5).send(raised) is None
    deadline = time.monotonic() + 5
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(inbox.messages) == 1
    msg = inbox.messages[0]
    assert msg["To"] == "ops@example.com" and msg["From"] == "tandem@example.com"  # type: ignore[index]
    # The fresh node planned before the VIP's probe answered: add-vip's own check refused it,
    # an action failed (error); from the next tick on the plan refuses it (a warning).
    assert msg["Subject"].startswith("storage alert [error]")  # type: ignore[index]
    body = msg.get_payload(decode=True).decode()  # type: ignore[attr-defined]
    assert "answered by another host" in body


def test_unreachable_smtp_server_is_reported_not_raised() -> None:
    mail = Mail(enabled=True, to=("ops@example.com",), server="127.0.0.1", port=free_port())
    error = MailAlerter(mail, timeout=1).send([Alert("k", "error", "x")])
    assert error is not None and "failed" in error


@pytest.mark.skipif(not shutil.which("reconcile"), reason="reconcile is not installed")
def test_watching_agent_mails_after_quiet_ticks(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    spec = DEMO_TEXT.replace(
        "  alerts:\n    syslog: false\n",
        "  alerts:\n    syslog: false\n    quietTicks: 2\n    blockedGrace: 0.3\n"
        "    mail:\n      enabled: true\n"
        f"      to: [ops@example.com]\n      server: 127.0.0.1\n      port: {port}\n",
    ).replace("hypervisor: sim ", "hypervisor: none ")  # one alert key: the VIP's refusal
    assert "quietTicks: 2" in spec
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec)
    world = tmp_path / "state"
    env = dict(os.environ, TANDEM_STATE_DIR=str(world))
    # A stranger holds the VIP: node1 is blocked every tick, one alert key, mailed once.
    subprocess.run(
        ["reconcile", "--once", "--node", "node2", "-f", str(spec_file)],
        env=env,
        check=True,
        capture_output=True,
    )
    import json

    wf = world / "sim-world.json"
    data = json.loads(wf.read_text())
    data["strangers"] = ["198.51.100.3"]
    wf.write_text(json.dumps(data))
    proc = subprocess.Popen(
        ["reconcile", "--watch", "--node", "node1", "-f", str(spec_file), "--interval", "0.05"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 15
        while not inbox.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        mailed_after = time.monotonic() - started
        time.sleep(0.5)  # several more ticks: the identical alert must stay screened
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    subjects = [m["Subject"] for m in inbox.messages]  # type: ignore[index]
    assert len(subjects) == 1, subjects
    assert mailed_after >= 0.3  # the refusal had to last blockedGrace first
    assert "refused" in err  # every alert is logged, mailed or not
