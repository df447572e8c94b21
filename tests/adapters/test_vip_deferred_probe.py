"""The ARP probe left pending (``observe(wait_probes=False)``) and checked by ``add(probe=True)``.

Over ``IpVip`` with a scripted ``ip`` (``FakeRunner``) and a fake ARP tool whose probe waits on
a gate, so a test decides when the probe answers (no sleeping: the gate is an event).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import pytest

from adapters.base import PENDING_MAX_AGE
from adapters.vip.adapter import IpVip
from adapters.vip.tools import ProbeResult
from reconciler.core.errors import TerminalError
from reconciler.core.observed import VipObs
from tests.adapters.test_vip_parse import (
    VIP_IP,
    FakeArp,
    FakeRunner,
    fixture,
    result,
    vip,
)


@dataclass
class GatedArp(FakeArp):
    """A probe that answers ``answers`` only once ``gate`` is set (or 10 s passed)."""

    gate: threading.Event = field(default_factory=threading.Event)

    def probe(self, interface: str, ip: str, *, timeout: float) -> ProbeResult:
        self.probed.append((interface, ip, timeout))
        self.gate.wait(timeout=10)
        return self.answers.get(ip, ProbeResult(False))


def adapter(arp: FakeArp, *, with_vip: bool = False) -> tuple[IpVip, FakeRunner]:
    text = fixture("node-with-vip.json" if with_vip else "node-without-vip.json")
    runner = FakeRunner(lambda argv: result(stdout=text, argv=argv))
    return IpVip(runner, arp=arp), runner  # type: ignore[arg-type]


def adds(runner: FakeRunner) -> list[list[str]]:
    return [c for c in runner.calls if c[:3] == ["ip", "addr", "add"]]


def test_observe_without_waiting_leaves_the_probe_pending_and_complete_fills_it() -> None:
    arp = GatedArp(answers={VIP_IP: ProbeResult(True, mac="aa:bb", detail="answered by aa:bb")})
    vips, _ = adapter(arp)
    seen = vips.observe([vip()], wait_probes=False)
    assert seen == (VipObs(address=VIP_IP, local=False, probe_pending=True),)
    arp.gate.set()
    (done,) = vips.complete(seen)
    assert done.probe_pending is False
    assert done.answered_elsewhere is True and done.holder == "answered by aa:bb"
    assert len(arp.probed) == 1  # complete() waited for the same probe, it sent none


def test_a_probe_that_answered_before_observe_returned_is_not_pending() -> None:
    arp = GatedArp()
    arp.gate.set()
    vips, _ = adapter(arp)
    vips.observe([vip()])  # the VIP is remote now: the next probe starts beside the read
    (seen,) = vips.observe([vip()], wait_probes=False)
    # Either the probe beat the address read (an answer) or it is pending: never both.
    assert seen.probe_pending != (seen.answered_elsewhere is False)


def test_a_local_vip_is_never_pending() -> None:
    arp = GatedArp()
    vips, _ = adapter(arp, with_vip=True)
    (seen,) = vips.observe([vip()], wait_probes=False)
    assert seen.local is True and seen.probe_pending is False and arp.probed == []


def test_add_with_probe_adds_when_nobody_answers() -> None:
    arp = GatedArp()
    vips, runner = adapter(arp)
    vips.observe([vip()], wait_probes=False)
    arp.gate.set()
    vips.add(vip(), probe=True)
    assert len(adds(runner)) == 1
    assert len(arp.probed) == 1  # the pending probe's answer, no second probe


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (ProbeResult(True, mac="aa:bb", detail="answered by aa:bb"), "answered by another host"),
        (ProbeResult(None, detail="socket: Operation not permitted"), "could not check"),
    ],
)
def test_add_with_probe_refuses_when_someone_answers_or_it_cannot_tell(
    answer: ProbeResult, why: str
) -> None:
    arp = GatedArp(answers={VIP_IP: answer})
    vips, runner = adapter(arp)
    vips.observe([vip()], wait_probes=False)
    arp.gate.set()
    with pytest.raises(TerminalError, match=why):
        vips.add(vip(), probe=True)
    assert adds(runner) == []


def test_add_with_probe_and_no_pending_probe_probes_itself() -> None:
    """No observation left a probe pending (or the next one dropped it): add probes anew."""
    arp = GatedArp(answers={VIP_IP: ProbeResult(True, detail="answered by aa:bb")})
    arp.gate.set()
    vips, runner = adapter(arp)
    vips.observe([vip()], wait_probes=False)
    vips.observe([vip()])  # a new observation drops what the last one left pending
    probes_before = len(arp.probed)
    with pytest.raises(TerminalError, match="answered by another host"):
        vips.add(vip(), probe=True)
    assert len(arp.probed) == probes_before + 1 and adds(runner) == []


def test_a_stale_pending_answer_is_not_used() -> None:
    """A pending probe older than PENDING_MAX_AGE (an executor that retried and slept) is
    replaced by a new probe at the add: here the stale one said nobody, the new one says
    someone."""
    arp = GatedArp()
    vips, runner = adapter(arp)
    vips.observe([vip()], wait_probes=False)
    pending = vips._pending[VIP_IP]
    arp.gate.set()
    assert pending.future.result().answered is False  # the stale answer: nobody
    # As if it was sent longer ago than the limit; by now someone answers.
    vips._pending[VIP_IP] = replace(pending, started=pending.started - PENDING_MAX_AGE - 1)
    arp.answers[VIP_IP] = ProbeResult(True, detail="answered by aa:bb")
    with pytest.raises(TerminalError, match="answered by another host"):
        vips.add(vip(), probe=True)
    assert adds(runner) == [] and len(arp.probed) == 2


def test_add_without_probe_does_not_probe() -> None:
    arp = GatedArp()
    vips, runner = adapter(arp)
    vips.add(vip())
    assert arp.probed == [] and len(adds(runner)) == 1
