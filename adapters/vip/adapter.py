"""Floating addresses with iproute2, plus ARP probing and gratuitous ARP.

``IpVip`` is the real ``VipAdapter``: ``observe`` reads ``ip -j addr show`` once per tick and,
for every VIP that is not local, asks an ``ArpTool`` whether another host answers ARP for it.

Invariants:

- ``observe`` never raises: unreadable ``ip`` output gives ``VipObs(local=None, error=...)``; a
  probe that cannot be made gives ``answered_elsewhere=None`` with the reason in ``error``.
- A VIP is ``local`` only when its address sits on the interface the spec names. Found on
  another interface it is ``local=None`` (a misconfiguration the agent must not paper over).
- Every probe is bounded: ``InProcessArp`` waits at most ``probe_timeout`` (default 30 ms, it
  sits inside the failover gap on the node being promoted); an answer ends the wait at once.
- ``add``/``remove`` are idempotent: "already assigned" / "not found" are success. They raise
  only ``TransientError``/``TerminalError`` (the runner's timeouts are transient).
- ``announce`` returns after the first frame(s): later frames go out from a background thread
  (``InProcessArp``) or a detached ``arping`` (``CommandArp``); it never sleeps in the tick.
- A local VIP is ``announced`` only when ``announce`` ran after the last ``add`` (see
  ``AnnounceRecord``): a VIP added but never announced is reported ``announced=False``.
- What ``add`` created is kept in the ``Inventory`` (address, interface) and dropped by
  ``remove``/``remove_old``: ``leftovers`` names only those addresses, so the agent never removes
  an address it did not add (one found already there, e.g. added by hand, is not recorded).
- Commands go through ``adapters.runner.Runner`` only; the in-process ARP tool uses an
  ``AF_PACKET`` socket in the namespace of the process that calls it, so it is only correct when
  the agent runs on the node (or inside the node's network namespace, as in the lab).
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from adapters.base import PENDING_MAX_AGE
from adapters.inventory import FileInventory
from adapters.runner import Runner
from adapters.vip.parse import AddressReadError, parse_ip_addr_json
from adapters.vip.record import AnnounceRecord
from adapters.vip.tools import DEFAULT_PROBE_TIMEOUT, ArpTool, ProbeResult
from reconciler.core.errors import AdapterError, TerminalError
from reconciler.core.observed import Leftovers, VipObs
from reconciler.core.spec import Vip

_EXISTS_RE = re.compile(r"File exists|already assigned", re.IGNORECASE)
_ABSENT_RE = re.compile(
    r"Cannot assign requested address|Address not found|Cannot find device", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class _Probe:
    started: float  # time.monotonic() when it was sent
    future: Future[ProbeResult]


def _probed(address: str, result: ProbeResult) -> VipObs:
    """A VIP that is not local, as its probe's ``result`` says."""
    return VipObs(
        address=address,
        local=False,
        answered_elsewhere=result.answered,
        # "answered by <MAC>" is information, not an observation failure: an error here
        # would raise a vip-unknown alert on every tick of a healthy secondary.
        error=(result.detail or None) if result.answered is None else None,
        holder=(result.detail or None) if result.answered else None,
    )


