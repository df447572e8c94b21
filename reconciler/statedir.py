"""Is the state directory usable? One check, run by every command before it touches the dir.

The agent and the operator commands keep their state there (operator choices, status record,
agent lock, the simulated world). A path that cannot be a writable directory is a usage error
(exit 2) naming the path and what is wrong, found before anything acts, never a traceback from
deep inside a tick.

Invariants: the check creates the directory when it is missing (as the commands would); it
writes nothing else (a probe file is created and removed at once: permission bits alone do not
tell, root ignores them and a read-only mount ignores them for everyone); ``read_only`` (for
``status``) only requires an existing directory to be readable, and accepts a missing one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def state_dir_problem(path: Path, *, read_only: bool = False) -> str | None:
    """None when ``path`` is usable as the state directory, else what is wrong with it."""
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                if parent == path:
                    return "not a directory (a file is in the way)"
                return f"not a directory: {parent} is a file"
            break
    if read_only:
        if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
            return "not readable (no permission)"
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot be created: {_why(exc)}"
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tandem-probe-")
    except OSError as exc:
        return f"not writable: {_why(exc)}"
    os.close(fd)
    os.unlink(probe)
    return None


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is not a directory"
    return exc.strerror or str(exc)
