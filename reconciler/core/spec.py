"""The desired-state spec (``apiVersion: tandem/v1``, ``kind: StorageCluster``).

Invariants of this module:
- Every model forbids unknown keys and is frozen: a typo is an error, never a silent default.
- Every string that can reach a command line (names, devices, interfaces, IQNs, paths) matches a
  conservative pattern here, so adapters never have to quote or escape anything.
- YAML keys are camelCase (Kubernetes style); Python attributes are snake_case.
- Numbers and booleans are strict (a YAML value keeps its type: `lun: '1'` or `minor: true` is
  an error, never coerced); addresses are a host's unicast IPv4 addresses.
- What would only fail at run time is refused here: two nodes sharing an address, a heuristic
  that answers from a cluster node, one disk, device or LUN identity used twice, a target
  driver without an adapter (`lio`).
- The JSON Schema committed as ``specs/schema.json`` is generated from these models.
"""

from __future__ import annotations

import ipaddress
import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from reconciler.core.spectypes import (
    DevicePath,
    FilePath,
    HeaderText,
    HostName,
    InterfaceName,
    IPv4,
    IPv4WithPrefix,
    Iqn,
    MailAddress,
    SafeName,
    ScsiWord,
    Seconds,
    XapiUrl,
    _Model,
    cross_field_error,
)


class Metadata(_Model):
    name: SafeName


class Transport(StrEnum):
    LOCAL = "local"
    NETNS = "netns"


class Node(_Model):
    """One of the two hosts."""

    name: SafeName = Field(description="Host name; matched against the machine's hostname.")
    replication_address: IPv4 = Field(
        description="Address on the DRBD replication link (a unicast host address)."
    )
    management_address: IPv4 | None = Field(
        default=None,
        description="Address on the management network (used for liveness; a unicast host "
        "address).",
    )
    pool_conf: FilePath = Field(
        default="/etc/xensource/pool.conf",
        description="Where XenServer's pool.conf is on this node (role source pool-master).",
    )
    transport: Transport = Field(
        default=Transport.LOCAL,
        description="How commands reach this node: 'local', or 'netns' (lab: inside a namespace).",
    )
    namespace: SafeName | None = Field(
        default=None, description="The network namespace for transport 'netns'."
    )
    status_address: str | None = Field(
        default=None,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5}$",
        description="HOST:PORT where this node's agent serves /metrics and /status (its "
        "--metrics-address); `reconcile status --cluster` reads the peer's status there.",
    )

    @model_validator(mode="after")
    def _namespace_matches_transport(self) -> Node:
        if self.transport is Transport.NETNS and not self.namespace:
            raise ValueError("transport 'netns' needs 'namespace'")
        if self.transport is not Transport.NETNS and self.namespace:
            raise cross_field_error(
                f"'namespace' is only used with transport 'netns' (transport is "
                f"{self.transport.value!r})",
                "namespace",
            )
        return self


class RoleSourceType(StrEnum):
    POOL_MASTER = "pool-master"
    MANUAL = "manual"
    STATIC = "static"


class RoleSource(_Model):
    """Who decides which node is storage primary."""

    type: RoleSourceType = Field(
        default=RoleSourceType.POOL_MASTER,
        description=(
            "'pool-master': follow the XenServer pool master (reference design); "
            "'manual': only the operator's choice; "
            "'static': the preferred node is primary while it is alive (plain Linux)."
        ),
    )
    preferred: SafeName | None = Field(
        default=None, description="For 'static': the node that should be primary."
    )
    failback: StrictBool = Field(
        default=False,
        description="For 'static': move storage back to the preferred node when it returns.",
    )

    @model_validator(mode="after")
    def _preferred_for_static(self) -> RoleSource:
        if self.type is RoleSourceType.STATIC and self.preferred is None:
            raise ValueError("role source 'static' needs 'preferred' (a node name)")
        return self


class DisconnectedPolicy(StrEnum):
    REFUSE = "refuse"
    OUTDATED_PEER = "outdated-peer"
    QUORUM = "quorum"
    WITNESS = "witness"


class Promotion(_Model):
    """When may a node promote while it cannot talk to its peer's DRBD?"""

    when_disconnected: DisconnectedPolicy = Field(
        default=DisconnectedPolicy.QUORUM,
        description=(
            "'refuse': never (an operator override is needed); "
            "'outdated-peer': only when DRBD reports the peer's disk Outdated; "
            "'quorum': also when the peer is unreachable and a majority of heuristic "
            "addresses answer (the lone host still sees the outside world); "
            "'witness': only while this node holds the cluster's lease-backed key in etcd "
            "(see 'witness'): the serving node renews it, a disconnected node promotes only "
            "after the old holder's lease has expired and while it reaches an etcd majority."
        ),
    )
    heuristics: tuple[IPv4, ...] = Field(
        default=(),
        description="Addresses only the healthy side can reach (switch, gateway).",
    )


