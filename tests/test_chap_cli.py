"""CHAP on the target, as users meet it: a secrets file refused at load (exit 2, the file and
what is wrong), the simulated target's accounts reconciled like its ACLs, and the secret on no
output path: `get`, `status` (text and --json), `--once --json`, the agent's log, the event
history and a mailed alert (a real SMTP server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from adapters.factory import world_store
from adapters.redact import REDACTED
from reconciler.core.specload import load_spec
from tests.simcluster import DEMO_TEXT, SimCluster
from tests.test_alerts import Inbox, smtp  # noqa: F401 - the real SMTP server fixture

RECONCILE = shutil.which("reconcile") or ""
pytestmark = [
    pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed (pip install -e .)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the secrets file must be owned by root"),
]
SECRET = "Zk8-grep-me-4Qw"  # 15 characters: a valid CHAP secret


def write_secrets(tmp_path: Path, mode: int = 0o600, password: str = SECRET) -> Path:
    path = tmp_path / "chap.yaml"
    path.write_text(f"username: xen-pool\npassword: '{password}'\n")
    path.chmod(mode)
    return path


def chap_spec(tmp_path: Path, secrets: Path, extra_alerts: str = "") -> Path:
    text = DEMO_TEXT.replace(
        "    initiators: [ALL]\n",
        f"    initiators: [ALL]\n    chap:\n      secretsFile: {secrets}\n",
    ).replace("  alerts:\n    syslog: false\n", "  alerts:\n    syslog: false\n" + extra_alerts)
    assert "secretsFile" in text and extra_alerts in text
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def run(state: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state))
    for name in ("TANDEM_SPEC", "TANDEM_NODE"):
        env.pop(name, None)
    return subprocess.run(
        [RECONCILE, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [(0o644, 0, "mode 0644, must be 0600"), (0o600, 1000, "owned by uid 1000")],
)
def test_a_secrets_file_others_could_read_is_refused_at_load(
    tmp_path: Path, mode: int, owner: int, expected: str
) -> None:
    secrets = write_secrets(tmp_path, mode)
    os.chown(secrets, owner, 0)
    spec = chap_spec(tmp_path, secrets)
    for args in (["validate"], ["--once", "--node", "node1"], ["get"]):
        res = run(tmp_path / "state", *args, "-f", str(spec))
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert str(secrets) in res.stderr and expected in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "state" / "sim-world.json").exists(), "refused before acting"
    os.chown(secrets, 0, 0)
    secrets.chmod(0o600)
    ok = run(tmp_path / "state", "validate", "-f", str(spec))
    assert ok.returncode == 0, ok.stderr


def test_a_wrong_length_secret_is_refused_without_printing_it(tmp_path: Path) -> None:
    spec = chap_spec(tmp_path, write_secrets(tmp_path, password="Short-pw-1"))
    res = run(tmp_path, "validate", "-f", str(spec))
    assert res.returncode == 2
    assert "password has 10 characters" in res.stderr and "12 to 16" in res.stderr
    assert "Short-pw-1" not in res.stdout + res.stderr


def test_the_simulated_target_binds_the_accounts_and_repairs_a_difference(
    tmp_path: Path,
) -> None:
    spec = load_spec(chap_spec(tmp_path, write_secrets(tmp_path)).read_text())
    cluster = SimCluster.create(spec, tmp_path)
    cluster.converge()
    assert cluster.world.nodes["node1"].target_accounts == ["xen-pool"]
    assert cluster.world.nodes["node2"].target_accounts == []  # no target on the secondary
    # someone bound another account by hand: not running as specified, the primary repairs
    cluster.world.nodes["node1"].target_accounts = ["intruder"]
    report = cluster.tick("node1")
    assert report.observed.target.running is False
    assert "intruder" in (report.observed.target.error or "")
    assert "start-target" in [a.kind.value for a in report.plan.actions]
    assert cluster.world.nodes["node1"].target_accounts == ["xen-pool"]
    assert cluster.tick("node1").plan.converged


def _wait_for_file(path: Path, needle: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never showed {needle!r}")


def test_the_secret_reaches_no_output(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:  # noqa: F811
    """Two texts quote the secret on purpose, so the redaction is really exercised on each
    path: the pool master node2 is told (a mis-pasted pool.conf would do it: the role reason
    quotes it), and the alert mail subject an operator pasted it into. Each output must show
    the redaction marker where the text went, and the secret nowhere."""
    inbox, port = smtp
    secrets = write_secrets(tmp_path)
    spec = chap_spec(
        tmp_path,
        secrets,
        extra_alerts=(
            "    quietTicks: 0\n    blockedGrace: 0\n    mail:\n      enabled: true\n"
            f"      to: [ops@example.com]\n      server: 127.0.0.1\n      port: {port}\n"
            f"      subject: 'tandem {SECRET}'\n"
        ),
    )
    state = tmp_path / "state"
    state.mkdir()
    with world_store(load_spec(spec.read_text()), state).transaction() as world:
        world.pool_views["node2"] = SECRET  # node2: "pool slave of <secret>"
        for res in world.nodes["node2"].resources.values():
            res.up = False  # node2 has work to do (bring DRBD up): its tick is logged
        world.strangers = ["198.51.100.3"]  # node1 is refused the VIP every tick: mailed
    outputs: dict[str, str] = {}

    def keep(name: str, res: subprocess.CompletedProcess[str], *codes: int) -> None:
        assert res.returncode in (codes or (0,)), (name, res.returncode, res.stderr)
        outputs[name] = res.stdout + res.stderr

    env = dict(os.environ, TANDEM_STATE_DIR=str(state))
    for node in ("node2", "node1"):
        watch = subprocess.Popen(
            [RECONCILE, "--watch", "--node", node, "-f", str(spec), "--interval", "0.05"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if node == "node2":
                _wait_for_file(state / "tandem-node2.log", "should be")
            else:
                # node1's own refusal mail (node2's agent may have mailed already: its PBD
                # plug is refused too while nothing serves)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not any(
                    "node1" in str(m) for m in inbox.messages
                ):
                    time.sleep(0.05)
        finally:
            watch.terminate()
            out, err = watch.communicate(timeout=20)
        outputs[f"--watch {node}"] = out + err
    # Any tick outcome but a crash or a usage error: with a stranger on the VIP the PBD plug
    # of node2 is refused (3) or fails (1); what matters here is what the output contains.
    once = run(state, "--once", "--node", "node2", "--json", "-f", str(spec))
    keep("--once --json", once, 0, 1, 3, 4)
    keep("get", run(state, "get", "-f", str(spec)))
    for node in ("node1", "node2"):
        keep(f"status {node}", run(state, "status", "--node", node, "-f", str(spec)), 0, 1)
        keep(
            f"status --json {node}",
            run(state, "status", "--json", "--node", node, "-f", str(spec)),
            0,
            1,
        )
        keep(f"log {node}", run(state, "log", "--node", node))
    keep("events", run(state, "events"))
    for name in ("tandem-node1.log", "tandem-node2.log", "events-node1.jsonl"):
        outputs[name] = (state / name).read_text()
    for name in ("status-node1.json", "status-node2.json"):
        outputs[name] = (state / name).read_text()
    assert inbox.messages, "no alert was mailed"
    outputs["mail"] = "\n".join(m.as_string() for m in inbox.messages)  # type: ignore[attr-defined]

    leaked = [name for name, text in outputs.items() if SECRET in text]
    assert not leaked, f"the secret is printed by: {leaked}"
    # where the quoting texts went, the marker shows the redaction ran on that path
    for name in (
        "get",
        "--once --json",
        "--watch node2",
        "status node2",
        "status --json node2",
        "log node2",
        "tandem-node2.log",
        "status-node2.json",
        "mail",
    ):
        assert REDACTED in outputs[name], (name, outputs[name][:2000])
    assert json.loads(outputs["--once --json"])  # still valid JSON after redaction