class AddressVip(ABC):
    """What every real ``VipAdapter`` shares, whatever reads and changes the addresses: the
    ARP probes of VIPs not held here, the announcement record, the inventory, and how an
    address table becomes ``VipObs`` (see the module docstring for the invariants).

    A subclass provides ``_read_addresses`` (interface name -> its IPv4 addresses; raises
    ``AddressReadError`` or ``AdapterError`` when they cannot be read) and ``_change`` (add or
    delete one address; True when it changed something, False when it was already so).
    """

    def __init__(
        self,
        *,
        arp: ArpTool,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        record: AnnounceRecord | None = None,
        inventory: FileInventory | None = None,
    ) -> None:
        if probe_timeout <= 0:
            raise ValueError("probe_timeout must be positive")
        self.arp = arp
        self.probe_timeout = probe_timeout
        self.record = AnnounceRecord() if record is None else record
        self.inventory = FileInventory() if inventory is None else inventory
        # VIPs the last observation did not find here: their probes start together with the
        # address read (a probe costs probe_timeout, an `ip` call a process start); a VIP found
        # here after all just has its probe result dropped. A scheduling hint, not a belief:
        # the observation is the same function of the world with or without it (a VIP missing
        # from it is probed after the read), only its latency differs.
        self._remote: set[str] = set()
        # The probes the last ``observe(wait_probes=False)`` left pending (VIP address ->
        # probe): read by ``complete`` or ``add(probe=True)`` of the same tick, dropped by the
        # next ``observe``.
        self._pending: dict[str, _Probe] = {}

    # --- what a subclass provides -------------------------------------------------------
    @abstractmethod
    def _read_addresses(self) -> dict[str, set[str]]: ...

    @abstractmethod
    def _change(self, verb: str, address: str, dev: str) -> bool:
        """``verb`` "add" or "del" ``address`` (``A/P``) on ``dev``."""

    # --- VipAdapter ---------------------------------------------------------------------
    def observe(self, vips: Sequence[Vip], *, wait_probes: bool = True) -> tuple[VipObs, ...]:
        self._pending = {}  # a new observation: what an earlier one left pending is dropped
        if not vips:
            return ()
        # Probes run on one pool: the early ones beside the address read, the rest after it.
        pool = ThreadPoolExecutor(max_workers=len(vips), thread_name_prefix="arp-probe")
        try:
            probes = {
                vip.ip: self._start_probe(pool, vip) for vip in vips if vip.ip in self._remote
            }
            return self._observe(vips, pool, probes, wait_probes)
        finally:
            # Not waiting: a pending probe ends by itself within probe_timeout (complete()
            # or add() read its answer); the pool's threads then exit.
            pool.shutdown(wait=wait_probes)

    def complete(self, seen: tuple[VipObs, ...]) -> tuple[VipObs, ...]:
        out = []
        for obs in seen:
            pending = self._pending.pop(obs.address, None) if obs.probe_pending else None
            if pending is None:
                out.append(
                    replace(obs, probe_pending=False, error="the ARP probe's answer was lost")
                    if obs.probe_pending
                    else obs
                )
                continue
            out.append(_probed(obs.address, pending.future.result()))
        return tuple(out)

    def _start_probe(self, pool: ThreadPoolExecutor, vip: Vip) -> _Probe:
        return _Probe(time.monotonic(), pool.submit(self._probe_one, vip))

    def _observe(
        self,
        vips: Sequence[Vip],
        pool: ThreadPoolExecutor,
        probes: dict[str, _Probe],
        wait: bool,
    ) -> tuple[VipObs, ...]:
        try:
            links = self._read_addresses()
        except (AdapterError, AddressReadError) as exc:
            why = f"cannot read local addresses: {exc}"
            return tuple(VipObs(address=v.ip, local=None, error=why) for v in vips)
        out: dict[int, VipObs] = {}
        to_probe: list[tuple[int, Vip]] = []
        for i, vip in enumerate(vips):
            holders = sorted(name for name, ips in links.items() if vip.ip in ips)
            if vip.interface in holders:
                out[i] = VipObs(address=vip.ip, local=True, announced=vip.ip in self.record)
            elif holders:
                out[i] = VipObs(
                    address=vip.ip,
                    local=None,
                    error=(
                        f"VIP {vip.ip} is configured on {', '.join(holders)}, not on "
                        f"{vip.interface} as the spec says; fix it by hand"
                    ),
                )
            elif vip.interface not in links:
                out[i] = VipObs(
                    address=vip.ip,
                    local=False,
                    error=f"interface {vip.interface} does not exist; cannot probe {vip.ip}",
                )
            else:
                to_probe.append((i, vip))
        for _, vip in to_probe:
            if vip.ip not in probes:
                probes[vip.ip] = self._start_probe(pool, vip)
        self._remote = {vip.ip for _, vip in to_probe}
        for i, vip in to_probe:
            probe = probes[vip.ip]
            if wait or probe.future.done():
                out[i] = _probed(vip.ip, probe.future.result())
            else:
                self._pending[vip.ip] = probe
                out[i] = VipObs(address=vip.ip, local=False, probe_pending=True)
        return tuple(out[i] for i in range(len(vips)))

    def _probe_one(self, vip: Vip) -> ProbeResult:
        try:
            return self.arp.probe(vip.interface, vip.ip, timeout=self.probe_timeout)
        except Exception as exc:  # a probe failure is data, never an exception
            return ProbeResult(None, detail=f"ARP probe failed: {exc!r}")

    def _check_nobody_answers(self, vip: Vip) -> None:
        """``add(probe=True)``: the pending probe's answer when it started less than
        ``PENDING_MAX_AGE`` ago, else a new probe; raise unless nobody else answered."""
        pending = self._pending.pop(vip.ip, None)
        if pending is not None and time.monotonic() - pending.started <= PENDING_MAX_AGE:
            result = pending.future.result()
        else:
            result = self._probe_one(vip)
        if result.answered is False:
            return
        if result.answered:
            raise TerminalError(
                f"VIP {vip.ip} is answered by another host ({result.detail or 'answered'}); "
                "not added, not taking it over (a stale holder or an address conflict)"
            )
        raise TerminalError(
            f"VIP {vip.ip} not added: could not check whether another host answers "
            f"({result.detail})"
        )

    def add(self, vip: Vip, *, probe: bool = False) -> None:
        """Add the address on the VIP's interface; an address already there is success. The VIP
        leaves the announcement record first: it counts as announced only once ``announce``
        ran after this. ``probe``: first check that nobody else answers (see the protocol,
        ``adapters.base.VipAdapter.add``)."""
        if probe:
            self._check_nobody_answers(vip)
        self.record.forget(vip.ip)
        if self._change("add", str(vip.address), vip.interface):
            self.inventory.change("add_vip", str(vip.address), vip.interface)

    def remove(self, vip: Vip) -> None:
        """Delete the address from the VIP's interface; an address (or interface) that is not
        there is success: the VIP is not configured on that interface either way. This node's own
        announcements of the VIP end first: a gratuitous ARP round still due after the peer
        took the address over would drag the initiators' ARP caches back here."""
        self.remove_old(str(vip.address), vip.interface)

    def remove_old(self, address: str, interface: str) -> None:
        """Remove ``address`` (as added: ``A/P``) from ``interface`` and drop it from the
        inventory; absent is success (see ``remove``)."""
        ip = address.split("/", 1)[0]
        self.arp.cancel(interface, ip)
        self._change("del", address, interface)
        self.record.forget(ip)
        self.inventory.change("drop_vip", address)

    def leftovers(self, vips: Sequence[Vip]) -> Leftovers:
        """Addresses this adapter added that ``vips`` no longer declares (no command runs)."""
        found = self.inventory.read().vip_leftovers(vips)
        return Leftovers(vips=found, error=self.inventory.error)

    def announce(self, vip: Vip) -> None:
        self.arp.announce(vip.interface, vip.ip)
        self.record.remember(vip.ip)


