"""A command runner that answers ``vgs`` like LVM2 does, from a set of volume groups this host
has (the host's LVM view of the SRs). Only ``vgs`` is answered; any other command fails the
test. The texts are LVM2's (see tests/fixtures/lvm/)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapters.runner import CommandResult, Runner

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lvm"


def fixture(name: str, vg: str) -> str:
    """A captured output with its volume group name replaced by ``vg``."""
    return (FIXTURES / name).read_text().replace("VG_XenStorage-CAPTURED", vg)


@dataclass
class FakeLvmRunner(Runner):
    """``vgs``: the volume groups this host has; ``lookup``, when given, answers instead
    (e.g. from a fake pool: the group exists while the host's PBD is attached)."""

    vgs: set[str] = field(default_factory=set)
    lookup: Callable[[str], bool] | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        transient_codes: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        key = tuple(argv)
        self.calls.append(key)
        assert key[:4] == ("vgs", "--noheadings", "-o", "vg_name") and len(key) == 5, key
        name = key[4]
        if self.lookup(name) if self.lookup else name in self.vgs:
            return CommandResult(key, 0, fixture("vgs-found.txt", name), "", 0.01)
        assert not check, "vgs of a missing volume group fails: the adapter reads its answer"
        return CommandResult(key, 5, "", fixture("vgs-not-found.txt", name), 0.01)
