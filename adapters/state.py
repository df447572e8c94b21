"""The agent's own state on disk: the operator's manual mode and chosen role.

Written atomically (temp file + rename) so a crash never leaves half a file; a missing file
means "no manual mode"; an unreadable one is reported, and treated as manual mode with no
chosen role, which holds the current roles: the safe reading of "the operator said something
we cannot read".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".operator-")
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise TerminalError(f"cannot write operator state {self.path}: {exc}") from exc
