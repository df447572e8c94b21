"""The fake XAPI pool in the namespace lab: ``PBD.plug`` really probes the target.

``iscsi_probe(lab)`` is the fake pool's ``probe``: it runs ``iscsi-inq`` against the PBD's
``target``/``targetIQN`` (LUN 1) from the namespace of the PBD's host, through the lab's one
namespace helper (``Lab.run``), so a plug succeeds only when tandem's target really serves on
the VIP as that host sees it."""

from __future__ import annotations

from collections.abc import Callable

from tests.fakes.xapi import FakePool, Pbd
from tests.lab.netns import Lab

PROBE_TIMEOUT = 5.0


def iscsi_probe(lab: Lab, *, lun: int = 1) -> Callable[[FakePool, Pbd], bool]:
    def probe(pool: FakePool, pbd: Pbd) -> bool:
        host = pool.hosts[pbd.host].name_label
        portal = pbd.device_config["target"].split(",")[0]
        url = f"iscsi://{portal}/{pbd.device_config['targetIQN']}/{lun}"
        result = lab.run(host, ["iscsi-inq", url], check=False, timeout=PROBE_TIMEOUT)
        return result.ok

    return probe
