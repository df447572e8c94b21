"""``AnnounceRecord``: which VIPs this node announced after it last added them (on disk)."""

from __future__ import annotations

import logging
import os
import threading

from adapters.state import read_json, write_json_atomic

log = logging.getLogger(__name__)


class AnnounceRecord:
    """Which VIPs this node's agent announced (gratuitous ARP) after it last added them.

    ``IpVip`` clears a VIP's entry *before* it adds the address and sets it once the first
    frames of an announcement went out, so a VIP that is local but not in the record was added
    and never announced: the agent was killed in between, or every attempt failed. The planner
    then announces it again; without that, initiators keep the old holder's MAC until their
    ARP entry expires (8-45 s on Linux).

    Kept in a small JSON file (``path``) so that it outlives the agent process: a restarted
    agent, or the next ``reconcile --once``, knows what was already announced. Without a path
    it lives in memory only. Persisting is best effort: a file that cannot be written is logged
    and the in-memory record still holds (the worst case is one extra announcement by the next
    process). Only this node's agent writes it, so the file is read once.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._lock = threading.Lock()
        self._ips: set[str] | None = None if self.path else set()

    def __contains__(self, ip: object) -> bool:
        with self._lock:
            return ip in self._load()

    def remember(self, ip: str) -> None:
        self._change(ip, add=True)

    def forget(self, ip: str) -> None:
        self._change(ip, add=False)

    def _load(self) -> set[str]:
        if self._ips is None:
            assert self.path is not None
            self._ips = set()
            try:
                data = read_json(self.path)
                if isinstance(data, dict) and isinstance(data.get("announced"), list):
                    self._ips = {ip for ip in data["announced"] if isinstance(ip, str)}
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable announcement record %s: %s", self.path, exc)
        return self._ips

    def _change(self, ip: str, *, add: bool) -> None:
        with self._lock:
            ips = self._load()
            if (ip in ips) == add:
                return
            if add:
                ips.add(ip)
            else:
                ips.discard(ip)
            if self.path is None:
                return
            try:
                write_json_atomic(self.path, {"announced": sorted(ips)})
            except OSError as exc:
                log.warning("cannot write the announcement record %s: %s", self.path, exc)
