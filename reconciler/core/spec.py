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
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

SafeName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"),
    Field(description="Letters, digits, '.', '_' and '-' (max 63), starting with a letter/digit."),
]
DevicePath = Annotated[
    str,
    StringConstraints(pattern=r"^/dev/[A-Za-z0-9_][A-Za-z0-9/_.+-]{0,126}$"),
    Field(description="A block device path under /dev (no spaces, no '..')."),
]
FilePath = Annotated[
    str,
    StringConstraints(pattern=r"^/[A-Za-z0-9_][A-Za-z0-9/_.+-]{0,254}$"),
    Field(description="An absolute file path without spaces or shell characters."),
]
InterfaceName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"),
    Field(description="A Linux interface name (max 15 characters)."),
]
Iqn = Annotated[
    str,
    StringConstraints(pattern=r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9_.:-]+)?$"),
    Field(description="An iSCSI qualified name, e.g. iqn.2024-01.com.example:storage.iscsi1"),
]
ScsiWord = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,32}$"),
    Field(description="SCSI identifier text (letters, digits, '.', '_', '-'; max 32)."),
]
MailAddress = Annotated[
    str,
    StringConstraints(
        pattern=r"^[^\s@<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
    ),
    Field(description="A plain mail address, e.g. ops@example.com (no display name)."),
]
HeaderText = Annotated[
    str,
    StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{0,200}$"),
    Field(description="One line of text (max 200 characters; no line breaks or tabs)."),
]
HostName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9.-]+$"),
    Field(description="A host name or IPv4 address (letters, digits, '.', '-')."),
]
SAFE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

# Strict numbers and booleans: YAML says what a value is, and `minor: true` (1), `tickInterval:
# yes` or `lun: '1'` are mistakes to report, not values to coerce. A float accepts an integer.
Seconds = Annotated[
    float, Strict(), Field(gt=0, le=3600, allow_inf_nan=False, description="A duration in seconds.")
]


def _not_a_number(value: object) -> object:
    # ipaddress accepts integers (IPv4Address(12) is 0.0.0.12): a truncated address in YAML
    # (`replicationAddress: 10`) must be an error, not a silently different address.
    if isinstance(value, int | float):
        raise ValueError("expected an IPv4 address written as text, e.g. 10.0.0.1")
    return value


def _unicast(value: ipaddress.IPv4Address) -> None:
    # None of these can be a host's address on a link: a spec naming one is a mistake that would
    # only show at run time (ip addr add refusing it, a ping that always or never answers).
    for bad, what in (
        (value.is_unspecified, "the unspecified address"),
        (value.is_loopback, "a loopback address"),
        (value.is_multicast, "a multicast address"),
        (value == ipaddress.IPv4Address("255.255.255.255"), "the broadcast address"),
    ):
        if bad:
            raise ValueError(f"{value} is {what}; expected a host's unicast address")


def _host_address(value: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    _unicast(value)
    return value


def _host_interface(value: ipaddress.IPv4Interface) -> ipaddress.IPv4Interface:
    _unicast(value.ip)
    net = value.network
    if net.prefixlen <= 30 and value.ip in (net.network_address, net.broadcast_address):
        which = "network" if value.ip == net.network_address else "broadcast"
        raise ValueError(
            f"{value.ip} is the {which} address of {net}; expected a host address inside it"
        )
    return value


def _with_prefix(value: object) -> object:
    # ipaddress reads '10.0.0.3' as 10.0.0.3/32: a VIP whose prefix was forgotten would be added
    # without its subnet route. Ask for the prefix instead of guessing it.
    value = _not_a_number(value)
    if isinstance(value, str) and "/" not in value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return value  # not an address at all: the type's own error says what is expected
        raise ValueError(f"expected an address with its prefix, e.g. {value}/24")
    return value


IPv4 = Annotated[
    ipaddress.IPv4Address, BeforeValidator(_not_a_number), AfterValidator(_host_address)
]
IPv4WithPrefix = Annotated[
    ipaddress.IPv4Interface, BeforeValidator(_with_prefix), AfterValidator(_host_interface)
]


def cross_field_error(message: str, *at: str | int) -> PydanticCustomError:
    """A model-level rule broken by one field: ``at`` is that field's path (YAML keys) below the
    model, so the loader can point at its line instead of at the whole model."""
    return PydanticCustomError("cross_field", "{message}", {"message": message, "at": at})


def _help(alias: object) -> tuple[str, str]:
    meta = getattr(alias, "__metadata__", ())
    pattern = next(m.pattern for m in meta if isinstance(m, StringConstraints))
    text = next(m.description for m in meta if hasattr(m, "description") and m.description)
    if not text[1:2].isupper():  # "Letters" -> "letters", but "SCSI" stays "SCSI"
        text = text[0].lower() + text[1:]
    return str(pattern), f"expected {text}"


PATTERN_HELP: dict[str, str] = dict(
    _help(a)
    for a in (
        SafeName,
        DevicePath,
        FilePath,
        InterfaceName,
        Iqn,
        ScsiWord,
        MailAddress,
        HeaderText,
        HostName,
    )
)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
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


class Promotion(_Model):
    """When may a node promote while it cannot talk to its peer's DRBD?"""

    when_disconnected: DisconnectedPolicy = Field(
        default=DisconnectedPolicy.QUORUM,
        description=(
            "'refuse': never (an operator override is needed); "
            "'outdated-peer': only when DRBD reports the peer's disk Outdated; "
            "'quorum': also when the peer is unreachable and a majority of heuristic "
            "addresses answer (the lone host still sees the outside world)."
        ),
    )
    heuristics: tuple[IPv4, ...] = Field(
        default=(),
        description="Addresses only the healthy side can reach (switch, gateway).",
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
        description="How often --watch checks its wake sources (pool.conf, operator choices, "
        "simulated world) between ticks; a change starts a tick at once.",
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


class Adapters(_Model):
    """Which implementation serves each concern: 'sim' everywhere, or a real one."""

    drbd: Literal["sim", "drbd"] = "sim"
    vip: Literal["sim", "iproute"] = "sim"
    target: Literal["sim", "tgt"] = "sim"
    role_source: Literal["sim", "pool-conf", "state"] = Field(
        default="sim",
        description=(
            "'sim': the simulated pool; 'pool-conf': XenServer's pool.conf; "
            "'state': the agent's own state (manual / static role sources)."
        ),
    )
    hypervisor: Literal["none", "sim", "xapi"] = Field(
        default="none",
        description=(
            "Who keeps this host's SR attachments (PBDs) plugged: 'none': nobody (no "
            "hypervisor integration); 'sim': the simulated pool; 'xapi': XenServer / XCP-ng "
            "through the XenAPI SDK."
        ),
    )


class ClusterSpec(_Model):
    nodes: tuple[Node, Node] = Field(description="Exactly two nodes.")
    role_source: RoleSource = Field(default_factory=RoleSource)
    promotion: Promotion = Field(default_factory=Promotion)
    resources: tuple[Resource, ...] = Field(min_length=1)
    vips: tuple[Vip, ...] = Field(min_length=1)
    target: Target
    timings: Timings = Field(default_factory=Timings)
    alerts: Alerts = Field(default_factory=Alerts)
    adapters: Adapters = Field(default_factory=Adapters)

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
        return self


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
