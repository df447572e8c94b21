"""``Inventory``: what this node's agent created (VIP addresses, targets, LUNs), so that it can
remove what the spec no longer declares, and only that.

Invariants:

- An entry is added only after the add/define/export succeeded, and dropped only after the
  remove succeeded (or found nothing to remove): an address or a target the agent did not
  create is never in it, so ``leftovers`` never names it and the planner never removes it.
- ``leftovers`` is a pure function of the inventory and the declared items: inventory entries
  the spec does not declare. It runs no command (cheap, every tick); an entry whose item is
  already gone is reported once more and its idempotent removal drops it.
- ``InventoryData`` is plain data with a JSON form; ``FileInventory`` keeps it in a small file
  in the state directory written atomically (``adapters.state.write_json_atomic``), so a
  restarted agent or the next ``reconcile --once`` still knows what it created. The simulated
  adapters keep the same JSON in the simulated world (the node's ``inventory``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.state import read_json, write_json_atomic
from reconciler.core.observed import LeftoverLun, LeftoverTarget, LeftoverVip
from reconciler.core.spec import Target, Vip

log = logging.getLogger(__name__)


@dataclass(slots=True)
class InventoryData:
    """``vips``: address -> interface; ``targets``: tid -> IQN; ``luns``: (tid, lun) pairs."""

    vips: dict[str, str] = field(default_factory=dict)
    targets: dict[int, str] = field(default_factory=dict)
    luns: set[tuple[int, int]] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        # Keys in sorted order, as a JSON file written with sort_keys reads back: the same
        # inventory always has the same spelling (the simulated world compares its dumps).
        return {
            "luns": [list(pair) for pair in sorted(self.luns)],
            "targets": {str(tid): iqn for tid, iqn in sorted(self.targets.items())},
            "vips": dict(sorted(self.vips.items())),
        }

    @classmethod
    def from_json(cls, data: object) -> InventoryData:
        """Tolerant: anything malformed is dropped (never raises)."""
        out = cls()
        if not isinstance(data, dict):
            return out
        vips = data.get("vips")
        if isinstance(vips, dict):
            out.vips = {k: v for k, v in vips.items() if isinstance(k, str) and isinstance(v, str)}
        targets = data.get("targets")
        if isinstance(targets, dict):
            for tid, iqn in targets.items():
                if isinstance(tid, str) and tid.isdigit() and isinstance(iqn, str):
                    out.targets[int(tid)] = iqn
        luns = data.get("luns")
        if isinstance(luns, list):
            for pair in luns:
                if (
                    isinstance(pair, list)
                    and len(pair) == 2
                    and all(isinstance(x, int) for x in pair)
                ):
                    out.luns.add((pair[0], pair[1]))
        return out

    # --- changes (after a successful action) --------------------------------------------
    def add_vip(self, address: str, interface: str) -> None:
        self.vips[address] = interface

    def drop_vip(self, address: str) -> None:
        self.vips.pop(address, None)

    def add_target(self, tid: int, iqn: str) -> None:
        if self.targets.get(tid) != iqn:
            self.luns = {p for p in self.luns if p[0] != tid}  # a new target has no LUN yet
        self.targets[tid] = iqn

    def drop_target(self, tid: int) -> None:
        self.targets.pop(tid, None)
        self.luns = {p for p in self.luns if p[0] != tid}

    def drop_all_targets(self) -> None:
        """The daemon stopped: every target and LUN it held is gone with it."""
        self.targets.clear()
        self.luns.clear()

    def add_lun(self, tid: int, lun: int) -> None:
        self.luns.add((tid, lun))

    def drop_lun(self, tid: int, lun: int) -> None:
        self.luns.discard((tid, lun))

    # --- what the spec no longer declares -----------------------------------------------
    def vip_leftovers(self, declared: Sequence[Vip]) -> tuple[LeftoverVip, ...]:
        wanted = {(v.ip, v.interface) for v in declared}
        return tuple(
            LeftoverVip(address=addr, interface=dev)
            for addr, dev in sorted(self.vips.items())
            if (_ip(addr), dev) not in wanted
        )

    def target_leftovers(
        self, declared: Target
    ) -> tuple[tuple[LeftoverTarget, ...], tuple[LeftoverLun, ...]]:
        targets = tuple(
            LeftoverTarget(tid=tid, iqn=iqn)
            for tid, iqn in sorted(self.targets.items())
            if (tid, iqn) != (declared.tid, declared.iqn)
        )
        luns_wanted = {x.lun for x in declared.luns}
        current = self.targets.get(declared.tid) == declared.iqn
        luns = tuple(
            LeftoverLun(tid=tid, iqn=declared.iqn, lun=lun)
            for tid, lun in sorted(self.luns)
            if current and tid == declared.tid and lun not in luns_wanted
        )
        return targets, luns


def _ip(address: str) -> str:
    """``198.51.100.10/24`` -> ``198.51.100.10`` (the inventory keeps the address as added)."""
    return address.split("/", 1)[0]


class FileInventory:
    """An ``InventoryData`` kept in ``path`` (None: in memory only). Read once, then kept in
    memory: only this node's agent writes it. A file that cannot be read is logged and read as
    empty (nothing is then removed: the safe reading); one that cannot be written is logged and
    the in-memory inventory still holds for this process."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._lock = threading.Lock()
        self._data: InventoryData | None = None if self.path else InventoryData()
        self.error: str | None = None

    def read(self) -> InventoryData:
        with self._lock:
            return self._load()

    def change(self, how: str, *args: Any) -> None:
        """Apply ``InventoryData.<how>(*args)`` and persist it when it changed anything."""
        with self._lock:
            data = self._load()
            before = data.to_json()
            getattr(data, how)(*args)
            after = data.to_json()
            if after == before or self.path is None:
                return
            try:
                write_json_atomic(self.path, after)
            except OSError as exc:
                log.warning("cannot write the inventory %s: %s", self.path, exc)

    def _load(self) -> InventoryData:
        if self._data is None:
            assert self.path is not None
            try:
                self._data = InventoryData.from_json(read_json(self.path))
            except (OSError, ValueError) as exc:
                self.error = f"inventory {self.path} is unreadable ({exc}); removing nothing"
                log.warning("%s", self.error)
                self._data = InventoryData()
        return self._data
