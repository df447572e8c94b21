"""Pure parsers of tgtadm's output (tgt 1.0.85, Debian 12; see tests/fixtures/tgt/SOURCES.md).

Invariants: ``parse_tgtadm_show`` and friends are pure and total: any text gives a result, never
an exception; anything they do not understand is listed in ``problems``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TgtLun:
    """One logical unit as ``tgtadm --mode target --op show`` prints it (LUN 0 is the
    controller tgt creates by itself)."""

    lun: int
    type: str = ""
    scsi_id: str = ""
    scsi_sn: str = ""
    size: str = ""
    online: bool | None = None
    readonly: bool | None = None
    backing_store_type: str = ""
    backing_store_path: str | None = None
    backing_store_flags: str = ""


@dataclass(frozen=True, slots=True)
class TgtConnection:
    cid: int
    address: str


@dataclass(frozen=True, slots=True)
class TgtSession:
    """An I_T nexus: one logged-in initiator session (``alias`` None when tgt prints
    ``alias: none``)."""

    nexus: int
    initiator: str
    alias: str | None = None
    connections: tuple[TgtConnection, ...] = ()


@dataclass(frozen=True, slots=True)
class TgtAccount:
    user: str
    outgoing: bool = False


@dataclass(frozen=True, slots=True)
class TgtTarget:
    tid: int
    iqn: str
    driver: str = ""
    state: str = ""
    sessions: tuple[TgtSession, ...] = ()
    luns: tuple[TgtLun, ...] = ()
    accounts: tuple[TgtAccount, ...] = ()
    acls: tuple[str, ...] = ()

    def lun(self, number: int) -> TgtLun | None:
        for item in self.luns:
            if item.lun == number:
                return item
        return None

    @property
    def data_luns(self) -> tuple[TgtLun, ...]:
        """The LUNs other than tgt's own controller LUN 0."""
        return tuple(x for x in self.luns if x.lun != 0 and x.type != "controller")


@dataclass(frozen=True, slots=True)
class TgtShow:
    """Parsed ``tgtadm --lld iscsi --mode target --op show``. ``problems`` lists every line or
    structure the parser did not understand; a non-empty list means "do not trust this"."""

    targets: tuple[TgtTarget, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def target(self, tid: int) -> TgtTarget | None:
        for t in self.targets:
            if t.tid == tid:
                return t
        return None

    def by_iqn(self, iqn: str) -> TgtTarget | None:
        for t in self.targets:
            if t.iqn == iqn:
                return t
        return None


@dataclass(frozen=True, slots=True)
class TgtSystem:
    """Parsed ``tgtadm --mode sys --op show`` (only what the adapter needs)."""

    state: str | None = None
    llds: tuple[tuple[str, str], ...] = ()
    problems: tuple[str, ...] = ()


_SECTIONS = {
    "System information": "system",
    "I_T nexus information": "nexus",
    "LUN information": "lun",
    "Account information": "account",
    "ACL information": "acl",
}
_TARGET_RE = re.compile(r"^Target ([0-9]{1,9}): (\S+)$", re.ASCII)
_KV_RE = re.compile(r"^([A-Za-z][A-Za-z0-9 _/-]{0,40}):(?: (.*))?$", re.ASCII)
_INT_RE = re.compile(r"^[0-9]{1,9}$", re.ASCII)
_BOOLS = {"Yes": True, "No": False}
_LUN_FIELDS = {
    "Type": "type",
    "SCSI ID": "scsi_id",
    "SCSI SN": "scsi_sn",
    "Size": "size",
    "Backing store type": "backing_store_type",
    "Backing store path": "backing_store_path",
    "Backing store": "backing_store_path",  # tgt < 1.0: "Backing store: /dev/x"
    "Backing store flags": "backing_store_flags",
}
_LUN_REQUIRED = ("Type", "SCSI ID", "SCSI SN")


@dataclass
class _LunBuild:
    lun: int
    seen: set[str] = field(default_factory=set)
    fields: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool | None] = field(default_factory=dict)

    def freeze(self) -> TgtLun:
        path = self.fields.get("backing_store_path")
        if path in ("None", "No backing store", ""):
            path = None
        return TgtLun(
            lun=self.lun,
            type=self.fields.get("type", ""),
            scsi_id=self.fields.get("scsi_id", ""),
            scsi_sn=self.fields.get("scsi_sn", ""),
            size=self.fields.get("size", ""),
            online=self.flags.get("Online"),
            readonly=self.flags.get("Readonly"),
            backing_store_type=self.fields.get("backing_store_type", ""),
            backing_store_path=path,
            backing_store_flags=self.fields.get("backing_store_flags", ""),
        )


