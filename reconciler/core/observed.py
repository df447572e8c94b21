"""Observed state: what the adapters report for this node and what it can see of its peer.

Invariants of this module:
- Every type is frozen plain data (hashable, comparable): a tick's observation never changes
  after it is taken, so the planner can be a pure function of it.
- A failed or partial observation is *data*: fields become ``UNKNOWN`` / ``None`` and ``error``
  says why. Nothing here raises because the world was unreadable.
- Enum values are the spellings DRBD itself prints (``UpToDate``, ``SyncSource`` ...), so parsers
  can map text to members with ``Enum(value)`` and fall back to ``UNKNOWN``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

_E = TypeVar("_E", bound=StrEnum)


class Role(StrEnum):
    PRIMARY = "Primary"
    SECONDARY = "Secondary"
    UNKNOWN = "Unknown"

    @classmethod
    def parse(cls, text: str) -> Role:
        return _parse_enum(cls, text)


class ConnState(StrEnum):
    """DRBD connection state, with DRBD 9's replication state folded in.

    DRBD 9 reports ``connection:Connected`` plus ``replication:SyncSource``; DRBD 8.4 reports
    ``cs:SyncSource``. Both normalise to ``SYNC_SOURCE`` so the planner sees one vocabulary.
    """

    STANDALONE = "StandAlone"
    DISCONNECTING = "Disconnecting"
    UNCONNECTED = "Unconnected"
    TIMEOUT = "Timeout"
    BROKEN_PIPE = "BrokenPipe"
    NETWORK_FAILURE = "NetworkFailure"
    PROTOCOL_ERROR = "ProtocolError"
    TEAR_DOWN = "TearDown"
    CONNECTING = "Connecting"
    WF_CONNECTION = "WFConnection"
    WF_REPORT_PARAMS = "WFReportParams"
    CONNECTED = "Connected"
    STARTING_SYNC_S = "StartingSyncS"
    STARTING_SYNC_T = "StartingSyncT"
    WF_BITMAP_S = "WFBitMapS"
    WF_BITMAP_T = "WFBitMapT"
    WF_SYNC_UUID = "WFSyncUUID"
    SYNC_SOURCE = "SyncSource"
    SYNC_TARGET = "SyncTarget"
    PAUSED_SYNC_S = "PausedSyncS"
    PAUSED_SYNC_T = "PausedSyncT"
    VERIFY_S = "VerifyS"
    VERIFY_T = "VerifyT"
    AHEAD = "Ahead"
    BEHIND = "Behind"
    UNKNOWN = "Unknown"

    @classmethod
    def parse(cls, text: str) -> ConnState:
        return _parse_enum(cls, text)

    @property
    def is_connected(self) -> bool:
        """The peers talk to each other (replicating, syncing or verifying)."""
        return self in _CONNECTED

    @property
    def is_syncing(self) -> bool:
        return self in _SYNCING


_SYNCING = frozenset(
    {
        ConnState.STARTING_SYNC_S,
        ConnState.STARTING_SYNC_T,
        ConnState.WF_BITMAP_S,
        ConnState.WF_BITMAP_T,
        ConnState.WF_SYNC_UUID,
        ConnState.SYNC_SOURCE,
        ConnState.SYNC_TARGET,
        ConnState.PAUSED_SYNC_S,
        ConnState.PAUSED_SYNC_T,
    }
)
_CONNECTED = _SYNCING | {
    ConnState.CONNECTED,
    ConnState.VERIFY_S,
    ConnState.VERIFY_T,
    ConnState.AHEAD,
    ConnState.BEHIND,
}


class DiskState(StrEnum):
    DISKLESS = "Diskless"
    ATTACHING = "Attaching"
    DETACHING = "Detaching"
    FAILED = "Failed"
    NEGOTIATING = "Negotiating"
    INCONSISTENT = "Inconsistent"
    OUTDATED = "Outdated"
    DUNKNOWN = "DUnknown"
    CONSISTENT = "Consistent"
    UPTODATE = "UpToDate"
    UNKNOWN = "Unknown"

    @classmethod
    def parse(cls, text: str) -> DiskState:
        return _parse_enum(cls, text)


def _parse_enum(cls: type[_E], text: str) -> _E:
    """Map DRBD's spelling to a member; anything unexpected is ``UNKNOWN``, never an error."""
    cleaned = text.strip()
    for member in cls:
        if member.value.lower() == cleaned.lower():
            return member
    return cls("Unknown")