class LivenessTimings(_Model):
    """How the agent pings its peer (management and replication addresses) and the heuristic
    addresses: one ICMP echo to each every ``interval``, a reply counts when it comes within
    ``timeout``; the peer is dead after ``misses`` consecutive intervals without a reply on
    every peer address. Detection time after the peer's last reply: between
    ``(misses - 1) * interval + timeout`` and ``misses * interval + timeout`` (defaults:
    0.8-1.0 s). The simulated DRBD drops its connection by the same rule applied to the
    peer's replication address alone (docs/operations.md)."""

    interval: Annotated[float, Strict()] = Field(
        default=0.2,
        ge=0.01,
        le=60,
        allow_inf_nan=False,
        description="Seconds between two probes of each address.",
    )
    timeout: Annotated[float, Strict()] = Field(
        default=0.2,
        ge=0.005,
        le=60,
        allow_inf_nan=False,
        description="A reply counts only when it arrives within this many seconds of its "
        "probe; at most 'interval'.",
    )
    misses: StrictInt = Field(
        default=4,
        ge=1,
        le=100,
        description="Consecutive intervals without any reply from the peer before it counts "
        "as dead (and an address as not answering).",
    )

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> LivenessTimings:
        if self.timeout > self.interval:
            raise cross_field_error(
                f"timeout {self.timeout:g} s is longer than interval {self.interval:g} s: a "
                "probe's reply must be judged before the next probe goes out",
                "timeout",
            )
        return self

    @property
    def detection(self) -> tuple[float, float]:
        """Seconds from the peer's last reply until it counts as dead: (fastest, slowest)."""
        return (
            (self.misses - 1) * self.interval + self.timeout,
            self.misses * self.interval + self.timeout,
        )


class Resource(_Model):
    """A DRBD resource replicated between the nodes."""

    name: SafeName
    minor: StrictInt = Field(
        ge=0, le=1048575, description="DRBD minor: the device is /dev/drbd<minor>."
    )
    disk: DevicePath = Field(description="Backing block device on each node.")
    device_path: FilePath | None = Field(
        default=None,
        description=(
            "What the target exports for this resource; default /dev/drbd<minor>. "
            "Labs with simulated DRBD point it at a file standing in for the device."
        ),
    )

    @property
    def device(self) -> str:
        return self.device_path or f"/dev/drbd{self.minor}"


class Vip(_Model):
    """A floating address that sits on the primary."""

    address: IPv4WithPrefix = Field(
        description="Address with its prefix, e.g. 10.0.0.3/24: a unicast host address, not the "
        "network or broadcast address of the prefix."
    )
    interface: InterfaceName

    @property
    def ip(self) -> str:
        return str(self.address.ip)


class TargetDriver(StrEnum):
    TGT = "tgt"


def _driver_implemented(value: object) -> object:
    if value == "lio":
        # Accepted once and silently run as tgt: say so until an LIO adapter exists.
        raise PydanticCustomError("not_implemented", "not implemented yet: only tgt is supported")
    return value


class Lun(_Model):
    lun: StrictInt = Field(ge=1, le=255, description="LUN number (0 is the controller).")
    resource: SafeName = Field(description="The DRBD resource this LUN exports.")
    scsi_id: ScsiWord = Field(description="SCSI id, identical on both nodes.")
    scsi_sn: ScsiWord = Field(description="SCSI serial number, identical on both nodes.")


class Chap(_Model):
    """CHAP authentication on the target: initiators must log in with the secrets file's
    ``username``/``password`` (and, when ``mutual``, the target answers with
    ``mutualUsername``/``mutualPassword``, so initiators can check they reached the real
    target). The secrets never appear in the spec: only where they are."""

    secrets_file: FilePath = Field(
        description="The file holding the CHAP user names and passwords (YAML keys "
        "'username', 'password', and with mutual also 'mutualUsername', 'mutualPassword'). "
        "Refused unless owned by root with mode 0600; it must be identical on both nodes.",
    )
    mutual: StrictBool = Field(
        default=False,
        description="Also authenticate the target to the initiator (mutual CHAP, tgt's "
        "outgoing account).",
    )


