"""The command seam on this machine: real local processes (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.runner import Runner
from reconciler.core.errors import TerminalError, TransientError


def test_exit_codes_map_to_results_and_errors() -> None:
    runner = Runner()
    ok = runner.run(["sh", "-c", "printf out; printf err >&2"])
    assert (ok.rc, ok.stdout, ok.stderr) == (0, "out", "err")
    answer = runner.run(["sh", "-c", "exit 3"], check=False)
    assert answer.rc == 3 and not answer.ok
    with pytest.raises(TerminalError, match="exit code 4"):
        runner.run(["sh", "-c", "echo broken >&2; exit 4"])
    with pytest.raises(TransientError, match="exit code 107"):
        runner.run(["sh", "-c", "exit 107"], transient_codes=(107,))
    with pytest.raises(TerminalError, match="command not found"):
        runner.run(["tandem-no-such-command"])
    assert runner.run(["cat"], stdin="fed").stdout == "fed"


def test_a_timeout_kills_the_command_promptly_and_is_transient(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(TransientError, match=r"timed out after 0\.2s"):
        Runner().run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout=0.2)
    # Killed at its deadline and reaped before run() returned, not left to sleep its 30 s.
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()
