"""The quorum witness on a real etcd (v3 HTTP gateway, ``etcd3gw``): one lease-backed key per
cluster, ``<prefix><cluster>/leader``, whose value is the name of the node holding it.

Invariants:

- ``observe`` never raises and never writes: it is one linearizable read of the leader key.
  ``reachable`` is True only when that read succeeded (a majority answered); an unreachable
  etcd, a refusal or an unreadable answer is ``reachable=False`` with the reason in ``error``
  and ``holder=None`` (unknown, never the last holder seen).
- ``lease_left`` is counted from when this node's last successful claim or refresh was *sent*
  (the grant's send time for a new lease, the keep-alive's for a refresh), on the monotonic
  clock, so it is never later than etcd's own expiry; it is reported also while etcd is
  unreachable (it is what the serving node must stop serving by). None: this node holds no
  lease (by etcd's answer when reachable, by its lease record when not).
- The lease is level-based: its id, the send time of its last claim/refresh, its TTL and the
  boot it was taken in are persisted in the state directory (``witness-<node>.json``) before
  they are relied upon, so a restarted agent or a ``reconcile --once`` refreshes or revokes
  the same lease; a record from an earlier boot has no usable send time (the monotonic clock
  restarted), so it gives no ``lease_left`` until the next refresh. Whether this node holds
  the key is always read from etcd, never from the record alone.
- ``claim`` creates the key only while it is absent (one transaction: compare
  ``create_revision == 0``), with a lease granted just before; it refreshes the lease of a
  key already holding this node's name (the lease id is the key's, so a lost record is
  recovered from etcd). The key held by another node, no majority, or a lease that expired
  between the read and the refresh: ``TransientError`` (the executor retries, the next tick
  re-observes). A state directory that cannot be written: ``TerminalError``.
- ``release`` revokes this node's lease (the key goes with it) and drops the record;
  idempotent (no lease, or one etcd no longer knows, is success).
- Every etcd call is bounded by ``retry_timeout`` (``EtcdGateway``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etcd3gw.client import Etcd3Client

from adapters.state import read_json, write_json_atomic
from adapters.witness.gateway import (
    EtcdError,
    EtcdGarbage,
    EtcdGateway,
    EtcdRefused,
    EtcdUnavailable,
)
from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.observed import WitnessObs

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def leader_key(prefix: str, cluster: str) -> str:
    return f"{prefix}{cluster}/leader"


def status_key(prefix: str, cluster: str, node: str) -> str:
    return f"{prefix}{cluster}/status/{node}"


def lease_record_path(state_dir: Path, node: str) -> Path:
    """Where the witness adapter of ``node`` persists its lease (``LeaseRecord``)."""
    return state_dir / f"witness-{node}.json"


def current_boot() -> str:
    """This boot's id (the monotonic clock's epoch); empty when unknown."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    lease: int
    sent: float  # monotonic time the last successful grant/keep-alive was sent
    ttl: float  # what the lease is counted as (<= etcd's granted TTL)
    boot: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return {
            "lease": str(self.lease),
            "sent": self.sent,
            "ttl": self.ttl,
            "boot": self.boot,
            "key": self.key,
        }

    @classmethod
    def of(cls, data: Any) -> LeaseRecord:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return cls(
            lease=int(data["lease"]),
            sent=float(data["sent"]),
            ttl=float(data["ttl"]),
            boot=str(data["boot"]),
            key=str(data["key"]),
        )


@dataclass(frozen=True, slots=True)
class KeyState:
    """The leader key as etcd holds it: ``holder`` None when absent."""

    holder: str | None
    lease: int = 0


