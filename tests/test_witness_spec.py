"""The witness section of the spec: the policy needs a witness adapter and etcd endpoints, the
timing rule (``2 x (tickInterval + 2 x retryTimeout) + stepDownMargin <= ttl x (1 -
clockDrift)``) is refused with the fields named, the watchdog must fire before the other node
can promote."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.spec import DisconnectedPolicy
from reconciler.core.specload import SpecError, load_spec

DEMO = (Path(__file__).resolve().parent.parent / "specs" / "demo.yaml").read_text()
POLICY = "whenDisconnected: quorum   # a lone node may promote only if it still sees the switch"


def witness_spec(witness: str, *, adapter: str | None = "sim", tick: str = "1") -> str:
    text = DEMO.replace(POLICY, "whenDisconnected: witness")
    text = text.replace("    tickInterval: 2\n", f"    tickInterval: {tick}\n")
    if adapter is not None:
        text = text.replace("  adapters:\n", f"  adapters:\n    witness: {adapter}\n")
    return text.replace("  timings:\n", f"  witness:\n    retryTimeout: 1\n{witness}  timings:\n")


def problem(text: str) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(text)
    return str(err.value)


def test_the_witness_policy_with_the_simulated_witness_loads() -> None:
    spec = load_spec(witness_spec("    ttl: 10\n"))
    assert spec.spec.promotion.when_disconnected is DisconnectedPolicy.WITNESS
    assert spec.spec.adapters.witness == "sim"
    assert "witness" in spec.spec.adapters.simulated


def test_the_witness_adapter_defaults_to_etcd_with_the_policy_and_etcd_needs_endpoints() -> None:
    text = witness_spec("    ttl: 10\n", adapter=None)
    assert "witness.endpoints" in problem(text)
    ok = load_spec(witness_spec("    endpoints: [http://198.51.100.9:2379]\n", adapter=None))
    assert ok.spec.adapters.witness == "etcd"
    assert ok.spec.witness.endpoints == ("http://198.51.100.9:2379",)
    assert load_spec(DEMO).spec.adapters.witness == "none"


def test_the_policy_refuses_no_witness_adapter() -> None:
    assert "needs a witness adapter" in problem(witness_spec("    ttl: 10\n", adapter="none"))


def test_the_timing_rule_names_the_fields() -> None:
    # 2 x (1 + 2 x 1) + 1 = 7 > 6 x 0.99
    text = problem(witness_spec("    ttl: 6\n"))
    for name in ("tickInterval", "retryTimeout", "stepDownMargin", "witness.ttl", "clockDrift"):
        assert name in text
    # the default tick interval (10 s) breaks it with the default ttl (10 s)
    assert "witness timing rule broken" in problem(witness_spec("    ttl: 10\n", tick="10"))
    # 2 x (1 + 2 x 1) + 1 = 7 <= 10 x 0.99; 2 x (2 + 2) + 1 = 9 <= 9.9; 2 x (3 + 2) + 1 > 9.9
    assert load_spec(witness_spec("    ttl: 10\n")).spec.witness.ttl == 10
    assert load_spec(witness_spec("    ttl: 10\n", tick="2")).spec.timings.tick_interval == 2
    assert "witness timing rule broken" in problem(witness_spec("    ttl: 10\n", tick="3"))


def test_the_watchdog_timeout_lengthens_the_settle_time_which_must_fit_in_the_ttl() -> None:
    """A node serving unleased that pauses as it sees the cut is stopped only by its watchdog:
    the settle time covers the timeout, and settle + one gap must fit in ttl x 0.99 (the
    claimant waits on its own lease): (3 + t / 0.99) x 1.01 + 3 <= 9.9 for t <= 3.79."""
    dog = "    watchdog:\n      device: /dev/watchdog\n      timeout: {}\n"
    why = problem(witness_spec(dog.format("3.8")))
    assert "watchdog.timeout (3.8) is too long for witness.ttl (10)" in why
    assert "lower the timeout or raise the ttl" in why
    spec = load_spec(witness_spec(dog.format("3.7")))
    assert spec.spec.witness.watchdog is not None
    assert spec.spec.witness.watchdog.timeout == 3.7
    assert spec.spec.witness.settle(1.0) == pytest.approx((3 + 3.7 / 0.99) * 1.01)
    # A longer ttl makes room for a longer timeout.
    assert load_spec(witness_spec("    ttl: 12\n" + dog.format("4.5"))).spec.witness.ttl == 12


def test_the_derived_thresholds() -> None:
    w = load_spec(witness_spec("    ttl: 10\n")).spec.witness
    assert w.gap(1.0) == 3.0
    assert w.step_down_below(1.0) == pytest.approx(4.1)
    assert w.refresh_below(1.0) == pytest.approx(7.1)
    assert w.settle(1.0) == pytest.approx(4.04)  # no watchdog: gap + stepDownMargin
    # a fresh lease is above the step-down threshold one gap later (what the rule buys)
    assert w.ttl - w.gap(1.0) > w.step_down_below(1.0)


def test_an_unset_ttl_follows_the_tick_interval_so_the_defaults_are_valid() -> None:
    # retryTimeout 1 (witness_spec's), margin 1, drift 1%: 2 x (10 + 2) + 1 = 25 -> 25.25 -> 26
    spec = load_spec(witness_spec("", tick="10"))
    assert spec.spec.witness.ttl == 26
    assert spec.spec.witness.timing_problem(10) is None
    # a short tick keeps the floor of 10 s
    assert load_spec(witness_spec("", tick="1")).spec.witness.ttl == 10
    # every default: tickInterval 10, retryTimeout 2 -> (2 x 14 + 1) / 0.99 = 29.3 -> 30
    text = DEMO.replace(POLICY, "whenDisconnected: witness").replace(
        "    tickInterval: 2\n", "    tickInterval: 10\n"
    )
    text = text.replace("  adapters:\n", "  adapters:\n    witness: sim\n")
    assert load_spec(text).spec.witness.ttl == 30
    # a ttl that is set is never raised behind the operator's back
    assert "witness timing rule broken" in problem(witness_spec("    ttl: 10\n", tick="10"))
