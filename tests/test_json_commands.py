"""`--json` on the commands that print a result, and `status --watch`'s live screen (real
subprocesses on the embedded demo): one JSON object each, the text mode's exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_agent_http import RECONCILE, env_for, run

pytestmark = pytest.mark.skipif(
    not RECONCILE, reason="reconcile is not installed (pip install -e .)"
)


def one_object(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    return data


def test_validate_json_valid_and_invalid(tmp_path: Path) -> None:
    ok = run(tmp_path, "validate", "--json")
    data = one_object(ok)
    assert ok.returncode == 0 and data["valid"] is True and data["nodes"] == ["node1", "node2"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: tandem/v1\nkind: StorageCluster\nmetadata: {name: x}\nspec: {}\n")
    wrong = run(tmp_path, "validate", "--json", "-f", str(bad))
    data = one_object(wrong)
    assert wrong.returncode == 2 and data["valid"] is False
    problems = data["problems"]
    assert isinstance(problems, list) and problems
    assert {"line", "column", "path", "message"} <= set(problems[0])
    missing = run(tmp_path, "validate", "--json", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read spec" in str(one_object(missing)["error"])


def test_get_json_has_every_effective_setting(tmp_path: Path) -> None:
    r = run(tmp_path, "get", "--json")
    data = one_object(r)
    settings = data["settings"]
    assert r.returncode == 0 and isinstance(settings, dict)
    assert settings["spec"]["timings"]["commandTimeout"] == 10.0
    assert settings["spec"]["target"]["tid"] == 1


def test_operator_commands_json_accepted_refused_and_exit_codes(tmp_path: Path) -> None:
    assert run(tmp_path, "--once", "--node", "node1").returncode == 0
    refused = run(tmp_path, "become-primary", "--node", "node2", "--json")
    data = one_object(refused)
    assert refused.returncode == 3
    assert data["accepted"] is False and data["refusal"] == "not-in-manual-mode"
    assert "not in manual mode" in str(data["message"]) and refused.stderr == ""
    for node in ("node1", "node2"):
        enabled = run(tmp_path, "manual-mode", "enable", "--node", node, "--json")
        data = one_object(enabled)
        assert enabled.returncode == 0 and data["accepted"] is True
        assert data["operator_state"] == {"manual_mode": True, "chosen_role": None, "force": False}
    busy = run(tmp_path, "become-primary", "--node", "node2", "--json")
    assert busy.returncode == 3 and one_object(busy)["refusal"] == "peer-primary"
    down = run(tmp_path, "become-secondary", "--node", "node1", "--json")
    data = one_object(down)
    tick = data["tick"]
    assert down.returncode == 0 and data["accepted"] is True and isinstance(tick, dict)
    assert "demote" in [a["kind"] for a in tick["actions"]]
    up = run(tmp_path, "become-primary", "--node", "node2", "--json")
    data = one_object(up)
    assert up.returncode == 0 and data["refusal"] is None
    leave = run(tmp_path, "manual-mode", "disable", "--node", "node2", "--json")
    assert leave.returncode == 3 and one_object(leave)["refusal"] == "not-in-native-role"
    show = run(tmp_path, "manual-mode", "show", "--node", "node2", "--json")
    assert one_object(show)["chosen_role"] == "Primary"


def test_status_watch_is_a_live_screen_that_ctrl_c_ends_with_0(tmp_path: Path) -> None:
    assert run(tmp_path, "--once", "--node", "node1").returncode == 0
    proc = subprocess.Popen(
        [RECONCILE, "status", "--watch", "--node", "node1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(tmp_path),
    )
    try:
        time.sleep(3)  # two refreshes (a subprocess test: the screen refreshes every 2 s)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "storage role" in out and "Traceback" not in err
