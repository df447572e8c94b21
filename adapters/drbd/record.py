"""``SplitBrainRecord``: what the DRBD adapter must know across ticks and processes, on disk.

DRBD's status output cannot show a split brain (see ``adapters.drbd.parse``): a split-brained
resource is just StandAlone, like one an operator disconnected. The adapter infers it from
*how* the resource became StandAlone, which needs facts from before this observation:

- ``conn``: the connection state the last understood observation found (a resource that was
  Connecting/Connected and is now StandAlone, without our disconnect, was refused by DRBD);
- ``action``: the connection action (``up``, ``connect``, ``disconnect``) this node issued since
  that observation (StandAlone right after our ``connect`` is a refusal, after our
  ``disconnect`` it is not);
- ``split_brain``: the suspicion itself, kept until the resource is Connected again or a
  recovery's ``connect --discard-my-data`` ran.

Invariants:

- With a ``path``, every ``load`` reads the file (one small read per tick), so the next
  process (``reconcile --once``, a restarted agent, the operator's recovery command) decides
  from the same facts: the state is persisted, never only in a process's memory. Without a
  path (tests, the VM tier's hand-built adapters) it lives in memory.
- ``save`` writes atomically (``adapters.state.write_json_atomic``) and only when something
  changed; it is best effort: a file that cannot be written is logged (the worst case is one
  ``connect`` that DRBD refuses again, which flags the resource once more). ``read_only``
  records (``--dry-run``) never write.
- An unreadable file is logged and counts as empty.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from adapters.state import read_json, write_json_atomic
from reconciler.core.observed import ConnState

log = logging.getLogger(__name__)

ACTIONS = ("up", "connect", "disconnect")


@dataclass(frozen=True, slots=True)
class ResourceMemo:
    """What the record holds for one resource (see the module docstring)."""

    conn: ConnState | None = None
    action: str | None = None
    split_brain: bool = False


class SplitBrainRecord:
    """Per-resource ``ResourceMemo`` values, persisted at ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False):
        self.path = None if path is None else os.fspath(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._memory: dict[str, ResourceMemo] = {}
        self._loaded = False

    def load(self) -> dict[str, ResourceMemo]:
        """A fresh copy of every resource's memo (read from the file when there is one; a
        read-only record reads it once and then keeps its changes in memory)."""
        with self._lock:
            if self.path is not None and not (self.read_only and self._loaded):
                self._memory = self._read()
                self._loaded = True
            return dict(self._memory)

    def save(self, memos: Mapping[str, ResourceMemo]) -> None:
        """Replace the record with ``memos`` (a no-op when nothing changed)."""
        wanted = {name: m for name, m in memos.items() if m != ResourceMemo()}
        with self._lock:
            writes = self.path is not None and not self.read_only
            current = self._read() if writes else self._memory
            self._memory = dict(wanted)
            if not writes or wanted == current:
                return
            assert self.path is not None
            data = {
                "resources": {
                    name: {
                        "conn": None if m.conn is None else m.conn.value,
                        "action": m.action,
                        "split_brain": m.split_brain,
                    }
                    for name, m in sorted(wanted.items())
                }
            }
            try:
                write_json_atomic(self.path, data)
            except OSError as exc:
                log.warning("cannot write the DRBD split-brain record %s: %s", self.path, exc)

    def _read(self) -> dict[str, ResourceMemo]:
        assert self.path is not None
        try:
            data = read_json(self.path)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable DRBD split-brain record %s: %s", self.path, exc)
            return {}
        entries = data.get("resources") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return {}
        memos: dict[str, ResourceMemo] = {}
        for name, item in entries.items():
            if not isinstance(name, str) or not isinstance(item, dict):
                continue
            try:
                conn = None if item.get("conn") is None else ConnState(item["conn"])
            except ValueError:
                conn = None
            action = item.get("action")
            memos[name] = ResourceMemo(
                conn=conn,
                action=action if action in ACTIONS else None,
                split_brain=item.get("split_brain") is True,
            )
        return memos