class IpVip(AddressVip):
    """``VipAdapter`` on iproute2 (see the module docstring for the invariants).

    ``probe_timeout`` bounds each ARP probe; several VIPs that need probing are probed
    concurrently, so ``observe`` costs one ``ip`` call plus about one ``probe_timeout``. Used
    where netlink cannot reach: a node behind an executing transport (the VM tier's console).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        arp: ArpTool,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        command_timeout: float | None = None,
        record: AnnounceRecord | None = None,
        inventory: FileInventory | None = None,
    ) -> None:
        super().__init__(arp=arp, probe_timeout=probe_timeout, record=record, inventory=inventory)
        self.runner = runner
        self.command_timeout = command_timeout

    def _read_addresses(self) -> dict[str, set[str]]:
        res = self.runner.run(["ip", "-j", "addr", "show"], timeout=self.command_timeout)
        return parse_ip_addr_json(res.stdout)

    def _change(self, verb: str, address: str, dev: str) -> bool:
        if verb == "add":
            return self._ip_addr("add", address, dev, already=_EXISTS_RE, what="add")
        return self._ip_addr("del", address, dev, already=_ABSENT_RE, what="remove")

    def _ip_addr(
        self, verb: str, address: str, dev: str, *, already: re.Pattern[str], what: str
    ) -> bool:
        """Run ``ip addr VERB``; True when it changed something, False when ``already``."""
        argv = ["ip", "addr", verb, address, "dev", dev]
        res = self.runner.run(argv, check=False, timeout=self.command_timeout)
        if res.ok:
            return True
        if already.search(res.stderr):
            return False
        where = "on" if verb == "add" else "from"
        raise TerminalError(
            f"cannot {what} VIP {address} {where} {dev}: {res.stderr.strip()}",
            command=res.argv,
            output=res.stderr,
        )
