"""Reading the spec file a command was given (or the embedded demo), and where the state
directory is, for the commands.

``read_spec`` is the one way a command gets its spec: it validates it and, when the file cannot
be read or is invalid, prints file:line:column messages on stderr and exits 2 (the CLI's usage
exit code), having changed nothing. A spec with ``target.chap`` also needs a usable secrets
file (root's, mode 0600, valid secrets: ``adapters.tgt.chap``), checked here because the pure
spec model cannot look at files; reading it registers the secrets for redaction.
"""

from __future__ import annotations

import os
import sys
from importlib import resources as importlib_resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from reconciler.agent import EXIT_USAGE
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import MAX_SPEC_BYTES, SpecError, load_spec_bytes

DEMO = "embedded:demo.yaml"
# emoji=False: a spec value like ':smile:' must print verbatim, not as a smiley.
_errors = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class SpecFileError(Exception):
    """The spec file could not be read at all (missing, a directory, no permission), or a file
    it points to is unusable (the CHAP secrets file)."""


def load_spec_file(path: str | None) -> tuple[StorageCluster, str]:
    """The validated spec and its name (``path``, or the embedded demo when None). Raises
    ``SpecFileError`` or ``SpecError``; reads at most one byte over the size limit."""
    if path is None:
        data = importlib_resources.files("reconciler").joinpath("demo.yaml").read_bytes()
        name = DEMO
    else:
        try:
            with open(path, "rb") as fh:  # one byte over the limit is enough to refuse it
                data = fh.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise SpecFileError(f"cannot read spec {path}: {exc.strerror or exc}") from exc
        name = path
    spec = load_spec_bytes(data, filename=name)
    _check_chap(spec, name)
    return spec, name


def _check_chap(spec: StorageCluster, name: str) -> None:
    """The CHAP secrets file the spec names must be usable before any command acts (the pure
    spec model cannot look at files): ``SpecFileError`` naming the file and what is wrong.
    Reading it also registers its secrets for redaction in every output of this process."""
    chap = spec.spec.target.chap
    if chap is None:
        return
    from adapters.tgt.chap import ChapFileError, load_chap_secrets

    try:
        load_chap_secrets(chap)
    except ChapFileError as exc:
        raise SpecFileError(f"{name}: target.chap: {exc}") from exc


def read_spec(path: str | None) -> tuple[StorageCluster, str]:
    """Load and validate the spec; exit 2 with file:line:column messages when it is wrong."""
    try:
        return load_spec_file(path)
    except SpecFileError as exc:
        # The message holds user text (the file name): never interpret it as markup.
        _errors.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(EXIT_USAGE)
    except SpecError as exc:
        name = path or DEMO
        for line in exc.render().splitlines():
            _errors.print(line, markup=False, soft_wrap=True)
        n = len(exc.problems)
        _errors.print(
            f"{name}: {n} problem{'s' if n != 1 else ''}; nothing was changed", markup=False
        )
        sys.exit(EXIT_USAGE)


def default_state_dir() -> Path:
    """``$TANDEM_STATE_DIR``, else ``$XDG_STATE_HOME/tandem``, else ``~/.local/state/tandem``."""
    env = os.environ.get("TANDEM_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tandem"


class SpecWatch:
    """The spec file of a running ``--watch`` agent: ``poll`` returns a new spec when the file
    changed and the new content is valid, else None.

    Invariants:
    - the file is read, then validated, and only then swapped in: an invalid edit keeps the
      last good spec (``problem`` says why, with file:line:column, until a valid edit comes);
    - a file that changed while it was being read (its inode, size or mtime differ before and
      after the read) is "unchanged" for now and read again at the next poll: a file being
      written is never half taken. (An editor or ``mv`` replaces the file at once; a writer
      that stops half-way leaves a prefix, which must still validate as a whole spec to be
      taken, so a cut-off file shows as invalid unless it is a complete spec by itself.)
    - renaming the nodes is refused (``problem``): a running agent acts for one of them;
    - never raises: an unreadable file is a ``problem`` too.
    ``wake`` is the file's fingerprint for the watch loop, so an edit starts a tick at once.
    """

    def __init__(self, path: str | os.PathLike[str], spec: StorageCluster) -> None:
        from adapters.wake import FileWake

        self.path = Path(path)
        self.spec = spec
        self.wake = FileWake(self.path, name="spec file")
        self._seen = self.wake.fingerprint()
        self.problem: str | None = None

    def poll(self) -> StorageCluster | None:
        before = self.wake.fingerprint()
        if before == self._seen:
            return None
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            self._seen = before
            self.problem = f"cannot read spec {self.path}: {exc.strerror or exc}"
            return None
        if self.wake.fingerprint() != before:
            return None  # written while read: take it once it holds still
        self._seen = before
        try:
            new = load_spec_bytes(data, filename=str(self.path))
        except SpecError as exc:
            self.problem = exc.render()
            return None
        if new.node_names != self.spec.node_names:
            self.problem = (
                f"{self.path}: the edit renames the nodes {', '.join(self.spec.node_names)} to "
                f"{', '.join(new.node_names)}; refused while this agent runs (stop it, then "
                "start it on the new spec)"
            )
            return None
        self.problem = None
        if new == self.spec:
            return None
        self.spec = new
        return new