class EtcdWitness:
    def __init__(
        self,
        gateway: EtcdGateway,
        *,
        cluster: str,
        node: str,
        prefix: str,
        ttl: float,
        record_path: Path,
        clock: Callable[[], float] = time.monotonic,
        boot: Callable[[], str] = current_boot,
    ) -> None:
        self.gateway = gateway
        self.node = node
        self.key = leader_key(prefix, cluster)
        self.ttl = ttl
        self.record_path = record_path
        self._clock = clock
        self._boot = boot

    # ------------------------------------------------------------------ observation
    def observe(self) -> WitnessObs:
        record, record_error = self._load()
        try:
            state = self._read()
        except EtcdError as exc:
            return WitnessObs(
                enabled=True,
                reachable=False,
                holder=None,
                lease_left=self._left(record),
                error=_join(f"witness unreachable: {_reason(exc)}", record_error),
            )
        mine = (
            state.holder == self.node
            and record is not None
            and record.key == self.key
            and record.lease == state.lease
        )
        error = record_error
        if state.holder == self.node and not mine:
            error = _join(error, "this node's name holds the key but its lease is not recorded")
        return WitnessObs(
            enabled=True,
            reachable=True,
            holder=state.holder,
            lease_left=self._left(record) if mine else None,
            error=error,
        )

    def _left(self, record: LeaseRecord | None) -> float | None:
        if record is None or record.key != self.key or not record.boot:
            return None
        if record.boot != self._boot():
            return None  # the monotonic clock restarted: the send time means nothing now
        return max(0.0, record.ttl - (self._clock() - record.sent))

    # ------------------------------------------------------------------ actions
    def claim(self) -> None:
        try:
            state = self._read()
            if state.holder is None:
                self._create()
            elif state.holder == self.node:
                self._refresh(state.lease)
            else:
                raise TransientError(f"the witness key {self.key} is held by {state.holder}")
        except EtcdError as exc:
            raise TransientError(f"witness claim: {_reason(exc)}") from exc

    def _create(self) -> None:
        sent = self._clock()
        granted = self.gateway.call(
            "grant a lease", lambda c: _post(c, "/lease/grant", {"TTL": _ttl(self.ttl), "ID": 0})
        )
        lease = _int(granted, "ID")
        counted = min(self.ttl, float(_int(granted, "TTL")))
        # Recorded before the key can name this node: a crash right after the transaction
        # leaves a record a restarted agent refreshes or revokes.
        self._save(
            LeaseRecord(lease=lease, sent=sent, ttl=counted, boot=self._boot(), key=self.key)
        )
        key = _b64(self.key)
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": _b64(self.node), "lease": lease}}],
            "failure": [{"request_range": {"key": key}}],
        }
        answer = self.gateway.call("create the leader key", lambda c: _post(c, "/kv/txn", txn))
        if not isinstance(answer, dict):
            raise EtcdGarbage(f"create the leader key: unreadable answer {answer!r:.100}")
        if answer.get("succeeded"):
            return
        # Lost the race, or an earlier attempt of this very claim succeeded and its answer was
        # lost (the gateway retried on another member): the key tells which.
        state = _key_state(_failure_range(answer), nested=True)
        if state.holder == self.node and state.lease == lease:
            return
        with contextlib.suppress(EtcdError):
            self._revoke(lease)
        self._drop()
        raise TransientError(f"the witness key {self.key} is held by {state.holder or 'nobody'}")

    def _refresh(self, lease: int) -> None:
        if lease == 0:
            raise TransientError(f"the witness key {self.key} names {self.node} but has no lease")
        sent = self._clock()
        answer = self.gateway.call(
            "refresh the lease", lambda c: _post(c, "/lease/keepalive", {"ID": lease})
        )
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise EtcdGarbage(f"refresh the lease: unreadable answer {answer!r:.100}")
        ttl = int(result.get("TTL", -1) or -1)
        if ttl <= 0:
            self._drop()
            raise TransientError(f"the witness lease {lease:x} expired before its refresh")
        counted = min(self.ttl, float(ttl))
        self._save(
            LeaseRecord(lease=lease, sent=sent, ttl=counted, boot=self._boot(), key=self.key)
        )

    def release(self) -> None:
        record, _ = self._load()
        try:
            state = self._read()
            leases = {record.lease} if record is not None and record.key == self.key else set()
            if state.holder == self.node and state.lease:
                leases.add(state.lease)
            for lease in leases:
                self._revoke(lease)
        except EtcdError as exc:
            raise TransientError(f"witness release: {_reason(exc)}") from exc
        self._drop()

    def _revoke(self, lease: int) -> None:
        try:
            self.gateway.call(
                "revoke the lease", lambda c: _post(c, "/kv/lease/revoke", {"ID": lease})
            )
        except EtcdRefused as exc:
            if "not found" not in exc.detail:
                raise

    def close(self) -> None:
        self.gateway.close()

    # ------------------------------------------------------------------ etcd and the record
    def _read(self) -> KeyState:
        answer = self.gateway.call(
            "read the leader key", lambda c: _post(c, "/kv/range", {"key": _b64(self.key)})
        )
        return _key_state(answer)

    def _record(self, lease: int, *, sent: float, ttl: float) -> LeaseRecord:
        return LeaseRecord(lease=lease, sent=sent, ttl=ttl, boot=self._boot(), key=self.key)

    def _load(self) -> tuple[LeaseRecord | None, str | None]:
        try:
            data = read_json(self.record_path)
            return (None if data is None else LeaseRecord.of(data)), None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"lease record {self.record_path} is unreadable ({exc})"

    def _save(self, record: LeaseRecord) -> None:
        try:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.record_path, record.to_json())
        except OSError as exc:
            raise TerminalError(f"cannot write the lease record {self.record_path}: {exc}") from exc

    def _drop(self) -> None:
        try:
            self.record_path.unlink(missing_ok=True)
        except OSError as exc:
            raise TerminalError(
                f"cannot remove the lease record {self.record_path}: {exc}"
            ) from exc


