"""``reconcile backup`` / ``restore``: tandem's files on the host kept in the pool database,
because dom0 upgrades and reinstalls wipe them (the reference design does the same).

Each file is one ``pool.other_config`` key ``tandem-backup:<absolute path>`` whose value is
``<mode, 4 octal digits>:<base64 of the bytes>``; a backup replaces every key of the previous
one. The same entries can go to a JSON file too. ``diff`` is pure: restore shows it and asks
before it writes; an empty diff means the host already holds the backup.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapters.xapi.pooldb import PoolDatabase

KEY_PREFIX = "tandem-backup:"


@dataclass(frozen=True, slots=True)
class BackupFile:
    path: str
    mode: int
    data: bytes

    def encode(self) -> str:
        return f"{self.mode:04o}:{base64.b64encode(self.data).decode('ascii')}"

    @classmethod
    def decode(cls, path: str, value: str) -> BackupFile:
        """Raises ``ValueError`` for a value this module did not write."""
        mode, sep, data = value.partition(":")
        if not sep or len(mode) != 4:
            raise ValueError(f"backup of {path}: expected '<mode>:<base64>'")
        try:
            return cls(path, int(mode, 8), base64.b64decode(data, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"backup of {path}: {exc}") from exc


def read_files(paths: list[str]) -> list[BackupFile]:
    """Raises ``OSError`` for a file that cannot be read."""
    files = []
    for path in paths:
        absolute = os.path.abspath(path)
        info = os.stat(absolute)
        files.append(BackupFile(absolute, stat.S_IMODE(info.st_mode), Path(absolute).read_bytes()))
    return files


def save_to_pool(db: PoolDatabase, files: list[BackupFile]) -> None:
    wanted = {KEY_PREFIX + f.path: f.encode() for f in files}
    for key in db.other_config():
        if key.startswith(KEY_PREFIX) and key not in wanted:
            db.update(key, lambda _current: None)
    for key, value in wanted.items():
        db.update(key, _constant(value))


def _constant(value: str) -> Callable[[str | None], str | None]:
    return lambda _current: value


def load_from_pool(db: PoolDatabase) -> list[BackupFile]:
    return sorted(
        (
            BackupFile.decode(key[len(KEY_PREFIX) :], value)
            for key, value in db.other_config().items()
            if key.startswith(KEY_PREFIX)
        ),
        key=lambda f: f.path,
    )


def to_json(files: list[BackupFile]) -> str:
    return json.dumps({f.path: f.encode() for f in files}, indent=1, sort_keys=True) + "\n"


def from_json(text: str) -> list[BackupFile]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a backup file holds a JSON object {path: value}")
    return sorted(
        (BackupFile.decode(str(k), str(v)) for k, v in data.items()), key=lambda f: f.path
    )


def diff(backup: BackupFile, current: bytes | None) -> str:
    """A unified diff from the file on the host (``None``: missing) to the backup; empty
    when they are equal."""
    if current == backup.data:
        return ""
    old = (current or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    new = backup.data.decode("utf-8", errors="replace").splitlines(keepends=True)
    label = "(missing)" if current is None else backup.path
    text = "".join(difflib.unified_diff(old, new, label, f"{backup.path} (backup)"))
    return text or f"{backup.path}: binary or whitespace-only change\n"


def current_bytes(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def write_file(backup: BackupFile) -> None:
    """Atomically (temp file + rename), with the mode the file had at backup time."""
    target = Path(backup.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(backup.data)
        os.chmod(tmp, backup.mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
