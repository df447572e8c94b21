"""The agent's log: timestamps and fields on every --watch line, the rotated file written by a
real agent, ``reconcile log`` reading and following it; the journald line format."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from reconciler import agentlog

RECONCILE = shutil.which("reconcile") or ""
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) ")


def _env(state: Path) -> dict[str, str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), COLUMNS="200")
    for k in ("TANDEM_SPEC", "TANDEM_NODE", "JOURNAL_STREAM", "NOTIFY_SOCKET"):
        env.pop(k, None)
    return env


def run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILE, *args], capture_output=True, text=True, env=_env(state), timeout=60
    )


def _wait(what: str, ok: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(ok) or not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed (pip install -e .)")
def test_an_agent_writes_the_log_and_reconcile_log_reads_and_follows_it(tmp_path: Path) -> None:
    out = (tmp_path / "agent.out").open("w")
    agent = subprocess.Popen(
        [RECONCILE, "--watch", "--node", "node1", "--interval", "0.2"],
        stdout=out, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path),
    )  # fmt: skip
    follower: subprocess.Popen[str] | None = None
    try:
        logfile = agentlog.log_path(tmp_path, "node1")
        _wait(
            "the bring-up in the log", lambda: logfile.exists() and "export" in logfile.read_text()
        )
        r = run(tmp_path, "log")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines and all(STAMP.match(line) for line in lines), lines
        assert any("node=node1 resource=iscsi1 action=promote promote iscsi1" in x for x in lines)
        only = run(tmp_path, "log", "--resource", "iscsi1").stdout.splitlines()
        assert only and all("resource=iscsi1" in x for x in only)
        assert len(only) < len(lines)  # the header and VIP lines are about no resource/another
        assert run(tmp_path, "log", "--since", "@9999999999").stdout == ""
        assert run(tmp_path, "log", "--since", "1h", "--node", "node1").stdout == r.stdout
        assert run(tmp_path, "log", "--node", "node2").returncode == 1  # no log of node2 here

        follower = subprocess.Popen(
            [RECONCILE, "log", "-f", "--node", "node1", "--resource", "iscsi1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        )  # fmt: skip
        seen: list[str] = []
        assert follower.stdout is not None
        stream = follower.stdout
        reader = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
        reader.start()
        _wait("the follower's first lines", lambda: len(seen) >= len(only))
        # Something new happens: node1 is made secondary; the agent demotes it.
        assert run(tmp_path, "manual-mode", "enable", "--node", "node1").returncode == 0
        assert run(tmp_path, "manual-mode", "enable", "--node", "node2").returncode == 0
        assert run(tmp_path, "become-secondary", "--node", "node1").returncode == 0
        _wait("the demote, followed", lambda: any("action=demote" in x for x in seen))
        assert all("resource=iscsi1" in x for x in seen)
    finally:
        if follower is not None:
            os.kill(follower.pid, 15)
            follower.wait(timeout=20)
        agent.terminate()
        agent.wait(timeout=30)
        out.close()
    # Every --watch text line on the agent's own output has a timestamp too.
    printed = (tmp_path / "agent.out").read_text().splitlines()
    assert printed and all(STAMP.match(line) for line in printed), printed[:5]
    records = [json.loads(x) for x in agentlog.log_path(tmp_path, "node1").read_text().splitlines()]
    assert {"time", "level", "message", "node"} <= set(records[0])


def test_journald_lines_carry_the_priority_and_the_fields(tmp_path: Path) -> None:
    f = (tmp_path / "stream").open("w")
    st = os.fstat(f.fileno())
    assert agentlog.under_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not agentlog.under_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not agentlog.under_journal(f, {})
    f.close()
    record = logging.LogRecord("tandem.tick", logging.WARNING, __file__, 1, "blocked x", (), None)
    record.node, record.resource, record.action = "node1", "iscsi1", "promote"
    line = agentlog.JournalFormatter().format(record)
    assert line == "<4>node=node1 resource=iscsi1 action=promote blocked x"
    back = agentlog.entry_from_message(1.0, 4, line[3:])
    assert (back.node, back.resource, back.action, back.level, back.message) == (
        "node1", "iscsi1", "promote", "WARNING", "blocked x"
    )  # fmt: skip


def test_since_accepts_durations_iso_times_and_epochs() -> None:
    now = 1_000_000.0
    assert agentlog.parse_since("90s", now=now) == now - 90
    assert agentlog.parse_since("10m", now=now) == now - 600
    assert agentlog.parse_since("2h", now=now) == now - 7200
    assert agentlog.parse_since("@123", now=now) == 123
    assert agentlog.parse_since("1970-01-01T00:01:00", now=now) == 60
    with pytest.raises(ValueError):
        agentlog.parse_since("yesterday-ish", now=now)


@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed (pip install -e .)")
def test_under_journald_the_agent_writes_priorities_and_no_file(tmp_path: Path) -> None:
    """stdout/stderr connected to "the journal" (a file whose dev:inode JOURNAL_STREAM names,
    as systemd sets it): ``<N>`` prefixes, no timestamps, no log file of its own."""
    out_path = tmp_path / "journal-stream"
    out = out_path.open("w")
    st = os.fstat(out.fileno())
    env = dict(_env(tmp_path), JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    agent = subprocess.Popen(
        [RECONCILE, "--watch", "--node", "node1", "--interval", "0.2"],
        stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        _wait("the bring-up", lambda: "action=export-lun" in out_path.read_text())
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        out.close()
    lines = out_path.read_text().splitlines()
    assert all(re.match(r"^<[2-7]>node=node1 ", line) for line in lines), lines
    assert any(line.startswith("<6>node=node1 resource=iscsi1 action=promote ") for line in lines)
    assert not agentlog.log_path(tmp_path, "node1").exists()


@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed (pip install -e .)")
def test_shell_completion_comes_from_click(tmp_path: Path) -> None:
    env = dict(_env(tmp_path), _RECONCILE_COMPLETE="bash_source")
    script = subprocess.run([RECONCILE], capture_output=True, text=True, env=env, timeout=30)
    assert "complete -o nosort -F _reconcile_completion reconcile" in script.stdout
    env = dict(
        _env(tmp_path), _RECONCILE_COMPLETE="bash_complete", COMP_WORDS="reconcile ev",
        COMP_CWORD="1",
    )  # fmt: skip
    words = subprocess.run([RECONCILE], capture_output=True, text=True, env=env, timeout=30)
    assert "plain,events" in words.stdout.splitlines()