# ---------------------------------------------------------------------- the gateway's JSON
def _post(client: Etcd3Client, path: str, body: dict[str, Any]) -> Any:
    return client.post(client.get_url(path), json=body)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _ttl(seconds: float) -> int:
    """etcd grants whole seconds: round up (the lease is counted as ``seconds``, never more)."""
    return max(1, math.ceil(seconds))


def _int(answer: Any, field: str) -> int:
    if not isinstance(answer, dict) or field not in answer:
        raise EtcdGarbage(f"no {field} in the answer {answer!r:.100}")
    try:
        return int(answer[field])
    except (TypeError, ValueError) as exc:
        raise EtcdGarbage(f"{field} is not a number in {answer!r:.100}") from exc


def _key_state(answer: Any, *, nested: bool = False) -> KeyState:
    """The leader key from a range answer (``nested``: a transaction's, whose header may be
    left out); ``EtcdGarbage`` for anything not shaped like one."""
    if not isinstance(answer, dict) or not (nested or isinstance(answer.get("header"), dict)):
        raise EtcdGarbage(f"not a range answer: {answer!r:.100}")
    kvs = answer.get("kvs") or []
    if not isinstance(kvs, list) or len(kvs) > 1:
        raise EtcdGarbage(f"not a range answer: {answer!r:.100}")
    if not kvs:
        return KeyState(holder=None)
    kv = kvs[0]
    if not isinstance(kv, dict):
        raise EtcdGarbage(f"not a key in the range answer: {kv!r:.100}")
    try:
        holder = base64.b64decode(kv.get("value", ""), validate=True).decode("utf-8")
        lease = int(kv.get("lease", 0) or 0)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise EtcdGarbage(f"unreadable leader key: {exc}") from exc
    if not holder:
        raise EtcdGarbage("the leader key is empty")
    return KeyState(holder=holder, lease=lease)


def _failure_range(answer: dict[str, Any]) -> Any:
    responses = answer.get("responses")
    if not isinstance(responses, list) or len(responses) != 1 or not isinstance(responses[0], dict):
        raise EtcdGarbage(f"unreadable transaction answer {answer!r:.100}")
    return responses[0].get("response_range")


def _reason(exc: Exception) -> str:
    kind = {EtcdUnavailable: "", EtcdGarbage: "garbage from the gateway: ", EtcdRefused: ""}
    return f"{kind.get(type(exc), '')}{exc}"


def _join(*parts: str | None) -> str | None:
    text = "; ".join(p for p in parts if p)
    return text or None