@dataclass
class _SessionBuild:
    nexus: int
    initiator: str = ""
    alias: str | None = None
    connections: list[TgtConnection] = field(default_factory=list)
    pending_cid: int | None = None

    def freeze(self) -> TgtSession:
        return TgtSession(self.nexus, self.initiator, self.alias, tuple(self.connections))


@dataclass
class _TargetBuild:
    tid: int
    iqn: str
    driver: str = ""
    state: str = ""
    sections: set[str] = field(default_factory=set)
    sessions: list[_SessionBuild] = field(default_factory=list)
    luns: list[_LunBuild] = field(default_factory=list)
    accounts: list[TgtAccount] = field(default_factory=list)
    acls: list[str] = field(default_factory=list)

    def freeze(self) -> TgtTarget:
        return TgtTarget(
            tid=self.tid,
            iqn=self.iqn,
            driver=self.driver,
            state=self.state,
            sessions=tuple(s.freeze() for s in self.sessions),
            luns=tuple(x.freeze() for x in self.luns),
            accounts=tuple(self.accounts),
            acls=tuple(self.acls),
        )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


_NAME_RE = re.compile(r"^(iqn|eui|naa)\.\S+$", re.ASCII)


def _acl_entry_ok(entry: str) -> bool:
    """tgt ACL entries are ALL, an IPv4/IPv6 address or network, or an initiator name."""
    if entry == "ALL" or _NAME_RE.match(entry):
        return True
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def parse_tgtadm_show(text: str) -> TgtShow:
    """Parse ``tgtadm --lld iscsi --mode target --op show``.

    Total function: never raises. The structure is fixed by tgt's ``tgtadm.c``: ``Target N:
    IQN`` at column 0, the five section headers at 4, items at 8, item fields at 12 (16 for a
    connection's address). Lines that fit nowhere, targets missing a section and LUNs missing
    Type/SCSI ID/SCSI SN are reported in ``problems`` (this is how truncated output shows up).
    Empty text is a valid "no targets".
    """
    problems: list[str] = []
    targets: list[_TargetBuild] = []
    cur: _TargetBuild | None = None
    section: str | None = None
    lun: _LunBuild | None = None
    sess: _SessionBuild | None = None

    def bad(lineno: int, why: str, line: str) -> None:
        if len(problems) < 20:
            problems.append(f"line {lineno}: {why}: {line[:80]!r}")

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line:
            continue
        depth = _indent(line)
        body = line.strip()
        if depth == 0:
            m = _TARGET_RE.match(line)
            if not m:
                bad(lineno, "expected 'Target N: IQN'", line)
                cur = None
                continue
            cur = _TargetBuild(tid=int(m.group(1)), iqn=m.group(2))
            targets.append(cur)
            section, lun, sess = None, None, None
            continue
        if cur is None:
            bad(lineno, "text outside a target", line)
            continue
        if depth == 4:
            if body.endswith(":") and body[:-1] in _SECTIONS:
                section = _SECTIONS[body[:-1]]
                cur.sections.add(section)
                lun, sess = None, None
            else:
                bad(lineno, "unknown section", line)
                section = None
            continue
        if section is None:
            bad(lineno, "field outside a section", line)
            continue
        if section in ("account", "acl"):
            if depth != 8:
                bad(lineno, f"unexpected indentation in {section} list", line)
            elif section == "acl":
                if not _acl_entry_ok(body):
                    bad(lineno, "not an ACL entry (ALL, address, network or name)", line)
                cur.acls.append(body)
            elif body.endswith(" (outgoing)"):
                cur.accounts.append(TgtAccount(body[: -len(" (outgoing)")], outgoing=True))
            else:
                cur.accounts.append(TgtAccount(body))
            continue
        m = _KV_RE.match(body)
        if not m:
            bad(lineno, "expected 'Key: value'", line)
            continue
        key, value = m.group(1), (m.group(2) or "").strip()
        if section == "system":
            if depth != 8:
                bad(lineno, "unexpected indentation", line)
            elif key == "Driver":
                cur.driver = value
            elif key in ("State", "Status"):
                cur.state = value
            continue
        if section == "lun":
            if depth == 8 and key == "LUN" and _INT_RE.match(value):
                lun = _LunBuild(int(value))
                cur.luns.append(lun)
            elif depth == 12 and lun is not None:
                lun.seen.add(key)
                if key in _LUN_FIELDS:
                    lun.fields[_LUN_FIELDS[key]] = value
                elif value in _BOOLS:
                    lun.flags[key] = _BOOLS[value]
            else:
                bad(lineno, "unexpected line in LUN information", line)
            continue
        # section == "nexus"
        if depth == 8 and key == "I_T nexus" and _INT_RE.match(value):
            sess = _SessionBuild(int(value))
            cur.sessions.append(sess)
        elif depth == 12 and sess is not None and key == "Initiator":
            name, _, alias = value.partition(" alias: ")
            sess.initiator = name.strip()
            sess.alias = None if alias.strip() in ("", "none") else alias.strip()
        elif depth == 12 and sess is not None and key == "Connection" and _INT_RE.match(value):
            sess.pending_cid = int(value)
        elif depth == 16 and sess is not None and key == "IP Address":
            sess.connections.append(TgtConnection(sess.pending_cid or 0, value))
        elif depth not in (12, 16) or sess is None:
            bad(lineno, "unexpected line in I_T nexus information", line)
        # other fields of a session (newer tgt versions) are ignored

    for t in targets:
        missing = [name for name, key in _SECTIONS.items() if key not in t.sections]
        if missing:
            problems.append(f"target {t.tid}: missing section(s) {', '.join(missing)}")
        for item in t.luns:
            absent = [k for k in _LUN_REQUIRED if k not in item.seen]
            if absent:
                problems.append(f"target {t.tid} LUN {item.lun}: missing {', '.join(absent)}")
        for s in t.sessions:
            if not s.initiator:
                problems.append(f"target {t.tid} I_T nexus {s.nexus}: no initiator")
    tids = [t.tid for t in targets]
    if len(set(tids)) != len(tids):
        problems.append("duplicate target ids")
    return TgtShow(targets=tuple(t.freeze() for t in targets), problems=tuple(problems))


def parse_tgtadm_sys(text: str) -> TgtSystem:
    """Parse ``tgtadm --mode sys --op show``: the system State and the LLD states. Total."""
    state: str | None = None
    llds: list[tuple[str, str]] = []
    block = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if _indent(line) == 0:
            block = line.strip()
            continue
        m = _KV_RE.match(line.strip())
        if not m:
            continue
        if block == "System:" and m.group(1) == "State":
            state = (m.group(2) or "").strip() or None
        elif block == "LLDs:":
            llds.append((m.group(1), (m.group(2) or "").strip()))
    problems = () if state else ("no 'System: State:' line",)
    return TgtSystem(state=state, llds=tuple(llds), problems=problems)


def parse_tgtadm_portals(text: str) -> tuple[str, ...]:
    """Parse ``tgtadm --lld iscsi --mode portal --op show`` into ``ADDR:PORT`` strings (the
    ``,TPGT`` suffix dropped). Total; lines that are not portals are ignored."""
    out: list[str] = []
    for raw in text.splitlines():
        m = re.match(r"^Portal: (\S+?)(?:,[0-9]+)?$", raw.strip(), re.ASCII)
        if m:
            out.append(m.group(1))
    return tuple(out)
