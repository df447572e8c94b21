"""Issue 14, item "wakes": the watch loop waits on ``NodeAdapters.wakeup`` and the wake sources'
files wake it through inotify (``adapters.wake.FileWatch``), not by polling them.

The loop's stories run one simulated agent with a 60 s tick interval and ``wakePoll: 3600``: a
tick within the tests' few seconds comes from an inotify event or a notification, never from
the timer nor from a poll (the polling fallback would take an hour). No sleeping: every wait is
``tests.waiting.wait_for`` on the thing awaited.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.base import NodeAdapters, WakeSource
from adapters.factory import build_adapters, world_store
from adapters.state import FileOperatorStore
from adapters.wake import FileWake, FileWatch, Wakeup
from reconciler import loop
from reconciler.agent import TickReport, tick
from reconciler.core.observed import OperatorState, Role
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import load_spec
from reconciler.specfile import SpecWatch
from tests.test_loop import SPEC
from tests.waiting import wait_for

QUIET = SPEC.replace("wakePoll: 0.01", "wakePoll: 3600")


class Recorder(Wakeup):
    """A Wakeup that also keeps every notification, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def notify(self, reason: str) -> None:
        self.reasons.append(reason)
        super().notify(reason)


def replace(path: Path, text: str) -> None:
    """How pool.conf, the operator file and the spec are written: a new file renamed over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_rewrite_by_rename_wakes_through_inotify(tmp_path: Path) -> None:
    path = tmp_path / "pool.conf"
    path.write_text("master\n")
    wakeup = Recorder()
    files = FileWatch([FileWake(path, name="pool.conf")], wakeup, poll=3600).start()
    try:
        assert files.mode == "inotify"
        (tmp_path / "status-node1.json").write_text("{}")  # another file there: no wake
        replace(path, "slave:198.51.100.12\n")
        wait_for("the wake", lambda: wakeup.pending() == "pool.conf")
        assert wakeup.reasons == ["pool.conf"]
        wakeup.clear()
        path.unlink()  # a missing file is a change too
        wait_for("the wake on removal", lambda: wakeup.pending() == "pool.conf")
    finally:
        files.close()
    assert files.mode == "off"


def test_a_missing_directory_is_awaited_and_watched_once_it_exists(tmp_path: Path) -> None:
    state = tmp_path / "not" / "yet"
    path = state / "operator-node1.json"
    marker = tmp_path / "marker"
    wakeup = Recorder()
    sources = [FileWake(path, name="operator choices"), FileWake(marker, name="marker")]
    files = FileWatch(sources, wakeup, poll=3600).start()
    try:
        assert files.mode == "inotify"
        state.mkdir(parents=True)  # the directories alone: the file is still missing
        marker.write_text("1")
        wait_for("the marker's wake", lambda: "marker" in wakeup.reasons)
        assert "operator choices" not in wakeup.reasons
        path.write_text("{}")
        wait_for("the file in the new directory", lambda: "operator choices" in wakeup.reasons)
        n = wakeup.reasons.count("operator choices")
        shutil.rmtree(tmp_path / "not")  # removed with its directory: a change
        wait_for("the removal", lambda: wakeup.reasons.count("operator choices") > n)
        n = wakeup.reasons.count("operator choices")
        state.mkdir(parents=True)  # and back again: watched again
        path.write_text('{"manual_mode": true}')
        wait_for("the file again", lambda: wakeup.reasons.count("operator choices") > n)
    finally:
        files.close()


def test_the_simulated_world_does_not_wake_a_node_for_its_own_changes(
    tmp_path: Path, spec: StorageCluster
) -> None:
    store = world_store(spec, tmp_path)
    with store.transaction() as world:
        world.step()
    marker = tmp_path / "marker"
    wakeup = Recorder()
    sources: list[WakeSource] = [store.wake_source("node1"), FileWake(marker, name="marker")]
    files = FileWatch(sources, wakeup, poll=3600).start()
    try:
        with store.transaction() as world:  # what node1's own actions change
            world.res("node1", "iscsi1").role = Role.PRIMARY
            world.nodes["node1"].vips.append("198.51.100.3")
            world.step()
        # inotify delivers in order: once the marker's event is handled, so was the world's.
        marker.write_text("1")
        wait_for("the marker's wake", lambda: "marker" in wakeup.reasons)
        assert "simulated world" not in wakeup.reasons
        with store.transaction() as world:  # the peer's promote
            world.res("node2", "iscsi1").role = Role.PRIMARY
        wait_for("the peer's change", lambda: "simulated world" in wakeup.reasons)
    finally:
        files.close()


def test_where_inotify_cannot_be_used_the_files_are_polled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def no_inotify() -> object:
        raise OSError(errno.EMFILE, "Too many open files (inotify instances)")

    path = tmp_path / "pool.conf"
    path.write_text("master\n")
    wakeup = Recorder()
    logger = logging.getLogger("adapters.wake")  # "adapters" may not propagate (agentlog)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="adapters.wake")
    files = FileWatch(
        [FileWake(path, name="pool.conf")], wakeup, poll=0.01, inotify=no_inotify
    ).start()
    try:
        assert files.mode == "polling"
        assert files.fallback_reason is not None and "Too many open files" in files.fallback_reason
        replace(path, "slave:198.51.100.12\n")
        wait_for("the polled wake", lambda: wakeup.pending() == "pool.conf")
        replace(path, "master\n")
        wait_for("a second one", lambda: len(wakeup.reasons) == 2)
    finally:
        files.close()
        logger.removeHandler(caplog.handler)
    # One record (caplog may hold it twice: through the root logger and the handler above).
    said = list(
        {id(r): r for r in caplog.records if "fall back to polling" in r.getMessage()}.values()
    )
    assert len(said) == 1 and "Too many open files" in said[0].getMessage()


@pytest.fixture
def spec() -> StorageCluster:
    return load_spec(QUIET, filename="quiet.yaml")


class Closable:
    """A wake source with ``close`` (as an event-fed adapter has): ``NodeAdapters.close``
    closes it; its fingerprint never changes (no path: it is polled, here hourly)."""

    name = "closable"

    def __init__(self) -> None:
        self.closed = 0

    def fingerprint(self) -> object:
        return 0

    def close(self) -> None:
        self.closed += 1


class Agent:
    def __init__(
        self,
        spec: StorageCluster,
        state_dir: Path,
        *,
        stop: threading.Event | None = None,
        on_report: Callable[[TickReport], None] | None = None,
        spec_watch: SpecWatch | None = None,
        rebuild: Callable[[StorageCluster], NodeAdapters] | None = None,
    ) -> None:
        self.adapters = build_adapters(spec, "node1", state_dir)
        self.closable = Closable()
        self.adapters.wake += (self.closable,)
        self.spec = spec
        self.reports: list[TickReport] = []
        self.stop = stop if stop is not None else loop.Stop()
        self.errors: list[BaseException] = []
        self._on_report = on_report
        self._spec_watch = spec_watch
        self._rebuild = rebuild
        self.thread = threading.Thread(target=self._run, daemon=True)

    def report(self, report: TickReport) -> None:
        self.reports.append(report)
        if self._on_report is not None:
            self._on_report(report)

    def _run(self) -> None:
        try:
            loop.run(
                self.spec,
                self.adapters,
                stop=self.stop,
                on_report=self.report,
                spec_watch=self._spec_watch,
                rebuild=self._rebuild,
            )
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def __enter__(self) -> Agent:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def converged(spec: StorageCluster, state_dir: Path) -> None:
    """node1 serving and verified, so the loop's first tick has nothing to do (its next one
    is due only after the 60 s interval)."""
    store = world_store(spec, state_dir)
    with store.transaction() as world:
        world.pool_master = "node1"
    adapters = build_adapters(spec, "node1", state_dir)
    tick(spec, adapters)
    assert tick(spec, adapters).plan.converged


def test_an_operator_file_rewrite_wakes_the_loop(tmp_path: Path, spec: StorageCluster) -> None:
    converged(spec, tmp_path)
    with Agent(spec, tmp_path) as agent:
        wait_for("the first tick", lambda: len(agent.reports) == 1)
        FileOperatorStore(tmp_path / "operator-node1.json").save(OperatorState(manual_mode=True))
        wait_for("the tick the rewrite woke", lambda: len(agent.reports) >= 2)
        assert agent.reports[-1].observed.operator.manual_mode
    assert not agent.errors and not agent.thread.is_alive()


def test_a_notification_during_the_tick_wakes_the_next_wait_at_once(
    tmp_path: Path, spec: StorageCluster
) -> None:
    converged(spec, tmp_path)
    agent: Agent

    def during_the_tick(report: TickReport) -> None:
        if len(agent.reports) == 1:  # after the loop's clear(), before its wait
            agent.adapters.wakeup.notify("drbd events2")

    agent = Agent(spec, tmp_path, on_report=during_the_tick)
    with agent:
        wait_for("the second tick", lambda: len(agent.reports) >= 2)
        assert agent.reports[0].plan.converged  # nothing to verify: only the wake explains it
    assert not agent.errors


@pytest.mark.parametrize("stop", [loop.Stop, threading.Event], ids=["Stop", "plain-Event"])
def test_stop_interrupts_a_long_wait_and_the_end_closes_the_adapters(
    tmp_path: Path, spec: StorageCluster, stop: Callable[[], threading.Event]
) -> None:
    converged(spec, tmp_path)
    agent = Agent(spec, tmp_path, stop=stop())
    agent.thread.start()
    wait_for("the first tick", lambda: len(agent.reports) == 1)
    assert agent.closable.closed == 0
    agent.stop.set()  # the loop waits 60 s for its next tick: stop must end that wait
    wait_for("the loop's end", lambda: not agent.thread.is_alive())
    assert len(agent.reports) == 1 and not agent.errors
    assert agent.closable.closed == 1


def test_the_adapters_are_closed_when_the_loop_ends_by_an_exception(
    tmp_path: Path, spec: StorageCluster
) -> None:
    def broken(report: TickReport) -> None:
        raise RuntimeError("an observer's bug")

    agent = Agent(spec, tmp_path, on_report=broken)
    with agent:
        wait_for("the loop's end", lambda: not agent.thread.is_alive())
    assert [type(e) for e in agent.errors] == [RuntimeError]
    assert agent.closable.closed == 1


def test_a_spec_edit_that_rebuilds_the_adapters_closes_the_old_ones(
    tmp_path: Path, spec: StorageCluster
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(QUIET)
    converged(spec, tmp_path)
    built: list[Closable] = []

    def rebuild(new: StorageCluster) -> NodeAdapters:
        adapters = build_adapters(new, "node1", tmp_path)
        built.append(Closable())
        adapters.wake += (built[-1],)
        return adapters

    agent = Agent(spec, tmp_path, spec_watch=SpecWatch(path, spec), rebuild=rebuild)
    with agent:
        wait_for("the first tick", lambda: len(agent.reports) == 1)
        # commandTimeout is an adapter setting: the adapters are rebuilt. The spec file is
        # a wake source: the edit alone brings the tick (the interval is 60 s).
        replace(path, QUIET.replace("tickInterval: 60,", "tickInterval: 60, commandTimeout: 7,"))
        wait_for("the rebuild", lambda: len(built) == 1)
        wait_for("the old adapters closed", lambda: agent.closable.closed == 1)
        assert built[0].closed == 0
    assert not agent.errors
    assert built[0].closed == 1 and agent.closable.closed == 1  # the end closed the new ones


@pytest.mark.skipif(not shutil.which("reconcile"), reason="reconcile is not installed")
def test_sigterm_ends_the_agents_60s_wait(tmp_path: Path) -> None:
    """The CLI's signal handler sets a ``loop.Stop``, which ends the wait between ticks: the
    agent exits 0 long before its next tick (the bound is a quarter of the interval)."""
    import signal
    import subprocess

    state = tmp_path / "state"
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        ["reconcile", "--watch", "--node", "node1", "--interval", "60"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def idle() -> bool:  # converged, nothing applied: the next wait is the 60 s one
            try:
                record = json.loads((state / "status-node1.json").read_text())
            except (OSError, ValueError):
                return False
            return bool(record["converged"]) and not record["applied"]

        wait_for("a converged tick that applied nothing", idle, timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
