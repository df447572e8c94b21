"""The tgt (scsi-target-utils) iSCSI target: one job a module.

- ``parse``: pure, total parsers of ``tgtadm`` output.
- ``process``: ``ProcessHost``, the node's files and process table (local or via the runner).
- ``adapter``: ``TgtAdapter``, the real ``TargetAdapter`` over one resident tgtd it starts (and
  watches), defining and deleting the target in it, observed from a cached target listing.
- ``chap``: the CHAP secrets file (checked, read, its passwords registered for redaction).
"""

from adapters.tgt.adapter import ISCSI_PORT, NOT_RUNNING_RC, TgtAdapter
from adapters.tgt.chap import ChapFileError, ChapSecrets, load_chap_secrets
from adapters.tgt.parse import (
    TgtAccount,
    TgtConnection,
    TgtLun,
    TgtSession,
    TgtShow,
    TgtSystem,
    TgtTarget,
    parse_tgtadm_portals,
    parse_tgtadm_show,
    parse_tgtadm_sys,
)
from adapters.tgt.process import CommandProcessHost, LocalProcessHost, ProcessHost

__all__ = [
    "ISCSI_PORT",
    "NOT_RUNNING_RC",
    "ChapFileError",
    "ChapSecrets",
    "CommandProcessHost",
    "LocalProcessHost",
    "ProcessHost",
    "TgtAccount",
    "TgtAdapter",
    "TgtConnection",
    "TgtLun",
    "TgtSession",
    "TgtShow",
    "TgtSystem",
    "TgtTarget",
    "load_chap_secrets",
    "parse_tgtadm_portals",
    "parse_tgtadm_show",
    "parse_tgtadm_sys",
]
