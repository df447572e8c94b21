"""Status records in etcd: many pairs, one place (issue 15). Each agent puts its status record
(the JSON of ``status-<node>.json``) under ``<prefix><cluster>/status/<node>``; any host that
reaches the etcd reads one cluster's records or every cluster sharing it.

Invariants:

- Publishing is best effort and never blocks nor fails a tick: ``EtcdStatusPublisher.offer``
  only hands the newest record to a worker thread (started on the first offer; a newer record
  replaces one not yet sent, so a slow etcd costs records, never the agent's time); each put
  is bounded by the gateway's budget; the last failure is kept in ``error`` for the status to
  show. ``publish_now`` is the synchronous variant for a one-shot run (``reconcile --once``),
  bounded the same way; it returns the failure instead of raising.
- Records are plain keys (no lease): a stopped agent's last record stays, and its time tells
  the reader it is stale, as the file's does.
- Reading returns what etcd holds, as text per node, and the leader key's holder; the reader
  validates the records (``reconciler.cluster``). A failure is ``EtcdError`` (unavailable,
  garbage, refused), for the caller to put in words.
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from typing import Any

from etcd3gw.client import Etcd3Client

from adapters.witness.etcd import leader_key, status_key
from adapters.witness.gateway import EtcdGarbage, EtcdGateway


class EtcdStatusPublisher:
    def __init__(self, gateway: EtcdGateway, *, prefix: str, cluster: str, node: str) -> None:
        self.gateway = gateway
        self.key = status_key(prefix, cluster, node)
        self.error: str | None = None
        self.published = 0
        self._pending: str | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def offer(self, record: str) -> None:
        """Queue ``record`` (JSON text) for publishing; returns at once."""
        with self._cond:
            if self._closed:
                return
            self._pending = record
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="status-publisher"
                )
                self._thread.start()
            self._cond.notify()

    def publish_now(self, record: str) -> str | None:
        """Put ``record`` now (bounded by the gateway's budget); the failure, or None."""
        try:
            self.gateway.call("publish the status record", lambda c: _put(c, self.key, record))
        except Exception as exc:  # best effort: nothing here may stop a tick
            self.error = str(exc)
            return self.error
        self.error = None
        self.published += 1
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                record, self._pending = self._pending, None
            if record is not None:
                self.publish_now(record)

    def close(self) -> None:
        """Stop the worker (a record not yet sent is dropped); idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=self.gateway.timeout + 1)
        self.gateway.close()


@dataclass(frozen=True, slots=True)
class ClusterRecords:
    """One cluster as etcd holds it: each node's record text (unvalidated) and the holder of
    the leader key (None: free)."""

    cluster: str
    records: dict[str, str] = field(default_factory=dict)
    leader: str | None = None


def read_cluster(gateway: EtcdGateway, *, prefix: str, cluster: str) -> ClusterRecords:
    found = _scan(gateway, f"{prefix}{cluster}/", prefix=prefix)
    return found.get(cluster, ClusterRecords(cluster=cluster))


def read_all(gateway: EtcdGateway, *, prefix: str) -> list[ClusterRecords]:
    """Every cluster with a leader key or a status record under ``prefix``, by name."""
    found = _scan(gateway, prefix, prefix=prefix)
    return [found[name] for name in sorted(found)]


def _scan(gateway: EtcdGateway, start: str, *, prefix: str) -> dict[str, ClusterRecords]:
    answer = gateway.call(
        "read the status records",
        lambda c: c.post(
            c.get_url("/kv/range"),
            json={"key": _b64(start), "range_end": _b64(_prefix_end(start))},
        ),
    )
    if not isinstance(answer, dict) or not isinstance(answer.get("header"), dict):
        raise EtcdGarbage(f"read the status records: not a range answer {answer!r:.100}")
    records: dict[str, dict[str, str]] = {}
    leaders: dict[str, str] = {}
    for kv in answer.get("kvs") or []:
        try:
            key = base64.b64decode(kv["key"], validate=True).decode("utf-8")
            value = base64.b64decode(kv.get("value", ""), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise EtcdGarbage(f"read the status records: unreadable key ({exc})") from exc
        rest = key[len(prefix) :].split("/")
        if len(rest) == 2 and rest[1] == "leader" and key == leader_key(prefix, rest[0]):
            leaders[rest[0]] = value
        elif len(rest) == 3 and rest[1] == "status" and rest[2]:
            records.setdefault(rest[0], {})[rest[2]] = value
        # anything else under the prefix is not tandem's: left alone, not reported
    names = set(records) | set(leaders)
    return {
        n: ClusterRecords(cluster=n, records=records.get(n, {}), leader=leaders.get(n))
        for n in names
    }


def _put(client: Etcd3Client, key: str, value: str) -> Any:
    return client.post(client.get_url("/kv/put"), json={"key": _b64(key), "value": _b64(value)})


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: str) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's prefix rule)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"
