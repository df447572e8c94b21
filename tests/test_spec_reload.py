"""Issue 10, point 4: ``reconcile --watch`` reloads its spec file. A valid edit is served on
the next tick; an invalid one (or one renaming the nodes) keeps the last good spec, is logged
with file:line and alerted as NODE:spec-invalid, and never stops the agent; a file caught while
it is being written is taken only once it holds still. Before this change the agent served the
spec it started with until restarted (the first story fails there: the old VIP stays).

``SpecWatch`` is tested directly (no process), then the real ``reconcile --watch`` subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.core.specload import load_spec
from reconciler.specfile import SpecWatch
from tests.simcluster import DEMO_TEXT
from tests.waiting import wait_for

OLD_VIP = "198.51.100.3"
NEW_VIP = "198.51.100.9"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_spec_watch_takes_a_valid_edit_and_keeps_the_last_good_spec(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(DEMO_TEXT)
    watch = SpecWatch(path, load_spec(DEMO_TEXT, filename=str(path)))
    assert watch.poll() is None  # unchanged
    write_atomically(path, DEMO_TEXT.replace(OLD_VIP, NEW_VIP))
    new = watch.poll()
    assert new is not None and new.spec.vips[0].ip == NEW_VIP and watch.problem is None
    broken = DEMO_TEXT.replace(OLD_VIP, NEW_VIP).replace("minor: 1", "minor: lots")
    write_atomically(path, broken)
    assert watch.poll() is None
    assert watch.spec is new  # the last good one
    line = broken.splitlines().index("      minor: lots") + 1
    assert watch.problem is not None and f"{path}:{line}:" in watch.problem
    renamed = DEMO_TEXT.replace("node2", "node3")
    write_atomically(path, renamed)
    assert watch.poll() is None and watch.spec is new
    assert "renames the nodes" in (watch.problem or "")


def test_spec_watch_never_takes_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(DEMO_TEXT)
    watch = SpecWatch(path, load_spec(DEMO_TEXT, filename=str(path)))
    with open(path, "w") as fh:  # written in place, in two halves
        fh.write(DEMO_TEXT[: len(DEMO_TEXT) // 2])
        fh.flush()
        assert watch.poll() is None  # half a spec: invalid, not taken
        assert watch.problem is not None
        fh.write(DEMO_TEXT[len(DEMO_TEXT) // 2 :].replace(OLD_VIP, NEW_VIP))
    new = watch.poll()
    assert new is not None and new.spec.vips[0].ip == NEW_VIP and watch.problem is None


def _world(state: Path) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads((state / "sim-world.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def _vips(state: Path, node: str) -> list[str] | None:
    nodes = _world(state).get("nodes")
    if not isinstance(nodes, dict):
        return None
    return list(nodes[node]["vips"])


@pytest.mark.skipif(not shutil.which("reconcile"), reason="reconcile is not installed")
def test_watching_agent_reloads_its_spec(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(DEMO_TEXT)
    state = tmp_path / "state"
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), PYTHONPATH=os.getcwd())
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            ["reconcile", "--watch", "--node", "node1", "-f", str(spec), "--interval", "0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for("node1 serves the VIP", lambda: _vips(state, "node1") == [OLD_VIP], timeout=20)
        write_atomically(spec, DEMO_TEXT.replace(OLD_VIP, NEW_VIP))
        wait_for("the new VIP only", lambda: _vips(state, "node1") == [NEW_VIP], timeout=20)
        broken = DEMO_TEXT.replace("minor: 1", "minor: lots")  # would also undo the VIP edit
        write_atomically(spec, broken)
        line = broken.splitlines().index("      minor: lots") + 1
        wait_for(
            "the refusal logged with file:line",
            lambda: f"{spec}:{line}:" in err_path.read_text(),
            timeout=20,
        )
        assert "spec edit refused" in err_path.read_text()
        renamed = DEMO_TEXT.replace("node2", "node3")
        write_atomically(spec, renamed)
        wait_for(
            "the rename refused", lambda: "renames the nodes" in err_path.read_text(), timeout=20
        )
        assert proc.poll() is None  # still running
        assert _vips(state, "node1") == [NEW_VIP]  # nothing acted on the refused edits
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert proc.returncode == 0, err_path.read_text()[-2000:]
