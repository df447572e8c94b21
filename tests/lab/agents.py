"""Two real ``reconcile --watch`` agents in the namespace lab, and views of what they did.

``AgentCluster`` starts one agent per node *inside* the node's namespace (``lab.spawn``: the
agent's transport is ``local``, so its in-process ARP runs on the node's own segment), over the
files of a ``LabCluster`` (spec, shared state directory, pool.conf files, one backing file). It
looks at the world from outside, read-only: addresses with ``ip``, each node's tgtd through its
control socket, DRBD roles in the simulated world file.

Cleanup (``close``) is bounded and kills nothing it did not start: agents get SIGTERM (they
finish the current step), then SIGKILL by PID; each node's tgtd (started by an agent, so a
descendant of this process) is stopped through ``TgtAdapter.stop``, which acts only on the PID
recorded in that node's control directory and only if it is a tgtd on that socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from adapters.factory import world_store
from adapters.tgt import TgtAdapter
from adapters.vip import parse_ip_addr_json
from reconciler.core.observed import Role, TargetObs
from tests.lab.netns import VIP_IP, Lab
from tests.lab.specs import IQN, LUN, NODES, RESOURCE, LabCluster
from tests.waiting import wait_for

T = TypeVar("T")


def reconcile_command() -> str:
    """The ``reconcile`` console script: the one next to this interpreter first (a pyenv shim
    on $PATH costs a bash + pyenv start-up per agent), else whatever $PATH has."""
    found = shutil.which("reconcile", path=os.path.dirname(sys.executable)) or shutil.which(
        "reconcile"
    )
    if found is None:
        raise RuntimeError("the `reconcile` command is not installed (pip install -e .)")
    return found


@dataclass(frozen=True)
class NodeView:
    """What one node is doing, as seen from outside."""

    vip: bool
    target: TargetObs
    primary: bool

    @property
    def serving(self) -> bool:
        """The target runs and exports the LUN (whether or not the VIP is here)."""
        return bool(self.target.running) and LUN in self.target.exported_luns


@dataclass
class AgentCluster:
    lab: Lab
    files: LabCluster
    interval: float = 0.05
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec = self.files.spec()
        self.target = self.spec.spec.target
        self.reconcile = reconcile_command()
        self._tgt = {
            node: TgtAdapter(
                self.lab.runner(node),
                control_dir=str(self.files.tgt_control_dir(node)),
                portal=VIP_IP,
                resync=0.0,  # the test's own eyes: every look is a full re-list
            )
            for node in NODES
        }
        self._world = world_store(self.spec, self.files.state_dir, read_only=True)

    # ------------------------------------------------------------------ agents
    def log_name(self, node: str) -> str:
        return f"agent-{node}.log"

    def start(self, node: str) -> subprocess.Popen[bytes]:
        assert node not in self.procs or self.procs[node].poll() is not None, "already running"
        self.starts[node] = self.starts.get(node, 0) + 1
        proc = self.lab.spawn(
            node,
            self.files.agent_argv(self.reconcile, node, interval=self.interval),
            log_name=self.log_name(node),
        )
        self.procs[node] = proc
        return proc

    def stop(self, node: str, *, timeout: float = 5.0) -> int:
        """SIGTERM (the agent finishes its current step and exits 0), SIGKILL after
        ``timeout``. Returns the exit status."""
        proc = self.procs[node]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait(timeout=timeout)

    def kill(self, node: str) -> int:
        """SIGKILL the agent (a crash mid-run): no cleanup of any kind happens."""
        proc = self.procs[node]
        proc.kill()
        return proc.wait(timeout=5)

    def crash(self, node: str) -> float:
        """Crash ``node`` as a power loss would: its links down (eth0 to the switch, repl0 to
        the peer), then its agent and its tgtd SIGKILLed by PID. Nothing is told to the
        survivor. Returns the monotonic time both links were down (see ``links_down``)."""
        down = links_down(self.lab, node)
        tgtd = self.tgtd_pid(node)
        if node in self.procs and self.procs[node].poll() is None:
            self.kill(node)
        if tgtd is not None and tgtd in pids_in(self.lab, node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(tgtd, signal.SIGKILL)  # a tgtd its agent (our child) started
        return down

    def reports(self, node: str) -> list[dict[str, Any]]:
        """The agent's tick reports (its ``--json`` lines; stderr log lines are skipped)."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.lab.path(self.log_name(node)).read_text().splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    def applied(self, node: str) -> list[str]:
        """Every action the node's agents applied, in order (``kind`` or ``kind:subject``)."""
        return [a["kind"] for r in self.reports(node) for a in r["applied"]]

    def log_text(self, node: str) -> str:
        try:
            return self.lab.path(self.log_name(node)).read_text()
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ the world
    def view(self, node: str) -> NodeView:
        out = self.lab.run(node, ["ip", "-j", "addr", "show", "dev", "eth0"]).stdout
        vip = VIP_IP in parse_ip_addr_json(out).get("eth0", set())
        target = self._tgt[node].observe(self.target)
        return NodeView(vip=vip, target=target, primary=self.primary(node))

    def primary(self, node: str) -> bool:
        with self._world.transaction() as world:
            return world.nodes[node].resources[RESOURCE].role is Role.PRIMARY

    def views(self) -> dict[str, NodeView]:
        return {node: self.view(node) for node in NODES}

    def serves_alone(self, node: str, *, strict: bool = True) -> bool:
        """``node`` is Primary, holds the VIP and exports the LUN; the peer does none of it.
        ``strict``: the peer also runs no tgtd at all (not even an offline one that serves
        nothing); without it, only what could serve counts."""
        views = self.views()
        me = views[node]
        peer = views[next(n for n in NODES if n != node)]
        # The peer's resident tgtd (or none, after a crash) with no target defined and nothing
        # half-defined either.
        idle = peer.target.running is False and peer.target.error is None
        peer_idle = idle if strict else not peer.target.running
        return (
            me.primary
            and me.vip
            and me.serving
            and not (peer.primary or peer.vip or peer.serving)
            and peer_idle
        )

    def wait_serving(self, node: str, *, timeout: float = 10.0, strict: bool = True) -> float:
        """Wait until ``node`` serves alone (see ``serves_alone``); seconds it took."""
        began = time.monotonic()
        try:
            wait_for(
                f"{node} to serve alone",
                lambda: self.serves_alone(node, strict=strict),
                timeout=timeout,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; now: {self.views()}\n{self.tails()}") from None
        return time.monotonic() - began

    def tgtd_pid(self, node: str) -> int | None:
        try:
            return int(Path(self._tgt[node].pid_file).read_text())
        except (OSError, ValueError):
            return None

    def tgtadm(self, node: str, *args: str) -> str:
        """``tgtadm ARGS`` on ``node``'s tgtd control socket (by hand, like an operator)."""
        env = {"TGT_IPC_SOCKET": self._tgt[node].socket}
        return self.lab.run(node, ["tgtadm", *args], env=env).stdout

    def tails(self, lines: int = 15) -> str:
        parts = []
        for node in NODES:
            text = self.log_text(node).splitlines()[-lines:]
            parts.append(f"--- {node} agent log (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    # ------------------------------------------------------------------ client
    def client_io(self, *commands: str, timeout: float = 10.0) -> str:
        """qemu-io through the VIP from the client namespace; fails the test on any error or
        pattern mismatch."""
        argv = ["qemu-io", "-f", "raw", f"iscsi://{VIP_IP}:3260/{IQN}/{LUN}"]
        for command in commands:
            argv += ["-c", command]
        try:
            res = self.lab.run("client", argv, check=False, timeout=timeout)
        except Exception as exc:  # a hang (killed at the timeout): say what the world looked like
            raise AssertionError(
                f"client I/O did not finish: {exc!r}\n{self.diagnosis()}"
            ) from None
        text = res.stdout + res.stderr
        ok = res.ok and "failed" not in text.lower() and "error" not in text.lower()
        assert ok, f"{text}\n{self.diagnosis()}"
        return res.stdout

    def diagnosis(self) -> str:
        """What a failed client I/O needs explained: who has the VIP and serves, which MAC the
        client's ARP cache holds for the VIP, each node's MAC, and the agents' last log lines."""
        lines = [f"views: {self.views()}"]
        neigh = self.lab.run("client", ["ip", "neigh", "show", VIP_IP], check=False)
        lines.append(f"client neighbour entry for {VIP_IP}: {neigh.stdout.strip()!r}")
        for node in NODES:
            link = self.lab.run(node, ["ip", "-br", "link", "show", "dev", "eth0"], check=False)
            lines.append(f"{node} eth0: {link.stdout.strip()!r}")
        lines.append(self.tails(25))
        return "\n".join(lines)

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Stop the agents, then each node's tgtd; wait until no process of ours is left in
        the node namespaces (a detached ``tgtadm`` of a stop may linger ~100 ms)."""
        errors = []
        for node in list(self.procs):
            try:
                self.stop(node)
            except Exception as exc:
                errors.append(f"agent {node}: {exc!r}")
        for node, tgt in self._tgt.items():
            try:
                tgt.stop_daemon(self.target)  # the agents leave their resident tgtd running
            except Exception as exc:
                errors.append(f"tgtd {node}: {exc!r}")
        try:
            wait_for(
                "no process of ours left in the node namespaces",
                lambda: not any(pids_in(self.lab, node) for node in NODES),
                timeout=3,
            )
        except AssertionError as exc:
            left = {node: pids_in(self.lab, node) for node in NODES}
            errors.append(f"{exc} (still there: {left})")
        if errors:
            raise RuntimeError("agent cluster cleanup: " + "; ".join(errors))


def links_down(lab: Lab, node: str) -> float:
    """Both of ``node``'s links down (eth0 to the switch, repl0 to the peer) in one ``ip
    -batch``, so neither outlives the other by a process start; the monotonic time the command
    returned (the crash instant: nothing goes through node1 after it)."""
    lab.run(node, ["ip", "-batch", "-"], stdin="link set dev eth0 down\nlink set dev repl0 down\n")
    return time.monotonic()


def announcing(lab: Lab, key: str) -> bool:
    """True while an ARP packet socket is open in ``key``'s namespace (``/proc/net/packet``
    read there). The agents' in-process ARP tool holds one from an announcement's first frame
    until its last round went out, and for each probe (a node probes the VIP only while it
    does not hold it)."""
    out = lab.run(key, ["cat", "/proc/net/packet"]).stdout
    return any(line.split()[3:4] == ["0806"] for line in out.splitlines()[1:])


def pids_in(lab: Lab, key: str) -> list[int]:
    """PIDs of live (non-zombie) processes inside ``key``'s network namespace (a read of
    /proc, like ``ip netns pids``)."""
    try:
        want = os.stat(f"/run/netns/{lab.ns(key)}")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            have = os.stat(f"/proc/{entry}/ns/net")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        same = (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino)
        if same and stat.rpartition(")")[2].split()[:1] != ["Z"]:
            found.append(int(entry))
    return found
