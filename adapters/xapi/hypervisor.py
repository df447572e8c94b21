"""``HypervisorAdapter`` over XAPI: this host's PBDs of the iSCSI SRs tandem serves.

Invariants:

- Only PBDs of this host (XAPI host named ``host_name``) of ``lvmoiscsi`` SRs whose
  device-config ``target`` lists one of the spec's VIPs and whose ``targetIQN`` is the spec's
  IQN are reported (``select_pbds``, pure); XAPI's opaque references never leave this module,
  PBDs are named by uuid.
- ``observe`` never raises: a failed call is ``HypervisorObs(error=...)`` with the reason.
  ``usable`` is checked (``adapters.xapi.lvm``, through the command seam) for attached PBDs
  only; an unplugged SR has no volume group on the host by design.
- ``plug`` / ``replug`` raise ``TransientError`` / ``TerminalError`` only. XAPI's plug and
  unplug are no-ops in the state asked for, so both are idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from adapters.runner import Runner
from adapters.xapi.lvm import vg_exists
from adapters.xapi.session import XapiClient, XapiError
from reconciler.core.observed import HypervisorObs, PbdObs
from reconciler.core.spec import Target, Vip

SR_TYPES = frozenset({"lvmoiscsi"})


def select_pbds(
    *,
    host_ref: str,
    srs: Mapping[str, Mapping[str, Any]],
    pbds: Mapping[str, Mapping[str, Any]],
    iqn: str,
    vips: Iterable[str],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(PBD record, SR record) pairs of ``host_ref`` served through ``vips`` and ``iqn``,
    sorted by SR name then PBD uuid. A multipath SR lists its targets comma-separated."""
    wanted = set(vips)
    chosen = []
    for pbd in pbds.values():
        if pbd.get("host") != host_ref:
            continue
        sr = srs.get(str(pbd.get("SR", "")))
        if sr is None or sr.get("type") not in SR_TYPES:
            continue
        config = pbd.get("device_config") or {}
        targets = {t.strip() for t in str(config.get("target", "")).split(",")}
        if not targets & wanted or config.get("targetIQN") != iqn:
            continue
        chosen.append((pbd, sr))
    chosen.sort(key=lambda p: (str(p[1].get("name_label", "")), str(p[0].get("uuid", ""))))
    return chosen


class XapiHypervisor:
    def __init__(self, client: XapiClient, *, host_name: str, runner: Runner) -> None:
        self.client = client
        self.host_name = host_name
        self.runner = runner

    def observe(self, target: Target, vips: Sequence[Vip]) -> HypervisorObs:
        try:
            host_ref = self._host_ref()
            srs = self.client.call("SR.get_all_records")
            pbds = self.client.call("PBD.get_all_records")
            if not isinstance(srs, dict) or not isinstance(pbds, dict):
                raise XapiError("XAPI answered records that are not maps", transient=True)
            chosen = select_pbds(
                host_ref=host_ref, srs=srs, pbds=pbds, iqn=target.iqn, vips=[v.ip for v in vips]
            )
        except XapiError as exc:
            return HypervisorObs(enabled=True, error=exc.reason, source=self.client.source)
        return HypervisorObs(
            enabled=True,
            pbds=tuple(self._pbd_obs(pbd, sr) for pbd, sr in chosen),
            source=self.client.source,
        )

    def plug(self, pbd_uuid: str) -> None:
        try:
            self.client.call("PBD.plug", self._pbd_ref(pbd_uuid))
        except XapiError as exc:
            raise exc.adapter_error() from None

    def replug(self, pbd_uuid: str) -> None:
        try:
            ref = self._pbd_ref(pbd_uuid)
            self.client.call("PBD.unplug", ref)
            self.client.call("PBD.plug", ref)
        except XapiError as exc:
            raise exc.adapter_error() from None

    def _pbd_obs(self, pbd: Mapping[str, Any], sr: Mapping[str, Any]) -> PbdObs:
        attached = pbd.get("currently_attached")
        sr_uuid = str(sr.get("uuid", ""))
        usable: bool | None = None
        error: str | None = None
        if attached is True:
            usable, error = vg_exists(self.runner, sr_uuid)
        return PbdObs(
            uuid=str(pbd.get("uuid", "")),
            sr_uuid=sr_uuid,
            sr_name=str(sr.get("name_label", "")),
            attached=attached if isinstance(attached, bool) else None,
            usable=usable,
            error=error,
        )

    def _host_ref(self) -> str:
        refs = self.client.call("host.get_by_name_label", self.host_name)
        if not isinstance(refs, list) or len(refs) != 1:
            count = len(refs) if isinstance(refs, list) else "no list"
            raise XapiError(
                f"XAPI knows {count} host(s) named {self.host_name!r}, expected one "
                "(set xapi.hostNames in the spec)",
                transient=False,
            )
        return str(refs[0])

    def _pbd_ref(self, pbd_uuid: str) -> str:
        return str(self.client.call("PBD.get_by_uuid", pbd_uuid))
