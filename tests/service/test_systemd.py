"""systemd: the unit passes ``systemd-analyze verify``; the notify protocol against a real
NOTIFY_SOCKET of a real ``reconcile --watch`` agent (READY, STATUS, WATCHDOG, and WATCHDOG
stopping while a tick hangs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from adapters.sim.world import Fault, FileWorldStore
from reconciler.core.specload import load_spec
from reconciler.systemd import Notifier, unit_text, watchdog_seconds
from tests.service.notify import NotifyListener

RECONCILE = shutil.which("reconcile") or ""
ANALYZE = shutil.which("systemd-analyze")
DEMO = load_spec(resources.files("reconciler").joinpath("demo.yaml").read_text(), filename="demo")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    sock = NotifyListener.at_path(tmp_path)
    yield sock
    sock.close()


def _unit(tmp_path: Path, **kw: str) -> Path:
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(resources.files("reconciler").joinpath("demo.yaml").read_text())
    text = unit_text(
        DEMO,
        exec_path=kw.get("exec_path", RECONCILE),
        spec_path=str(spec_file),
        state_dir="/var/lib/tandem",
        node="node1",
    )
    path = tmp_path / "tandem.service"
    path.write_text(text)
    return path


def _verify(unit: Path) -> str:
    assert ANALYZE is not None
    r = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # systemd-analyze exits 0 even when it prints "Failed to parse ...": read the output.
    return (r.stdout + r.stderr).strip()


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (Debian package systemd)")
@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed (pip install -e .)")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit(tmp_path)
    text = unit.read_text()
    for line in (
        "Type=notify",
        f"WatchdogSec={watchdog_seconds(DEMO)}",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "SyslogIdentifier=tandem",
        "drbd.service tgt.service",
    ):
        assert line in text
    out = _verify(unit)
    print(f"systemd-analyze verify: {out!r}")
    assert out == "", out


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (Debian package systemd)")
def test_verify_really_reads_the_unit(tmp_path: Path) -> None:
    """The check above can fail: a broken unit makes systemd-analyze say so."""
    unit = _unit(tmp_path, exec_path=RECONCILE or "/bin/true")
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy"))
    assert "Failed to parse" in _verify(unit)


def test_the_printed_unit_is_the_shipped_template(tmp_path: Path) -> None:
    """`reconcile systemd-unit` prints the wheel's template with the spec's watchdog."""
    if not RECONCILE:
        pytest.skip("reconcile is not installed")
    spec = tmp_path / "cluster.yaml"
    spec.write_text(
        resources.files("reconciler")
        .joinpath("demo.yaml")
        .read_text()
        .replace("tickInterval: 2", "tickInterval: 30")
    )
    assert "tickInterval: 30" in spec.read_text()
    r = subprocess.run(
        [RECONCILE, "systemd-unit", "-f", str(spec), "--node", "node2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    loaded = load_spec(spec.read_text(), filename=str(spec))
    assert f"WatchdogSec={watchdog_seconds(loaded)}\n" in r.stdout
    assert watchdog_seconds(loaded) == watchdog_seconds(DEMO) + 28
    assert f"Environment=TANDEM_SPEC={spec.resolve()}\n" in r.stdout
    assert "Environment=TANDEM_NODE=node2\n" in r.stdout


def test_notifier_sends_to_a_path_and_an_abstract_socket(tmp_path: Path) -> None:
    for sock in (NotifyListener.at_path(tmp_path), NotifyListener.abstract()):
        try:
            n = Notifier.from_env({"NOTIFY_SOCKET": sock.address})
            assert n.send("READY=1", "STATUS=hello world")
            got = sock.wait_for("READY", timeout=5)
            assert got.fields == {"READY": "1", "STATUS": "hello world"}
        finally:
            sock.close()


def test_watchdog_only_when_asked_for_this_pid() -> None:
    me = str(os.getpid())
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5000000"}).watchdog
    assert Notifier.from_env(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": me}
    ).watchdog
    assert not Notifier.from_env(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}
    ).watchdog
    assert not Notifier.from_env({"NOTIFY_SOCKET": "/x"}).watchdog
    quiet = Notifier.from_env({})
    assert not quiet.enabled and not quiet.send("READY=1")


def _agent(state: Path, sock: NotifyListener, interval: float) -> subprocess.Popen[str]:
    env = dict(
        os.environ,
        TANDEM_STATE_DIR=str(state),
        NOTIFY_SOCKET=sock.address,
        WATCHDOG_USEC="10000000",
    )
    env.pop("TANDEM_SPEC", None)
    env.pop("WATCHDOG_PID", None)  # the agent's pid is not known before it starts
    return subprocess.Popen(
        [RECONCILE, "--watch", "--node", "node1", "--interval", str(interval)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed (pip install -e .)")
def test_ready_after_the_first_completed_tick(tmp_path: Path, listener: NotifyListener) -> None:
    state = tmp_path / "state"
    proc = _agent(state, listener, interval=0.2)
    try:
        ready = listener.wait_for("READY")
        # The first tick completed before READY: its status record is already written.
        assert (state / "status-node1.json").exists()
        assert ready.fields["READY"] == "1"
        assert ready.fields["STATUS"].startswith("node1: Primary")
        listener.wait_for("WATCHDOG", after=ready.at)
    finally:
        _stop(proc)
    got = listener.snapshot()
    assert sum("READY" in d.fields for d in got) == 1, "READY is sent once"
    assert all("STATUS" in d.fields for d in got)
    assert "STOPPING" in got[-1].fields
    assert any(d.fields.get("STATUS") == "node1: Primary; converged" for d in got)


@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed (pip install -e .)")
def test_watchdog_pings_stop_while_a_tick_hangs(tmp_path: Path, listener: NotifyListener) -> None:
    interval, hang = 0.2, 4.0
    state = tmp_path / "state"
    proc = _agent(state, listener, interval=interval)
    try:
        listener.wait_for("READY")
        listener.wait_for("WATCHDOG", after=time.monotonic())  # ticking steadily
        store = FileWorldStore(state / "sim-world.json", spec=DEMO)
        with store.transaction() as world:
            world.faults.append(
                Fault(node="node1", op="drbd-observe", kind="hang", count=-1, seconds=60)
            )
        hung_at = time.monotonic()
        time.sleep(hang)
        during = [d.at - hung_at for d in listener.snapshot() if "WATCHDOG" in d.fields]
        during = [t for t in during if t > 0]
        with store.transaction() as world:  # release: the hung call returns, ticks go on
            world.faults = [f for f in world.faults if f.kind != "hang"]
        released_at = time.monotonic()
        resumed = listener.wait_for("WATCHDOG", after=released_at)
    finally:
        _stop(proc)
    last = max(during, default=0.0)
    print(
        f"\nwatchdog: interval {interval}s; pings after the hang began: "
        f"{[round(t, 3) for t in during]}; last one {last:.3f}s after; "
        f"first ping after release {resumed.at - released_at:.3f}s later"
    )
    # At most the tick already under way completes; then no ping for the rest of the hang.
    assert all(t <= interval + 1.0 for t in during), during
    assert len(during) <= 2, during
