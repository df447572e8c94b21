"""The watchdog fence (adapters/watchdog.py) against a file standing in for /dev/watchdog: the
witness adapter pets it before every observation, opens it lazily, disarms it ('V') on a clean
close, and an unusable device makes the witness read as unreachable (no fence, no disconnected
promotion)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters.watchdog import DeviceWatchdog, PettingWitness
from reconciler.core.observed import WitnessObs


@dataclass
class FakeWitness:
    """A witness adapter double (the WitnessAdapter protocol): holds the key for node1."""

    calls: list[str] = field(default_factory=list)

    def observe(self) -> WitnessObs:
        self.calls.append("observe")
        return WitnessObs(enabled=True, reachable=True, holder="node1", lease_left=8.0)

    def claim(self) -> None:
        self.calls.append("claim")

    def release(self) -> None:
        self.calls.append("release")

    def close(self) -> None:
        self.calls.append("close")


def test_every_observation_pets_the_device_and_a_clean_close_disarms_it(tmp_path: Path) -> None:
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    dog = DeviceWatchdog(str(device), 4.5)
    inner = FakeWitness()
    witness = PettingWitness(inner, dog)
    assert device.read_bytes() == b""  # building it opened nothing
    for _ in range(3):
        seen = witness.observe()
        assert seen.reachable and seen.holder == "node1"
    witness.claim()
    witness.release()
    assert device.read_bytes() == b"\0\0\0" and dog.pets == 3
    witness.close()
    witness.close()  # idempotent
    assert device.read_bytes() == b"\0\0\0V"
    assert inner.calls == ["observe"] * 3 + ["claim", "release", "close", "close"]


def test_an_unusable_device_reads_as_an_unreachable_witness(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-watchdog"
    witness = PettingWitness(FakeWitness(), DeviceWatchdog(str(missing), 4.5))
    seen = witness.observe()
    assert seen.reachable is False
    assert seen.error is not None and str(missing) in seen.error and "no fence" in seen.error
    assert seen.lease_left == 8.0  # what the node knows of its own lease stays
