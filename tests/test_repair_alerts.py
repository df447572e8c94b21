"""Issue 10, point 5: repairs are alertable; a flapping part mails one alert with the count,
muted by the screen time. The clock is a parameter; one test delivers real mail (aiosmtpd).

Before this change a tgtd killed again and again was restarted silently: ``alerts_for`` raised
nothing for a tick whose actions all succeeded (the first test shows the alert now exists)."""

from __future__ import annotations

from pathlib import Path

from adapters.alerts import MailAlerter
from adapters.base import Alert
from reconciler.alerts import AlertGate, alerts_for
from reconciler.core.spec import Alerts, Mail
from tests.simcluster import SimCluster, demo_spec
from tests.test_alerts import Clock, Inbox, smtp  # noqa: F401  (the SMTP fixture)

MINUTE = 60.0


def serving(tmp_path: Path) -> SimCluster:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.converge()
    assert c.world.serving_node("iscsi1") == "node1"
    return c


def kill_tgtd(c: SimCluster) -> list[Alert]:
    c.world.target_stop("node1")
    report = c.tick("node1")
    assert c.world.serving_node("iscsi1") == "node1"  # repaired in this tick
    return list(alerts_for(report))


def test_a_target_restart_on_the_serving_primary_raises_a_repair_alert(tmp_path: Path) -> None:
    c = serving(tmp_path)
    (alert,) = [a for a in kill_tgtd(c) if a.repair]
    assert alert.key == "node1:repair:start-target:"
    assert "repaired: start-target" in alert.message
    # A converged tick and a bring-up raise none.
    assert not [a for a in alerts_for(c.tick("node1")) if a.repair]
    fresh = SimCluster.create(demo_spec(), tmp_path / "fresh")
    assert not [a for a in alerts_for(fresh.tick("node1")) if a.repair]


def test_a_flapping_part_raises_one_alert_with_the_count(tmp_path: Path) -> None:
    c, clock = serving(tmp_path), Clock()
    gate = AlertGate(Alerts(quiet_ticks=0, repair_count=3, repair_window=600), clock=clock)
    mailed = []
    for _ in range(5):  # killed every 2 minutes
        mailed += [a for a in gate.admit(kill_tgtd(c), manual_mode=False) if a.repair]
        clock.now += 2 * MINUTE
    assert len(mailed) == 1  # at the third restart; the 4th and 5th are screened
    assert "3 repairs of this part in the last 600 s" in mailed[0].message


def test_repairs_spread_out_over_more_than_the_window_mail_nothing(tmp_path: Path) -> None:
    c, clock = serving(tmp_path), Clock()
    gate = AlertGate(Alerts(quiet_ticks=0, repair_count=3, repair_window=600), clock=clock)
    for _ in range(4):
        assert not [a for a in gate.admit(kill_tgtd(c), manual_mode=False) if a.repair]
        clock.now += 6 * MINUTE  # two repairs at most in any 10 minutes


def test_the_screen_time_mutes_then_the_count_is_mailed_again(tmp_path: Path) -> None:
    c, clock = serving(tmp_path), Clock()
    gate = AlertGate(
        Alerts(quiet_ticks=0, repair_count=2, repair_window=600, screen_time=1800), clock=clock
    )
    mailed_at = []
    for _ in range(40):  # a restart every minute for 40 minutes
        if [a for a in gate.admit(kill_tgtd(c), manual_mode=False) if a.repair]:
            mailed_at.append(clock.now)
        clock.now += MINUTE
    assert [t - 1000.0 for t in mailed_at] == [1 * MINUTE, 31 * MINUTE]


def test_a_tgtd_killed_three_times_mails_one_alert_with_the_count(
    tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:
    inbox, port = smtp
    c, clock = serving(tmp_path), Clock()
    settings = Alerts(
        quiet_ticks=0,
        repair_count=3,
        mail=Mail(enabled=True, to=("ops@example.com",), server="127.0.0.1", port=port),
    )
    gate = AlertGate(settings, clock=clock)
    mailer = MailAlerter(settings.mail, timeout=5)
    for _ in range(3):
        assert mailer.send(gate.admit(kill_tgtd(c), manual_mode=False)) is None
        clock.now += MINUTE
    # aiosmtpd hands a message to the inbox before it answers DATA, and send() waits for that
    # answer: what was mailed is in the inbox once send() returned.
    assert len(inbox.messages) == 1
    body = inbox.messages[0].get_payload(decode=True).decode()  # type: ignore[attr-defined]
    assert "repaired: start-target" in body and "3 repairs of this part" in body