@dataclass(frozen=True, slots=True)
class ResourceObs:
    """One DRBD resource as this node sees it.

    ``up`` is False when the resource is not configured in the kernel (DRBD stopped / module not
    loaded); ``known`` is False when the observation itself failed (then every state is
    UNKNOWN and ``error`` says why).

    ``disconnected_for``: seconds the connection has been *continuously* not connected
    (``ConnState.is_connected`` false), as the adapter knows it: only an adapter that sees
    every change (an events2 stream, the simulated world) reports it, counted from the change
    or from the listing after which it saw every change; None when connected or not known
    (a polling adapter: a heal between two polls is invisible). The witness counts its settle
    time from it (``safety.may_promote``).
    """

    name: str
    up: bool = False
    role: Role = Role.UNKNOWN
    conn: ConnState = ConnState.UNKNOWN
    disk: DiskState = DiskState.UNKNOWN
    peer_role: Role = Role.UNKNOWN
    peer_disk: DiskState = DiskState.UNKNOWN
    split_brain: bool = False
    sync_percent: float | None = None
    known: bool = True
    error: str | None = None
    disconnected_for: float | None = None

    @classmethod
    def unknown(cls, name: str, error: str) -> ResourceObs:
        return cls(name=name, up=False, known=False, error=error)

    @classmethod
    def down(cls, name: str) -> ResourceObs:
        return cls(
            name=name,
            up=False,
            role=Role.UNKNOWN,
            conn=ConnState.UNKNOWN,
            disk=DiskState.DISKLESS,
            peer_role=Role.UNKNOWN,
            peer_disk=DiskState.DUNKNOWN,
        )

    @property
    def degraded(self) -> bool:
        """Replication is not healthy (the reference design's alert condition)."""
        if not self.known or not self.up:
            return True
        if self.conn not in (ConnState.CONNECTED, ConnState.SYNC_SOURCE, ConnState.SYNC_TARGET):
            return True
        return not (self.disk is DiskState.UPTODATE and self.peer_disk is DiskState.UPTODATE)


@dataclass(frozen=True, slots=True)
class VipObs:
    """A floating address. ``local``: configured on this node; ``answered_elsewhere``: another
    host answers ARP for it (None when not probed, e.g. because it is local). ``announced``,
    for a local VIP: this node's agent sent gratuitous ARP for it after it last added it (its
    record in the state directory says so); False when it did not (an agent killed between
    adding and announcing, or an announcement that failed: initiators' ARP caches may still
    point at the old holder for 8-45 s); None when not known or not local.

    ``probe_pending``: not local, and its ARP probe was still running when the plan was made
    (``answered_elsewhere`` is then None). Observed so only when no decision but adding the
    VIP reads the answer (``safety.probes_can_wait``): the add-vip action then checks it itself
    before it adds the address (``Action.probe``), after the plan's target steps, so the probe's
    wait overlaps them instead of delaying the tick."""

    address: str
    local: bool | None = None
    answered_elsewhere: bool | None = None
    error: str | None = None
    holder: str | None = None  # who answers when answered_elsewhere (e.g. "answered by MAC")
    announced: bool | None = None
    probe_pending: bool = False


@dataclass(frozen=True, slots=True)
class TargetObs:
    """The iSCSI target on this node and the LUN numbers it exports.

    The target daemon (tgtd) is resident on both nodes; what serves is the *target*.
    ``running``: the spec's target is defined in the daemon as specified (IQN on its tid,
    State ready, the spec's ACLs and CHAP accounts): this node serves it, or would once its
    LUNs are exported. ``daemon``: the daemon itself runs and answers (True), is down
    (False), or the adapter does not know or does not model it (None: nothing is planned for
    it). ``running`` True implies ``daemon`` True; ``running`` None: unreadable (``error``)."""

    running: bool | None = None
    exported_luns: frozenset[int] = frozenset()
    error: str | None = None
    daemon: bool | None = None


