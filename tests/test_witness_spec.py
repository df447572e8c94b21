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
    ok = load_spec(witness_spec("    endpoints: [http://192.0.2.9:2379]\n", adapter=None))
    assert ok.spec.adapters.witness == "etcd"
    assert ok.spec.witness.endpoints == ("http://192.0.2.9:2379",)
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


def test_the_watchdog_must_fire_before_the_other_node_can_promote() -> None:
    dog = "    watchdog:\n      device: /dev/watchdog\n      timeout: {}\n"
    # limit: (settle 1.01 x (1 + 2 + 1) + margin 1) x 0.99 = 4.99
    assert "watchdog.timeout" in problem(witness_spec(dog.format("5.0")))
    spec = load_spec(witness_spec(dog.format("4.9")))
    assert spec.spec.witness.watchdog is not None
    assert spec.spec.witness.watchdog.timeout == 4.9


def test_the_derived_thresholds() -> None:
    w = load_spec(witness_spec("    ttl: 10\n")).spec.witness
    assert w.gap(1.0) == 3.0
    assert w.step_down_below(1.0) == pytest.approx(4.1)
    assert w.refresh_below(1.0) == pytest.approx(7.1)
    assert w.settle(1.0) == pytest.approx(4.04)
    assert w.watchdog_limit(1.0) == pytest.approx(5.04 * 0.99)
    # a fresh lease is above the step-down threshold one gap later (what the rule buys)
    assert w.ttl - w.gap(1.0) > w.step_down_below(1.0)
