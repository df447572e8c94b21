"""tandem's state in the pool database (``pool.other_config``), beside the local files.

- ``MANUAL_MODE``: ``"<host-uuid>=enable|primary|secondary,..."`` (the reference design's
  format): a host in the list is in manual mode, ``primary``/``secondary`` being the role the
  operator chose there. Both hosts see both entries; they survive reboots, a wiped state dir
  and a dom0 reinstall.
- XAPI has no compare-and-set on a map key: ``PoolDatabase.set_key`` removes the key, then adds
  it; ``MAP_DUPLICATE_KEY`` on the add means another host wrote in between, so it reads again
  and retries (the caller's update function is applied to the fresh value).

``PoolOperatorStore`` writes the local file first, then the pool; reads the pool and heals a
missing local copy from it; when XAPI cannot be reached it reads the local copy; a disagreement
between the two is kept in ``warning`` (``manual-mode show`` prints it) and the local copy wins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapters.state import FileOperatorStore
from adapters.xapi.session import XapiClient, XapiError
from reconciler.core.observed import OperatorState, Role

MANUAL_MODE_KEY = "MANUAL_MODE"
_WORDS = {"enable": None, "primary": Role.PRIMARY, "secondary": Role.SECONDARY}


def parse_manual_mode(value: str) -> dict[str, str]:
    """``"uuid1=enable,uuid2=primary"`` -> ``{uuid1: "enable", uuid2: "primary"}``; malformed
    items are skipped (another tool's typo must not hide the other host's entry)."""
    entries: dict[str, str] = {}
    for item in value.split(","):
        host, sep, word = item.strip().partition("=")
        if sep and host and word.strip() in _WORDS:
            entries[host.strip()] = word.strip()
    return entries


def format_manual_mode(entries: dict[str, str]) -> str:
    return ",".join(f"{host}={word}" for host, word in sorted(entries.items()))


def state_word(state: OperatorState) -> str | None:
    if not state.manual_mode:
        return None
    if state.chosen_role in (Role.PRIMARY, Role.SECONDARY):
        return state.chosen_role.value.lower()
    return "enable"


def word_state(word: str | None) -> OperatorState:
    if word is None:
        return OperatorState()
    return OperatorState(manual_mode=True, chosen_role=_WORDS[word])


class PoolDatabase:
    def __init__(self, client: XapiClient) -> None:
        self.client = client

    def pool_ref(self) -> str:
        pools = self.client.call("pool.get_all")
        if not isinstance(pools, list) or not pools:
            raise XapiError("pool.get_all: no pool", transient=True)
        return str(pools[0])

    def other_config(self) -> dict[str, str]:
        value = self.client.call("pool.get_other_config", self.pool_ref())
        if not isinstance(value, dict):
            raise XapiError("pool.get_other_config: not a map", transient=True)
        return {str(k): str(v) for k, v in value.items()}

    def get(self, key: str) -> str | None:
        return self.other_config().get(key)

    def update(self, key: str, change: Callable[[str | None], str | None]) -> None:
        """Set ``key`` to ``change(current value)`` (None removes it)."""
        ref = self.pool_ref()
        for _ in range(5):
            current = self.other_config().get(key)
            new = change(current)
            if new == current:
                return
            self.client.call("pool.remove_from_other_config", ref, key)
            if new is None:
                return
            try:
                self.client.call("pool.add_to_other_config", ref, key, new)
                return
            except XapiError as exc:
                if exc.code != "MAP_DUPLICATE_KEY":
                    raise
        raise XapiError(f"pool other-config {key}: kept changing under us", transient=True)

    def host_uuid(self, name: str) -> str:
        refs = self.client.call("host.get_by_name_label", name)
        if not isinstance(refs, list) or len(refs) != 1:
            raise XapiError(f"XAPI knows no single host named {name!r}", transient=False)
        return str(self.client.call("host.get_uuid", refs[0]))

    def host_names(self) -> dict[str, str]:
        """host uuid -> name label."""
        names: dict[str, str] = {}
        for ref in self.client.call("host.get_all"):
            names[str(self.client.call("host.get_uuid", ref))] = str(
                self.client.call("host.get_name_label", ref)
            )
        return names


class PoolOperatorStore:
    """``OperatorStore`` over the local file and the pool's ``MANUAL_MODE`` key."""

    def __init__(self, local: FileOperatorStore, db: PoolDatabase, *, host_name: str) -> None:
        self.local = local
        self.db = db
        self.host_name = host_name
        self.warning: str | None = None
        self._uuid: str | None = None  # a host's uuid never changes: asked once

    def _host_uuid(self) -> str:
        if self._uuid is None:
            self._uuid = self.db.host_uuid(self.host_name)
        return self._uuid

    @property
    def path(self) -> Path:
        """The local file (what the watch loop's wake source watches)."""
        return self.local.path

    @property
    def error(self) -> str | None:
        return self.local.error

    def load(self) -> OperatorState:
        self.warning = None
        had_local = self.local.path.exists()
        local = self.local.load()
        try:
            uuid = self._host_uuid()
            entries = parse_manual_mode(self.db.get(MANUAL_MODE_KEY) or "")
        except XapiError as exc:
            self.warning = f"pool database unreachable ({exc.reason}); the local copy answers"
            return local
        pooled = word_state(entries.get(uuid))
        if not had_local:
            if pooled.manual_mode:
                # A wiped state dir (dom0 reinstall): the pool database remembers.
                self.local.save(pooled)
            return pooled
        if state_word(local) != state_word(pooled):
            self.warning = (
                f"the local copy ({state_word(local) or 'off'}) and the pool database "
                f"({entries.get(uuid) or 'off'}) disagree; the local copy wins"
            )
        return local

    def save(self, state: OperatorState) -> None:
        self.local.save(state)
        self.warning = None
        try:
            uuid = self._host_uuid()
            word = state_word(state)

            def change(current: str | None) -> str | None:
                entries = parse_manual_mode(current or "")
                entries.pop(uuid, None)
                if word is not None:
                    entries[uuid] = word
                return format_manual_mode(entries) or None

            self.db.update(MANUAL_MODE_KEY, change)
        except XapiError as exc:
            self.warning = f"saved locally only: pool database not written ({exc.reason})"

    def pool_view(self) -> dict[str, str] | None:
        """Host name -> manual-mode word of every host in the pool database; None when XAPI
        cannot be reached."""
        try:
            names = self.db.host_names()
            entries = parse_manual_mode(self.db.get(MANUAL_MODE_KEY) or "")
        except XapiError:
            return None
        return {names.get(uuid, uuid): word for uuid, word in entries.items()}