@dataclass(frozen=True, slots=True)
class RoleVerdict:
    """What the role source says this node should be. UNKNOWN means "no opinion / unreadable":
    the planner then changes no role."""

    role: Role = Role.UNKNOWN
    detail: str = ""


@dataclass(frozen=True, slots=True)
class OperatorState:
    """What an operator set on this node: manual mode and the role chosen in it."""

    manual_mode: bool = False
    chosen_role: Role | None = None
    force: bool = False


@dataclass(frozen=True, slots=True)
class Liveness:
    """Reachability facts used by the promotion policy when DRBD is disconnected.

    ``peer_reachable``: the peer answers on its management/replication address.
    ``heuristics``: how many heuristic addresses (switch, gateway) answered, out of ``total``.
    None means "not probed".
    """

    peer_reachable: bool | None = None
    heuristics_ok: int = 0
    heuristics_total: int = 0


@dataclass(frozen=True, slots=True)
class WitnessObs:
    """The quorum witness as this node sees it (``enabled`` False: no witness configured).

    ``reachable``: a majority of the witness answered this observation (None: not asked).
    ``holder``: the node whose lease holds the cluster's key (None: the key is free, or
    unknown when not reachable). ``lease_left``: seconds this node can still count on its
    own lease, measured conservatively from when its last successful claim was *sent*
    (None: it holds none). ``error`` says why an observation is incomplete."""

    enabled: bool = False
    reachable: bool | None = None
    holder: str | None = None
    lease_left: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PbdObs:
    uuid: str  # the PBD's uuid (XAPI opaque refs never leave the adapter)
    sr_uuid: str
    sr_name: str
    attached: bool | None  # XAPI currently_attached; None: unknown
    # the SR's volume group VG_XenStorage-<sr-uuid> exists on this host;
    # None: unknown / not checked
    usable: bool | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HypervisorObs:
    enabled: bool = False  # False: no hypervisor adapter configured (nothing to plug)
    pbds: tuple[PbdObs, ...] = ()
    error: str | None = None  # XAPI unreachable / garbage: an observation with a reason
    source: str = ""  # who answered, e.g. "xapi (local socket)", "sim"


@dataclass(frozen=True, slots=True)
class LeftoverVip:
    """An address this node's agent added (its inventory says so) that the spec no longer
    declares: ``address`` as it was added, on ``interface``."""

    address: str
    interface: str


@dataclass(frozen=True, slots=True)
class LeftoverTarget:
    """A target (tid + IQN) this node's agent defined that the spec no longer declares."""

    tid: int
    iqn: str


@dataclass(frozen=True, slots=True)
class LeftoverLun:
    """A LUN this node's agent exported on the declared target that the spec no longer lists."""

    tid: int
    iqn: str
    lun: int


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What this node's agent created and the spec no longer declares (from the adapters'
    inventories in the state directory). Only inventory entries appear here: an address or a
    target the agent did not create is never a leftover, so it is never removed. ``error``:
    an inventory could not be read (then nothing is reported from it)."""

    vips: tuple[LeftoverVip, ...] = ()
    targets: tuple[LeftoverTarget, ...] = ()
    luns: tuple[LeftoverLun, ...] = ()
    error: str | None = None

    def __bool__(self) -> bool:
        return bool(self.vips or self.targets or self.luns)


@dataclass(frozen=True, slots=True)
class ObservedState:
    node: str
    resources: tuple[ResourceObs, ...] = ()
    vips: tuple[VipObs, ...] = ()
    target: TargetObs = field(default_factory=TargetObs)
    role_source: RoleVerdict = field(default_factory=RoleVerdict)
    operator: OperatorState = field(default_factory=OperatorState)
    liveness: Liveness = field(default_factory=Liveness)
    leftovers: Leftovers = field(default_factory=Leftovers)
    hypervisor: HypervisorObs = HypervisorObs()
    witness: WitnessObs = WitnessObs()

    def resource(self, name: str) -> ResourceObs:
        for r in self.resources:
            if r.name == name:
                return r
        return ResourceObs.unknown(name, "not reported by the DRBD adapter")

    def vip(self, address: str) -> VipObs:
        for v in self.vips:
            if v.address == address:
                return v
        return VipObs(address=address, error="not reported by the VIP adapter")