class Target(_Model):
    driver: Annotated[TargetDriver, BeforeValidator(_driver_implemented)] = Field(
        default=TargetDriver.TGT, description="The iSCSI target implementation ('tgt')."
    )
    iqn: Iqn
    tid: StrictInt = Field(default=1, ge=1, le=65535, description="tgt target id.")
    luns: tuple[Lun, ...] = Field(min_length=1)
    initiators: tuple[str, ...] = Field(
        default=("ALL",),
        description="Allowed initiators: 'ALL', IPv4 addresses/networks, or initiator IQNs.",
    )
    chap: Chap | None = Field(
        default=None,
        description="Require CHAP logins (default: none, any initiator the ACL admits logs in).",
    )

    @field_validator("initiators")
    @classmethod
    def _initiators_safe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import re

        for item in value:
            if item == "ALL":
                continue
            try:
                ipaddress.IPv4Network(item, strict=False)
                continue
            except ValueError:
                pass
            if not re.fullmatch(
                r"iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9_.:-]+)?", item
            ):
                raise ValueError(
                    f"initiator {item!r} is not 'ALL', an IPv4 address/network or an IQN"
                )
        return value


class Timings(_Model):
    tick_interval: Seconds = Field(
        default=10.0, description="Seconds between ticks (reference: 10)."
    )
    command_timeout: Seconds = Field(default=10.0, description="Timeout of any one command.")
    status_staleness: Seconds = Field(
        default=5.0, description="Status is stale when older than tickInterval + this."
    )
    retry_attempts: StrictInt = Field(
        default=3, ge=1, le=20, description="Tries per transient action."
    )
    retry_backoff: Seconds = Field(default=0.2, description="First retry delay (doubles).")
    retry_backoff_max: Seconds = Field(default=2.0, description="Longest retry delay.")
    wake_poll: Seconds = Field(
        default=0.005,
        description="Only where inotify cannot be used (the reason is logged once): how often "
        "--watch polls its wake files (pool.conf, operator choices, simulated world, spec file) "
        "between ticks. Normally inotify wakes it at once and nothing is polled.",
    )
    blocked_retry: Seconds = Field(
        default=0.1,
        description="After a tick a safety rule blocked (e.g. the peer is still Primary during "
        "a swap), the next tick comes this soon, doubling while the block persists, up to "
        "tickInterval.",
    )
    verify_after: Seconds = Field(
        default=0.2,
        description="After a tick that applied actions, the next tick (which checks their "
        "effect and refreshes the status record) comes this soon, doubling while ticks keep "
        "acting, up to tickInterval; a wake source can start it earlier.",
    )
    resync: Seconds = Field(
        default=30.0,
        description="Event-fed observations (DRBD's events2 stream, the resident tgtd's "
        "target list, the netlink address cache) are re-listed in full at least this often, "
        "besides at start and "
        "whenever a stream ends or stalls.",
    )


class Mail(_Model):
    enabled: StrictBool = False
    sender: MailAddress = Field(default="tandem@localhost", alias="from")
    to: tuple[MailAddress, ...] = ()
    subject: HeaderText = "tandem alert"
    server: HostName = "localhost"
    port: StrictInt = Field(default=25, ge=1, le=65535)

    @model_validator(mode="after")
    def _recipients_when_enabled(self) -> Mail:
        if self.enabled and not self.to:
            raise ValueError("mail is enabled but 'to' lists no recipient")
        return self


class Alerts(_Model):
    mail: Mail = Field(default_factory=Mail)
    syslog: StrictBool = True
    quiet_ticks: StrictInt = Field(
        default=5, ge=0, le=1000, description="No alert mail in the first N ticks after start."
    )
    screen_time: Seconds = Field(
        default=1800.0, description="An identical alert is not re-sent within this many seconds."
    )
    blocked_grace: Annotated[float, Strict()] = Field(
        default=10.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="A refusal by a safety rule (a 'blocked' alert) is mailed only once every "
        "tick for this many seconds raised it: the new pool master waiting a fraction of a "
        "second for the old one to demote in a planned swap mails nothing, a refusal that "
        "lasts does. Logged at every tick either way; 0 mails at once.",
    )
    repair_count: StrictInt = Field(
        default=3,
        ge=1,
        le=1000,
        description="A repair (tgtd restarted on the serving primary, a VIP re-added, DRBD "
        "restarted or reconnected) is mailed once the same part was repaired this many times "
        "within repairWindow: one alert with the count, then muted for screenTime. Logged at "
        "every repair either way; 1 mails every repair.",
    )
    repair_window: Seconds = Field(
        default=600.0, description="The window (seconds) over which repairs of a part count."
    )


