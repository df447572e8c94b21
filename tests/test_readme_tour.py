"""README.md's "A short tour", run as written, in order, right after the quick start.

The commands and their claims are parsed from the README (so the test breaks when the README
drifts): a comment that starts with ``exit N`` expects that exit code (else 0), and every
"quoted" phrase of a comment must appear in the command's output. The tour must end with
both nodes out of manual mode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.simcluster import ROOT

RECONCILE = shutil.which("reconcile") or ""
pytestmark = pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed")
README = (ROOT / "README.md").read_text()


@dataclass(frozen=True)
class Step:
    command: str
    exit_code: int
    phrases: tuple[str, ...]


def sh_block(section: str) -> list[str]:
    body = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    block = body.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def tour() -> list[Step]:
    steps = []
    for line in sh_block("A short tour"):
        command, _, comment = line.partition(" # ")
        comment = comment.strip()
        code = re.match(r"exit (\d)", comment)
        steps.append(
            Step(
                command.strip(),
                int(code.group(1)) if code else 0,
                tuple(re.findall(r'"([^"]+)"', comment)),
            )
        )
    return steps


def quick_start() -> str:
    first = sh_block("Quick start")[0]
    return first.split("&&", 1)[1].strip()  # "pip install . && reconcile --once ..."


def env(state: Path) -> dict[str, str]:
    out = dict(os.environ, TANDEM_STATE_DIR=str(state), COLUMNS="200")
    out.pop("TANDEM_SPEC", None)
    out.pop("TANDEM_NODE", None)
    out["PATH"] = f"{Path(RECONCILE).parent}:{out.get('PATH', '')}"
    return out


def shell(state: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env(state), cwd=ROOT,
        timeout=120,
    )  # fmt: skip


def watch_until_a_tick(state: Path, command: str) -> tuple[int, str]:
    """Start the --watch command, stop it (SIGTERM) once it has written a new status record."""
    record = state / "status-node1.json"
    before = record.stat().st_mtime_ns
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env(state), cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while record.stat().st_mtime_ns == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record.stat().st_mtime_ns != before, "the agent wrote no status record"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out + err


def test_the_readme_tour_works_in_order_after_the_quick_start(tmp_path: Path) -> None:
    steps = tour()
    assert len(steps) >= 10 and any("--dry-run" in s.command for s in steps)
    first = shell(tmp_path, quick_start())
    assert first.returncode == 0, first.stdout + first.stderr
    for step in steps:
        if "--watch" in step.command:
            code, out = watch_until_a_tick(tmp_path, step.command)
            assert code == step.exit_code, (step, out)
            for line in out.splitlines():
                if line.strip() and not line.startswith(" "):
                    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z ", line), (step, line)
            continue
        assert step.phrases, f"README tour line without a checkable claim: {step.command}"
        r = shell(tmp_path, step.command)
        out = r.stdout + r.stderr
        assert r.returncode == step.exit_code, (step, out)
        for phrase in step.phrases:
            assert phrase in out, (step, phrase, out)
        if "--json" in step.command:
            assert "timestamp" in json.loads(r.stdout)
    # The tour leaves no node in manual mode.
    for node in ("node1", "node2"):
        show = shell(tmp_path, f"reconcile manual-mode show --node {node}")
        assert "manual mode off" in show.stdout, show.stdout
