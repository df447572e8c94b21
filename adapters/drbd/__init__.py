"""Real DRBD: one job a module.

- ``parse``: pure, total parsers of ``drbdsetup status`` (JSON and text), ``events2`` and
  ``/proc/drbd`` output.
- ``record``: ``SplitBrainRecord``, what split-brain inference needs across ticks (on disk).
- ``adapter``: ``RealDrbd``, the real ``DrbdAdapter`` over ``drbdsetup``/``drbdadm``.
- ``stream``: ``EventFedDrbd``, the same adapter observing through one ``drbdsetup events2``
  stream (the default for real DRBD where the transport can stream).
"""

from adapters.drbd.adapter import RealDrbd, StatusFormat, classify_drbdadm_failure, drbd_not_loaded
from adapters.drbd.parse import (
    Events2Line,
    Events2State,
    ParseResult,
    parse_events2,
    parse_proc_drbd,
    parse_status_json,
    parse_status_text,
)
from adapters.drbd.record import ResourceMemo, SplitBrainRecord
from adapters.drbd.stream import EventFedDrbd

__all__ = [
    "EventFedDrbd",
    "Events2Line",
    "Events2State",
    "ParseResult",
    "RealDrbd",
    "ResourceMemo",
    "SplitBrainRecord",
    "StatusFormat",
    "classify_drbdadm_failure",
    "drbd_not_loaded",
    "parse_events2",
    "parse_proc_drbd",
    "parse_status_json",
    "parse_status_text",
]
