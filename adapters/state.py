"""The agent's own state on disk: the operator's manual mode and chosen role, and the helpers
every small per-node state file uses (the VIP's ``AnnounceRecord``, DRBD's ``SplitBrainRecord``).

Written atomically (temp file + rename) so a crash never leaves half a file; a missing file
means "no manual mode"; an unreadable one is reported, and treated as manual mode with no
chosen role, which holds the current roles: the safe reading of "the operator said something
we cannot read".
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from reconciler.core.errors import TerminalError
from reconciler.core.observed import OperatorState, Role


class FileOperatorStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None

    def load(self) -> OperatorState:
        self.error = None
        try:
            data = json.loads(self.path.read_text())
            chosen = data.get("chosen_role")
            return OperatorState(
                manual_mode=bool(data["manual_mode"]),
                chosen_role=Role(chosen) if chosen else None,
                force=bool(data.get("force", False)),
            )
        except FileNotFoundError:
            return OperatorState()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.error = f"operator state {self.path} is unreadable ({exc}); holding roles"
            return OperatorState(manual_mode=True, chosen_role=None)

    def save(self, state: OperatorState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "manual_mode": state.manual_mode,
            "chosen_role": state.chosen_role.value if state.chosen_role else None,
            "force": state.force,
        }
        try:
            write_json_atomic(self.path, data)
        except OSError as exc:
            raise TerminalError(f"cannot write operator state {self.path}: {exc}") from exc


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``; None when the file does not exist. Raises ``OSError`` for
    a file that cannot be read and ``ValueError`` for one that is not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def write_json_atomic(path: str | os.PathLike[str], data: object) -> None:
    """Write ``data`` as JSON so that readers see the old or the new file, never a part: a
    temporary file in the same directory, then ``os.replace``. Raises ``OSError``."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