class Adapters(_Model):
    """Which implementation serves each concern. The default is the real one everywhere (a
    spec for real hardware must never run on a fake world by omission); only an explicit
    'sim' simulates, and every output of a run that simulates anything says so."""

    drbd: Literal["sim", "drbd"] = Field(
        default="drbd", description="'drbd': drbdsetup/drbdadm; 'sim': the simulated DRBD."
    )
    vip: Literal["sim", "iproute"] = Field(
        default="iproute",
        description=(
            "'iproute': the node's real addresses (over netlink, as iproute2's ip addr) + ARP;"
            " 'sim': the simulated network."
        ),
    )
    target: Literal["sim", "tgt"] = Field(
        default="tgt", description="'tgt': tgtd/tgtadm; 'sim': the simulated target."
    )
    role_source: Literal["sim", "pool-conf", "xapi", "state"] = Field(
        default="pool-conf",
        description=(
            "'sim': the simulated pool; 'pool-conf': XenServer's pool.conf; "
            "'xapi': the pool master from XAPI (pool.get_master, see 'xapi'), pool.conf when "
            "XAPI cannot be reached; "
            "'state': the agent's own state (manual / static role sources). "
            "Default: 'pool-conf' for roleSource.type pool-master, else 'state'."
        ),
    )
    liveness: Literal["sim", "ping"] = Field(
        default="ping",
        description=(
            "Peer liveness and quorum heuristics: 'ping': ICMP echo from the agent (a "
            "resident in-process pinger, see 'liveness'); 'sim': the simulated links (needs "
            "drbd 'sim'). Default: 'sim' when drbd, vip and target are all 'sim' (nothing "
            "real to ping), else 'ping', so a lab with real addresses sees a peer die."
        ),
    )
    hypervisor: Literal["none", "sim", "xapi"] = Field(
        default="none",
        description=(
            "The hypervisor storage this node's agent keeps attached (its own host's PBDs of "
            "the SRs served through the VIP and IQN): 'none' (default), 'xapi' (XenServer / "
            "XCP-ng through the XenAPI SDK, see 'xapi'), 'sim' (the simulated pool)."
        ),
    )

    witness: Literal["none", "sim", "etcd"] = Field(
        default="none",
        description=(
            "The quorum witness of promotion.whenDisconnected 'witness': 'etcd' (an etcd v3 "
            "cluster through its HTTP gateway, see 'witness'), 'sim' (the simulated 3-member "
            "etcd), 'none'. Default: 'etcd' when the policy is 'witness', else 'none'."
        ),
    )

    @property
    def simulated(self) -> tuple[str, ...]:
        """The concerns served by the simulator (spelled as in the spec)."""
        chosen = {
            "drbd": self.drbd,
            "vip": self.vip,
            "target": self.target,
            "roleSource": self.role_source,
            "hypervisor": self.hypervisor,
            "witness": self.witness,
        }
        return tuple(name for name, value in chosen.items() if value == "sim")

    @model_validator(mode="after")
    def _sim_liveness_needs_sim_drbd(self) -> Adapters:
        # Simulated liveness answers from the simulated links, which only the simulated DRBD
        # follows; next to real DRBD it would say "peer alive" about a dead peer.
        if self.liveness == "sim" and self.drbd != "sim":
            raise cross_field_error(
                "liveness 'sim' answers from the simulated links: it needs drbd 'sim' (use "
                "'ping' with real DRBD)",
                "liveness",
            )
        return self


EtcdUrl = Annotated[
    str,
    StringConstraints(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"),
    Field(description="An etcd client URL (v3 HTTP gateway), e.g. http://10.0.0.9:2379."),
]


class Watchdog(_Model):
    """A hardware (or softdog) watchdog the agent pets before every witness observation: a node
    whose agent stops (a long pause, SIGSTOP, a hung kernel) is reset before the other node can
    take over on its expired lease, so it cannot keep DRBD Primary meanwhile (adapters/watchdog.py;
    the simulator models it with adapters.witness 'sim', and then no device is opened)."""

    device: FilePath = Field(
        default="/dev/watchdog", description="The watchdog device (Linux: /dev/watchdog)."
    )
    timeout: Seconds = Field(
        description="Seconds without a pet before the device resets the node; make it longer "
        "than tickInterval + 2 x retryTimeout (the agent pets it at each witness observation, "
        "so a shorter one resets a healthy node whose etcd answered slowly). "
        "It lengthens the settle time: (tickInterval + 2 x retryTimeout + timeout / (1 - "
        "clockDrift)) x (1 + clockDrift), which plus one such gap must fit in ttl x (1 - "
        "clockDrift)."
    )


class Witness(_Model):
    """The quorum witness of ``promotion.whenDisconnected: witness``: one lease-backed key per
    cluster in an etcd cluster (``<prefix><metadata.name>/leader`` holds the node name of the
    lease holder; ``<prefix><metadata.name>/status/<node>`` each node's status record).

    Timing rule (docs/operations.md, "The witness"): with L = timings.tickInterval,
    R = retryTimeout, M = stepDownMargin, the longest between two witness observations of one
    agent is G = L + 2R (the wait, the witness read, the lease refresh). A serving node decides
    to step down only at an observation, so it must do so while one more gap and the step-down
    still fit in its lease (threshold G + M); and a freshly refreshed lease must still be above
    that threshold one gap later: ``2 x (L + 2R) + M <= ttl x (1 - clockDrift)`` (Patroni's
    ``loop_wait + 2 x retry_timeout <= ttl`` twice over: Patroni demotes in the same loop as
    the failed update, tandem in the tick after it)."""

    endpoints: tuple[EtcdUrl, ...] = Field(
        default=(),
        description="etcd client URLs (v3 HTTP gateway); required (at least one) when the "
        "policy is 'witness'.",
    )
    prefix: str = Field(
        default="/tandem/",
        pattern=r"^/([A-Za-z0-9_.-]+/)*$",
        description="Key prefix shared by every cluster using this etcd (starts and ends with /).",
    )
    ttl: Seconds = Field(
        default=10.0,
        description="Lease time-to-live of the leader key. Not set: the smallest whole number "
        "of seconds, at least 10, that satisfies the timing rule for the spec's "
        "tickInterval, retryTimeout and stepDownMargin (30 s with the defaults: tickInterval "
        "10, retryTimeout 2, stepDownMargin 1); set: validated against the rule.",
    )
    retry_timeout: Seconds = Field(
        default=2.0, description="Timeout of every etcd call (observation, claim, release)."
    )
    step_down_margin: Seconds = Field(
        default=1.0,
        description="Lease time kept in reserve to stop serving (target, VIP, demote) before "
        "the lease can expire on etcd: a serving node with less left stops serving.",
    )
    clock_drift: Annotated[float, Strict()] = Field(
        default=0.01,
        ge=0,
        le=0.1,
        allow_inf_nan=False,
        description="The most a node's monotonic clock may run slow against etcd's (a "
        "fraction: 0.01 = 1%).",
    )
    watchdog: Watchdog | None = Field(
        default=None,
        description="Pet a watchdog device at every tick (the fence against agent pauses).",
    )
    ca_file: FilePath | None = Field(
        default=None,
        description="With https:// endpoints: the CA certificate (PEM) that signed etcd's "
        "server certificates (default: the system's CA store).",
    )
    cert_file: FilePath | None = Field(
        default=None,
        description="A client certificate (PEM) for etcd's --client-cert-auth; with keyFile.",
    )
    key_file: FilePath | None = Field(
        default=None,
        description="The client certificate's private key (PEM, readable by the agent only).",
    )

    def gap(self, tick_interval: float) -> float:
        """G: the longest between two witness observations of one agent (seconds)."""
        return tick_interval + 2 * self.retry_timeout

    def step_down_below(self, tick_interval: float) -> float:
        """A serving, disconnected node stops serving when its lease_left is below this: one
        more gap and the step-down must fit in what is left (on a clock that may run slow)."""
        return self.gap(tick_interval) + self.step_down_margin + self.clock_drift * self.ttl

    def refresh_below(self, tick_interval: float) -> float:
        """The serving node refreshes its lease when lease_left is at or below this (at least
        one refresh is tried in the gap before the step-down threshold; above it, an idle tick
        applies nothing)."""
        return min(self.ttl, self.step_down_below(tick_interval) + self.gap(tick_interval))

    def settle(self, tick_interval: float) -> float:
        """How long a node waits after claiming a free key (or after the disconnect) before it
        promotes disconnected: one observation gap of the other node plus its step-down (the
        other node may still serve unleased if it was connected when its lease ran out). With
        a watchdog, that node may also pause right after the observation that saw the cut and
        planned its step-down: nothing stops it then but its watchdog, which resets it at most
        timeout / (1 - clockDrift) after that observation, so the step-down part is at least
        that long."""
        cover = self.step_down_margin
        if self.watchdog is not None:
            cover = max(cover, self.watchdog.timeout / (1 - self.clock_drift))
        return (self.gap(tick_interval) + cover) * (1 + self.clock_drift)

    def hold(self) -> float:
        """The least a node must have held a claimed key before it promotes on the disconnect
        rule (``safety.WitnessTiming.hold``): with a watchdog, a node paused right after the
        observation that planned its step-down has at least stepDownMargin of lease left on
        etcd and is reset at most timeout / (1 - clockDrift) after that observation; the other
        node claims no sooner than that lease's expiry, so it holds the key (on a clock that
        may run fast) (timeout / (1 - clockDrift) - stepDownMargin) x (1 + clockDrift) before
        promoting. Without a watchdog nothing fences a paused node (docs/operations.md): 0."""
        if self.watchdog is None:
            return 0.0
        reset = self.watchdog.timeout / (1 - self.clock_drift)
        return max(0.0, reset - self.step_down_margin) * (1 + self.clock_drift)

    def ttl_needed(self, tick_interval: float) -> float:
        """The shortest ttl that satisfies the timing rule (seconds)."""
        return (2 * self.gap(tick_interval) + self.step_down_margin) / (1 - self.clock_drift)

    def timing_problem(self, tick_interval: float) -> str | None:
        """Why these timings break the timing rule (None: they satisfy it)."""
        need = 2 * self.gap(tick_interval) + self.step_down_margin
        have = self.ttl * (1 - self.clock_drift)
        if need <= have:
            return None
        return (
            f"witness timing rule broken: 2 x (timings.tickInterval {tick_interval:g} + 2 x "
            f"witness.retryTimeout {self.retry_timeout:g}) + witness.stepDownMargin "
            f"{self.step_down_margin:g} = {need:g} s must be <= witness.ttl {self.ttl:g} x "
            f"(1 - witness.clockDrift {self.clock_drift:g}) = {have:g} s: a serving node could "
            "lose its lease before it notices; raise ttl or lower tickInterval/retryTimeout"
        )


class Xapi(_Model):
    """How the agent reaches XAPI (role source 'xapi', hypervisor adapter 'xapi')."""

    url: XapiUrl | None = Field(
        default=None,
        description="A pool host's XAPI, e.g. https://10.0.0.1/; absent: the local socket "
        "(XenAPI.xapi_local(), on the pool host itself). A slave's address is followed to "
        "the master (HOST_IS_SLAVE).",
    )
    local_socket: FilePath = Field(
        default="/var/lib/xcp/xapi",
        description="XAPI's unix socket on a pool host, used when 'url' is absent.",
    )
    credentials_file: FilePath | None = Field(
        default=None,
        description="Username on the first line, password on the second; refused unless only "
        "its owner can read it (mode 0600). Absent: usernameFile/passwordFile, or root with an "
        "empty password on the local socket.",
    )
    username_file: FilePath | None = Field(
        default=None, description="A file holding the username (mode 0600)."
    )
    password_file: FilePath | None = Field(
        default=None, description="A file holding the password (mode 0600)."
    )
    timeout: Seconds = Field(
        default=13.0, description="Timeout of any one XAPI call (reference: xe's 13 s)."
    )
    host_names: dict[SafeName, HostName] = Field(
        default_factory=dict,
        description="XAPI host name (name_label) per node, where it differs from the node name.",
    )
    messages: StrictBool = Field(
        default=True,
        description="Alerts also go to the pool as messages (message.create: XenCenter and Xen "
        "Orchestra show them), when XAPI is used (role source or hypervisor 'xapi').",
    )

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> Xapi:
        if self.credentials_file and (self.username_file or self.password_file):
            raise cross_field_error(
                "use either credentialsFile or usernameFile/passwordFile", "credentialsFile"
            )
        if bool(self.username_file) != bool(self.password_file):
            raise cross_field_error(
                "usernameFile and passwordFile go together",
                "usernameFile" if self.username_file is None else "passwordFile",
            )
        return self

    def host_name(self, node: str) -> str:
        return self.host_names.get(node, node)


class ClusterSpec(_Model):
    nodes: tuple[Node, Node] = Field(description="Exactly two nodes.")
    role_source: RoleSource = Field(default_factory=RoleSource)
    promotion: Promotion = Field(default_factory=Promotion)
    liveness: LivenessTimings = Field(default_factory=LivenessTimings)
    resources: tuple[Resource, ...] = Field(min_length=1)
    vips: tuple[Vip, ...] = Field(min_length=1)
    target: Target
    timings: Timings = Field(default_factory=Timings)
    alerts: Alerts = Field(default_factory=Alerts)
    adapters: Adapters = Field(default_factory=Adapters)
    xapi: Xapi = Field(default_factory=Xapi)
    witness: Witness = Field(default_factory=Witness)

    @model_validator(mode="before")
    @classmethod
    def _real_role_source_by_default(cls, data: Any) -> Any:
        # The real role source follows roleSource.type: pool.conf for a pool master, the
        # agent's own state otherwise. Only fills what the spec leaves out.
        if not isinstance(data, dict):
            return data
        adapters = data.get("adapters", {})
        source = data.get("roleSource", data.get("role_source"))
        kind = source.get("type") if isinstance(source, dict) else None
        if (
            isinstance(adapters, dict)
            and "roleSource" not in adapters
            and "role_source" not in adapters
            and kind is not None
            and str(kind) != RoleSourceType.POOL_MASTER.value
        ):
            data = {**data, "adapters": {**adapters, "roleSource": "state"}}
        # The witness adapter follows the policy: etcd for 'witness', none otherwise.
        adapters = data.get("adapters", {})
        promotion = data.get("promotion")
        policy = promotion.get("whenDisconnected") if isinstance(promotion, dict) else None
        if (
            isinstance(adapters, dict)
            and "witness" not in adapters
            and policy is not None
            and str(policy) == DisconnectedPolicy.WITNESS.value
        ):
            data = {**data, "adapters": {**adapters, "witness": "etcd"}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _sim_liveness_only_when_all_sim(cls, data: Any) -> Any:
        # Simulated liveness by default only when nothing on the node is real (the demo);
        # a lab with real addresses and a simulated DRBD pings for real. Only fills what the
        # spec leaves out.
        if not isinstance(data, dict):
            return data
        adapters = data.get("adapters", {})
        if isinstance(adapters, Adapters):  # built in Python: the same rule
            if "liveness" not in adapters.model_fields_set and all(
                getattr(adapters, k) == "sim" for k in ("drbd", "vip", "target")
            ):
                return {**data, "adapters": adapters.model_copy(update={"liveness": "sim"})}
            return data
        if not isinstance(adapters, dict) or "liveness" in adapters:
            return data
        if all(adapters.get(k) == "sim" for k in ("drbd", "vip", "target")):
            return {**data, "adapters": {**adapters, "liveness": "sim"}}
        return data

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ClusterSpec:
        a, b = self.nodes
        if a.name == b.name:
            raise cross_field_error(
                f"the two nodes need distinct names (both are {a.name!r})", "nodes", 1, "name"
            )
        _distinct_node_addresses(a, b)
        _unique("resource name", [r.name for r in self.resources], "resources", key="name")
        _unique("DRBD minor", [r.minor for r in self.resources], "resources", key="minor")
        _unique(
            "backing disk (two resources would overwrite each other's data)",
            [r.disk for r in self.resources],
            "resources",
            key="disk",
        )
        devices: dict[str, str] = {}
        for i, r in enumerate(self.resources):
            if r.device in devices:
                raise cross_field_error(
                    f"device {r.device} is already the device of resource {devices[r.device]!r}",
                    "resources",
                    i,
                    "devicePath" if r.device_path is not None else "minor",
                )
            devices[r.device] = r.name
        for i, r in enumerate(self.resources):
            if r.disk in devices:
                raise cross_field_error(
                    f"disk {r.disk} is the device of resource {devices[r.disk]!r}; a resource "
                    "cannot be stored on a device this cluster exports",
                    "resources",
                    i,
                    "disk",
                )
        luns = self.target.luns
        _unique("LUN number", [lun.lun for lun in luns], "target", "luns", key="lun")
        _unique(
            "LUN resource (one resource exported twice looks like two disks to an initiator)",
            [lun.resource for lun in luns],
            "target",
            "luns",
            key="resource",
        )
        _unique("SCSI id", [lun.scsi_id for lun in luns], "target", "luns", key="scsiId")
        _unique("SCSI serial number", [lun.scsi_sn for lun in luns], "target", "luns", key="scsiSn")
        _unique("VIP address", [str(v.address.ip) for v in self.vips], "vips", key="address")
        names = {r.name for r in self.resources}
        for i, lun in enumerate(luns):
            if lun.resource not in names:
                raise cross_field_error(
                    f"LUN {lun.lun} references resource {lun.resource!r}, "
                    f"which is not declared (declared: {', '.join(sorted(names))})",
                    "target",
                    "luns",
                    i,
                    "resource",
                )
        owners = _node_address_owners(a, b)
        for i, vip in enumerate(self.vips):
            if vip.address.ip in owners:
                raise cross_field_error(
                    f"VIP {vip.address.ip} is also {owners[vip.address.ip]}; it must float",
                    "vips",
                    i,
                    "address",
                )
        vips = {v.address.ip for v in self.vips}
        heuristics = self.promotion.heuristics
        _unique(
            "heuristic address (each address counts once toward the majority)",
            [str(h) for h in heuristics],
            "promotion",
            "heuristics",
            key=None,
        )
        for i, h in enumerate(heuristics):
            if h in vips or h in owners:
                what = "a VIP" if h in vips else owners[h]
                raise cross_field_error(
                    f"heuristic {h} is {what}: it answers from a cluster node, so it cannot tell "
                    "which side still sees the outside world; use an address outside the "
                    "cluster (switch, gateway)",
                    "promotion",
                    "heuristics",
                    i,
                )
        for name in self.xapi.host_names:
            if name not in (a.name, b.name):
                raise cross_field_error(
                    f"xapi.hostNames names {name!r}, which is not one of the nodes "
                    f"({a.name}, {b.name})",
                    "xapi",
                    "hostNames",
                )
        if self.role_source.preferred is not None and self.role_source.preferred not in (
            a.name,
            b.name,
        ):
            raise cross_field_error(
                f"roleSource.preferred {self.role_source.preferred!r} is not one of the nodes "
                f"({a.name}, {b.name})",
                "roleSource",
                "preferred",
            )
        self._witness_rules()
        return self

    def _witness_rules(self) -> None:
        witness_policy = self.promotion.when_disconnected is DisconnectedPolicy.WITNESS
        if witness_policy and self.adapters.witness == "none":
            raise cross_field_error(
                "promotion.whenDisconnected 'witness' needs a witness adapter ('etcd' or 'sim')",
                "adapters",
                "witness",
            )
        if (self.witness.cert_file is None) != (self.witness.key_file is None):
            raise cross_field_error(
                "witness.certFile and witness.keyFile go together (a client certificate and "
                "its key)",
                "witness",
                "certFile" if self.witness.cert_file is None else "keyFile",
            )
        if not witness_policy:
            return
        if self.adapters.witness == "etcd" and not self.witness.endpoints:
            raise cross_field_error(
                "promotion.whenDisconnected 'witness' needs witness.endpoints (at least one "
                "etcd client URL)",
                "witness",
                "endpoints",
            )
        if "ttl" not in self.witness.model_fields_set:
            # An unset ttl follows the tick interval: the default spec stays valid.
            ttl = max(10.0, float(math.ceil(self.witness.ttl_needed(self.timings.tick_interval))))
            object.__setattr__(self, "witness", self.witness.model_copy(update={"ttl": ttl}))
        if problem := self.witness.timing_problem(self.timings.tick_interval):
            raise cross_field_error(problem, "witness", "ttl")
        dog = self.witness.watchdog
        tick = self.timings.tick_interval
        gap = self.witness.gap(tick)
        settle = self.witness.settle(tick)
        room = self.witness.ttl * (1 - self.witness.clock_drift)
        if dog is not None and settle + gap > room:
            raise cross_field_error(
                f"witness.watchdog.timeout ({dog.timeout:g}) is too long for witness.ttl "
                f"({self.witness.ttl:g}): the settle time it needs, (tickInterval + 2 x "
                f"retryTimeout + timeout / (1 - clockDrift)) x (1 + clockDrift) = {settle:.2f} "
                f"s, plus one observation gap ({gap:g} s) must fit in ttl x (1 - clockDrift) = "
                f"{room:.2f} s (a node that claimed the key waits the settle time on its own "
                "lease); lower the timeout or raise the ttl",
                "witness",
                "watchdog",
                "timeout",
            )


def _node_address_owners(*nodes: Node) -> dict[ipaddress.IPv4Address, str]:
    """Each node address -> what it is, e.g. "node1's replicationAddress"."""
    owners: dict[ipaddress.IPv4Address, str] = {}
    for n in nodes:
        for key, addr in (
            ("replicationAddress", n.replication_address),
            ("managementAddress", n.management_address),
        ):
            if addr is not None:
                owners.setdefault(addr, f"{n.name}'s {key}")
    return owners


def _distinct_node_addresses(a: Node, b: Node) -> None:
    """The second node may share none of the first node's addresses (one node may use one
    address for both links). Reported at the second node's field."""
    owners = _node_address_owners(a)
    for key, addr in (
        ("replicationAddress", b.replication_address),
        ("managementAddress", b.management_address),
    ):
        if addr is not None and addr in owners:
            raise cross_field_error(
                f"{addr} is already {owners[addr]}; each node needs addresses of its own",
                "nodes",
                1,
                key,
            )


def _unique(what: str, values: list[object], *path: str, key: str | None) -> None:
    """``path``: the list's path; ``key``: the field within each item (None when the items are
    the values themselves)."""
    seen: set[object] = set()
    for i, v in enumerate(values):
        if v in seen:
            tail = (i,) if key is None else (i, key)
            raise cross_field_error(f"duplicate {what}: {v}", *path, *tail)
        seen.add(v)


class StorageCluster(_Model):
    """The whole desired-state document."""

    api_version: Literal["tandem/v1"]
    kind: Literal["StorageCluster"]
    metadata: Metadata
    spec: ClusterSpec

    def node(self, name: str) -> Node:
        for n in self.spec.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def peer_of(self, name: str) -> Node:
        a, b = self.spec.nodes
        return b if a.name == name else a

    @property
    def node_names(self) -> tuple[str, str]:
        return (self.spec.nodes[0].name, self.spec.nodes[1].name)
