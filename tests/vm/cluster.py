"""The VM tier's cluster: the lab VMs plus a spec, per-node agents and a client.

- ``vm_spec``: the spec of the VM cluster (nodes node1/node2 with replication on the dedicated
  link, VIP 198.51.100.3/24 on eth0, role source pool-conf with host-side pool.conf files,
  quorum policy whose heuristic address is the client VM's).
- ``vm_adapters``: one node's real adapters on a ``VmConsole`` runner, built the way
  ``adapters.factory`` builds real adapters for a node the agent does not run on. With
  ``streams`` (the agents) observation is event-fed over the console's streams, so an idle
  tick starts no process in the VM: EventFedDrbd (one ``drbdsetup events2``), MonitoredVip
  (``ip -o monitor address link``, ``CommandArp``), StreamLiveness (one ``ping -O`` per peer
  and heuristic address), TgtAdapter with ``CommandProcessHost`` (resident tgtd, its target
  list cached and re-listed after each action and every ``timings.resync``; its exit seen
  through its handle), all notifying one ``Wakeup``. Without ``streams`` (a one-shot
  ``reconcile`` command) the polling adapters: RealDrbd, IpVip, PingLiveness.
- ``AgentLoop``: one node's agent, ``reconciler.agent.tick`` in a thread (``reconcile --watch``
  in-process), recording every report and the alerts it raises.
- ``VmCluster``: provisioning (DRBD configuration, metadata), pool.conf, client I/O over
  iSCSI through the VIP (qemu-io in the client VM), and the hand-scripted floors: the same
  drbdadm/ip/arping/tgtd/tgtadm commands the adapters issue, sent directly through the same
  transport with no observation and no decisions (tgtd resident: a takeover defines the
  target on the running tgtd, a step-down deletes it and keeps tgtd, as the adapter does).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapters.base import Alert, DrbdAdapter, LivenessAdapter, NodeAdapters, VipAdapter
from adapters.drbd import RealDrbd
from adapters.drbd.parse import parse_status_text
from adapters.drbd.stream import EventFedDrbd
from adapters.factory import announce_record_path, wake_sources
from adapters.liveness import PingLiveness
from adapters.liveness_stream import StreamLiveness
from adapters.poolconf import PoolConfRoleSource
from adapters.runner import Process, Runner
from adapters.state import FileOperatorStore
from adapters.tgt import CommandProcessHost, TgtAdapter
from adapters.vip import AnnounceRecord, CommandArp, IpVip
from adapters.vip.monitor import MonitoredVip
from adapters.wake import Wakeup
from reconciler import loop
from reconciler.agent import TickReport
from reconciler.alerts import alerts_for
from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import load_spec
from reconciler.executor import RetryPolicy
from tests.vm.machine import VIP, VmLab, wait_for

RESOURCE = "r0"
IQN = "iqn.2024-01.org.example.tandem:vmlab"
URL = f"iscsi://{VIP}:3260/{IQN}/1"
VIP_CIDR = f"{VIP}/24"
CLIENT_IP = "198.51.100.10"
NODES = ("node1", "node2")
TGT_DIR = "/run/tandem"
BLOCK = 64 * 1024  # client writes are 64 KiB blocks at distinct offsets

SPEC = """\
apiVersion: tandem/v1
kind: StorageCluster
metadata:
  name: vmlab
spec:
  nodes:
    - name: node1
      replicationAddress: 198.51.100.129
      managementAddress: 198.51.100.1
      poolConf: {pool1}
    - name: node2
      replicationAddress: 198.51.100.130
      managementAddress: 198.51.100.2
      poolConf: {pool2}
  roleSource:
    type: pool-master
  promotion:
    whenDisconnected: quorum
    heuristics: [{client}]   # the client VM: only a node that still reaches it has quorum
  resources:
    - name: {resource}
      minor: 0
      disk: /dev/vda
  vips:
    - address: {vip}
      interface: eth0
  target:
    driver: tgt
    iqn: {iqn}
    luns:
      - lun: 1
        resource: {resource}
        scsiId: tandem-r0
        scsiSn: TANDEMVM0001
    initiators: [ALL]
  timings:
    tickInterval: 1.0   # changes wake the agents (streams, inotify): the interval is a backstop
    commandTimeout: 10
  alerts:
    syslog: false
  adapters:
    drbd: drbd
    vip: iproute
    target: tgt
    roleSource: pool-conf
"""

DRBD_RES = """\
resource {name} {{
  device /dev/drbd{minor};
  disk {disk};
  meta-disk internal;
  net {{ protocol C; ping-int 1; ping-timeout 5; connect-int 1; timeout 5; }}
{hosts}
}}
"""


def vm_spec(directory: Path) -> tuple[Path, StorageCluster]:
    """Write the VM cluster's spec (and its pool.conf paths) under ``directory``."""
    text = SPEC.format(
        pool1=directory / "pool-node1.conf",
        pool2=directory / "pool-node2.conf",
        client=CLIENT_IP,
        resource=RESOURCE,
        vip=VIP_CIDR,
        iqn=IQN,
    )
    path = directory / "vmlab.yaml"
    path.write_text(text)
    return path, load_spec(text, filename=str(path))


def drbd_config(spec: StorageCluster) -> dict[str, str]:
    """The DRBD resource files (/etc/drbd.d/NAME.res) for the spec's resources."""
    out = {}
    for res in spec.spec.resources:
        hosts = "\n".join(
            f"  on {n.name} {{ address {n.replication_address}:{7789 + res.minor}; }}"
            for n in spec.spec.nodes
        )
        out[f"/etc/drbd.d/{res.name}.res"] = DRBD_RES.format(
            name=res.name, minor=res.minor, disk=res.disk, hosts=hosts
        )
    return out


def vm_adapters(
    spec: StorageCluster, node: str, runner: Runner, state_dir: Path, *, streams: bool = True
) -> NodeAdapters:
    """The real adapters of ``node`` on its VM runner (see the module docstring)."""
    timings = spec.spec.timings
    timeout = timings.command_timeout
    peer = spec.peer_of(node)
    peer_addresses = [str(a) for a in (peer.management_address, peer.replication_address) if a]
    heuristics = [str(h) for h in spec.spec.promotion.heuristics]
    role_source = PoolConfRoleSource(Path(spec.node(node).pool_conf))
    operator = FileOperatorStore(state_dir / f"operator-{node}.json")
    wakeup = Wakeup()
    record = AnnounceRecord(announce_record_path(state_dir, node))
    real_drbd = RealDrbd(runner)
    drbd: DrbdAdapter
    vip: VipAdapter
    liveness: LivenessAdapter
    if streams:
        drbd = EventFedDrbd(runner, real=real_drbd, wakeup=wakeup, resync=timings.resync)
        vip = MonitoredVip(
            runner,
            arp=CommandArp(runner),
            command_timeout=timeout,
            record=record,
            wakeup=wakeup,
            resync=timings.resync,
        )
        liveness = StreamLiveness(
            runner, peer_addresses=peer_addresses, heuristics=heuristics, wakeup=wakeup
        )
    else:
        drbd = real_drbd
        vip = IpVip(runner, arp=CommandArp(runner), command_timeout=timeout, record=record)
        liveness = PingLiveness(runner, peer_addresses=peer_addresses, heuristics=heuristics)
    return NodeAdapters(
        node=node,
        drbd=drbd,
        vip=vip,
        target=TgtAdapter(
            runner,
            control_dir=f"{TGT_DIR}/tgt-{node}",
            portal=spec.spec.vips[0].ip,
            host=CommandProcessHost(runner),
            resync=timings.resync,
            wakeup=wakeup,
        ),
        role_source=role_source,
        liveness=liveness,
        operator=operator,
        wake=wake_sources(role_source, operator, None),
        wakeup=wakeup,
        runner=runner,
    )


# ------------------------------------------------------------------------------ agents


class AgentLoop:
    """One node's agent ticking in a thread (``reconcile --watch`` in-process)."""

    def __init__(
        self,
        spec: StorageCluster,
        adapters: NodeAdapters,
        rebuild: Callable[[], NodeAdapters] | None = None,
    ) -> None:
        self.spec = spec
        self.adapters = adapters
        self.node = adapters.node
        self._rebuild = rebuild
        self._used = False  # the loop closes its adapters when it ends: a restart needs new ones
        self.reports: list[TickReport] = []
        self.alerts: list[Alert] = []
        self.crashes: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        if self._used and self._rebuild is not None:
            self.adapters = self._rebuild()  # as a restarted agent process builds its own
        self._used = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"agent-{self.node}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end after the current tick, without waiting (see ``stop``)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop after the current tick (a tick is never abandoned half-applied)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
            if self._thread.is_alive():
                raise RuntimeError(f"agent {self.node} did not stop")
        self._thread = None

    def _run(self) -> None:
        try:
            loop.run(
                self.spec,
                self.adapters,
                stop=self._stop,
                on_report=self._on_report,
                retry=RetryPolicy.from_spec(self.spec),
            )
        except Exception as exc:  # the loop must not raise; record it for the test to fail
            self.crashes.append(f"{type(exc).__name__}: {exc}")

    def _on_report(self, report: TickReport) -> None:
        with self._cond:
            self.reports.append(report)
            self.alerts.extend(alerts_for(report))
            self._cond.notify_all()

    @property
    def last(self) -> TickReport | None:
        with self._cond:
            return self.reports[-1] if self.reports else None

    def wait(
        self, predicate: Callable[[TickReport], bool], timeout: float, what: str
    ) -> TickReport:
        """The first report, from a tick that *started* after this call, that satisfies
        ``predicate``."""
        since = time.time()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for report in self.reports:
                    if report.started >= since and predicate(report):
                        return report
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.reports[-1].to_json() if self.reports else None
                    raise TimeoutError(
                        f"{self.node}: {what} not seen within {timeout:g}s; last report: {last}"
                    )
                self._cond.wait(min(left, 0.5))


def resource(report: TickReport) -> ResourceObs:
    return report.observed.resource(RESOURCE)


def serving(report: TickReport) -> bool:
    """Converged as the primary: Primary, VIP here, target running with the LUN."""
    obs = report.observed
    return (
        report.plan.converged
        and resource(report).role is Role.PRIMARY
        and all(v.local for v in obs.vips)
        and obs.target.running is True
        and 1 in obs.target.exported_luns
    )


def standing_by(report: TickReport) -> bool:
    """Converged as the secondary: Secondary, connected, UpToDate, no VIP, no target."""
    obs = report.observed
    res = resource(report)
    return (
        report.plan.converged
        and res.role is Role.SECONDARY
        and res.conn is ConnState.CONNECTED
        and res.disk is DiskState.UPTODATE
        and not any(v.local for v in obs.vips)
        and obs.target.running is False
    )


# ------------------------------------------------------------------------------ timings


@dataclass
class Timing:
    scenario: str
    agent: float | None = None
    floor: float | None = None
    note: str = ""

    def set(
        self, *, agent: float | None = None, floor: float | None = None, note: str = ""
    ) -> None:
        self.agent = self.agent if agent is None else agent
        self.floor = self.floor if floor is None else floor
        self.note = note or self.note

    @property
    def ratio(self) -> float | None:
        if self.agent is None or not self.floor:
            return None
        return self.agent / self.floor


@dataclass
class Timings:
    rows: list[Timing] = field(default_factory=list)
    boot: dict[str, float] = field(default_factory=dict)
    timelines: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, scenario: str) -> Timing:
        """The row of ``scenario`` (created on first use; scenarios fill agent and floor)."""
        for r in self.rows:
            if r.scenario == scenario:
                return r
        self.rows.append(Timing(scenario))
        return self.rows[-1]

    def render(self) -> str:
        lines = [
            f"{'scenario':44s} {'agent':>8s} {'floor':>8s} {'ratio':>6s}",
        ]
        for r in self.rows:
            agent = f"{r.agent:7.2f}s" if r.agent is not None else "       -"
            floor = f"{r.floor:7.2f}s" if r.floor is not None else "       -"
            ratio = f"{r.ratio:5.2f}x" if r.ratio is not None else "     -"
            lines.append(f"{r.scenario:44s} {agent} {floor} {ratio}  {r.note}".rstrip())
        if self.boot:
            lines.append("boot (TCG): " + ", ".join(f"{k} {v:.1f}s" for k, v in self.boot.items()))
        lines.extend(self.notes)
        for name, text in self.timelines.items():
            lines.append(f"agent ticks during {name} (start, node, tick length, actions):")
            lines.append(text)
        return "\n".join(lines)


TIMINGS = Timings()


# ------------------------------------------------------------------------------ the cluster


@dataclass
class ClientWrite:
    index: int
    pattern: int
    offset: int
    acked_at: float


class ClientWriter:
    """The client writing fresh 64 KiB blocks through the VIP, one after the other, until
    ``stop``; ``acked`` lists the writes the client saw acknowledged (a write in flight at
    ``stop`` may end either way; ``join`` waits for it)."""

    def __init__(self, cluster: VmCluster) -> None:
        self.cluster = cluster
        self.acked: list[ClientWrite] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="client-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            w = self.cluster.client_write()
            if w is not None:
                self.acked.append(w)

    def wait_acked(self, count: int, timeout: float = 60.0) -> None:
        wait_for(lambda: len(self.acked) >= count, timeout, f"{count} acknowledged writes")

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def timeline(agents: dict[str, AgentLoop], since: float, until: float) -> str:
    """The agents' ticks that ran during [since, until] (wall clock; a tick already running at
    ``since`` is included: it may read the new pool.conf mid-observation): when, how long, and
    the actions with their durations; blocked entries are abbreviated."""
    rows = []
    for node, agent in agents.items():
        for r in list(agent.reports):
            if r.started + r.seconds < since or r.started > until:
                continue
            steps = " ".join(
                f"{st.action.kind.value}={st.seconds:.2f}s" + ("" if st.ok else "(FAILED)")
                for st in (r.result.steps if r.result else ())
            )
            blocked = " ".join(f"[blocked {b.what}:{b.kind.value}]" for b in r.plan.blocked)
            parts = ",".join(
                f"{k}={v:.2f}" for k, v in sorted(r.observe_parts.items()) if v >= 0.01
            )
            head = f"  {r.started - since:+6.2f}s {node} {r.seconds:5.2f}s"
            look = f"observe={r.observe_seconds:.2f}s({parts})"
            rows.append((r.started, f"{head} {look} {steps or '-'} {blocked}".rstrip()))
    return "\n".join(text for _, text in sorted(rows))


class VmCluster:
    def __init__(self, lab: VmLab, directory: Path) -> None:
        self.lab = lab
        self.directory = directory
        self.state_dir = directory / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.spec_path, self.spec = vm_spec(directory)
        self.runners = {
            name: vm.runner(self.spec.spec.timings.command_timeout) for name, vm in lab.vms.items()
        }
        self.adapters = {
            n: vm_adapters(self.spec, n, self.runners[n], self.state_dir) for n in NODES
        }
        self.agents = {n: self._agent(n) for n in NODES}
        self.res = self.spec.spec.resources[0]
        self.writes: list[ClientWrite] = []
        self._next_block = 0
        self._floor_procs: list[Process] = []

    # ------------------------------------------------------------------ provisioning
    def provision(self, node: str, *, create_md: bool = False) -> None:
        """What an administrator sets up on a node: the DRBD resource configuration (the
        initramfs forgets it at every boot) and, once, the DRBD metadata."""
        for path, text in drbd_config(self.spec).items():
            self.lab[node].write_file(path, text)
        if create_md:
            self.lab[node].sh(f"drbdadm create-md --force {RESOURCE} 2>&1")

    def set_master(self, master: str) -> None:
        """Make ``master`` the XenServer pool master (what HA-Lizard writes to pool.conf)."""
        for n in NODES:
            address = self.spec.node(master).management_address
            text = "master\n" if n == master else f"slave:{address}\n"
            tmp = Path(self.spec.node(n).pool_conf + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.spec.node(n).pool_conf)

    def skip_initial_sync(self, node: str) -> None:
        """Blank disks on both sides: declare them in sync (DRBD's documented shortcut)."""
        self.runners[node].run(["drbdadm", "--", "--clear-bitmap", "new-current-uuid", RESOURCE])

    # ------------------------------------------------------------------ agents
    def fresh_agent(self, node: str) -> AgentLoop:
        """New adapters and a new agent for ``node`` (its agent process after a reboot)."""
        self.agents[node].stop()
        self.adapters[node] = vm_adapters(self.spec, node, self.runners[node], self.state_dir)
        self.agents[node] = self._agent(node)
        return self.agents[node]

    def _agent(self, node: str) -> AgentLoop:
        def rebuild() -> NodeAdapters:
            self.adapters[node] = vm_adapters(self.spec, node, self.runners[node], self.state_dir)
            return self.adapters[node]

        return AgentLoop(self.spec, self.adapters[node], rebuild)

    def start_agents(self, *nodes: str) -> None:
        for n in nodes or NODES:
            self.agents[n].start()

    def stop_agents(self, *nodes: str) -> None:
        for n in nodes or NODES:
            self.agents[n].stop()

    def stop_tgtds(self) -> None:
        """The agents leave their resident tgtd running (on both nodes): stop it, as a fresh
        boot has none. A failure leaves it for ``leftovers`` to find (a new lab then)."""
        for n in NODES:
            target = self.adapters[n].target
            if isinstance(target, TgtAdapter):
                with contextlib.suppress(Exception):
                    target.stop_daemon(self.spec.spec.target)

    @contextlib.contextmanager
    def agents_paused(self, *nodes: str) -> Iterator[None]:
        chosen = [n for n in (nodes or NODES) if self.agents[n].running]
        self.stop_agents(*chosen)
        try:
            yield
        finally:
            self.start_agents(*chosen)

    def wait_roles(self, primary: str, timeout: float = 60.0) -> None:
        """Both agents converged: ``primary`` serving, the other standing by."""
        secondary = next(n for n in NODES if n != primary)
        self.agents[primary].wait(serving, timeout, f"{primary} serving")
        self.agents[secondary].wait(standing_by, timeout, f"{secondary} standing by")

    def idle_cost(self, seconds: float) -> str:
        """The converged agents' ticks and process starts in their VMs over ``seconds`` (every
        command and stream the node's runner started; nothing else uses it meanwhile)."""
        before = {n: (self.runners[n].spawned, len(self.agents[n].reports)) for n in NODES}
        time.sleep(seconds)
        parts = []
        for n in NODES:
            spawned = self.runners[n].spawned - before[n][0]
            ticks = len(self.agents[n].reports) - before[n][1]
            per = f"{spawned / ticks:.2f}" if ticks else "-"
            parts.append(f"{n} {ticks} ticks, {spawned} process starts ({per} per tick)")
        return f"idle agents over {seconds:g}s: " + "; ".join(parts)

    # ------------------------------------------------------------------ observation
    def drbd(self, node: str) -> ResourceObs:
        """DRBD's state on ``node`` now (the adapter's own status command, parsed)."""
        res = self.runners[node].run(["drbdsetup", "status", "--verbose"], timeout=5)
        return parse_status_text(res.stdout).resources.get(RESOURCE) or ResourceObs.down(RESOURCE)

    def wait_drbd(
        self, node: str, check: Callable[[ResourceObs], bool], timeout: float, what: str
    ) -> float:
        return wait_for(lambda: check(self.drbd(node)), timeout, f"{node}: {what}")

    def disk_md5(self, node: str, offset: int, length: int = BLOCK) -> str:
        """md5 of a range of the node's backing disk (DRBD's internal metadata sits at the end,
        so offset 0 of /dev/vda is offset 0 of the DRBD device)."""
        script = (
            f"dd if={self.res.disk} bs={BLOCK} skip={offset // BLOCK} count={length // BLOCK} "
            "iflag=direct 2>/dev/null | md5sum"
        )
        return self.lab[node].sh(script).stdout.split()[0]

    # ------------------------------------------------------------------ client I/O
    def qemu_io(self, *commands: str, timeout: float = 10.0) -> bool:
        argv = ["qemu-io", "-f", "raw", URL]
        for c in commands:
            argv += ["-c", c]
        try:
            res = self.runners["client"].run(argv, check=False, timeout=timeout)
        except Exception:
            return False
        text = (res.stdout + res.stderr).lower()
        return res.rc == 0 and "fail" not in text and "error" not in text

    def new_block(self) -> tuple[int, int, int]:
        """A fresh (index, pattern byte, offset) for one client write."""
        i = self._next_block
        self._next_block += 1
        return i, (i % 250) + 1, (i + 16) * BLOCK

    def client_write(self) -> ClientWrite | None:
        """One 64 KiB write of a fresh pattern through the VIP; the ack is recorded."""
        i, pattern, offset = self.new_block()
        if not self.qemu_io(f"write -P {pattern:#x} {offset} {BLOCK}"):
            return None
        w = ClientWrite(i, pattern, offset, time.monotonic())
        self.writes.append(w)
        return w

    def client_verify(self, writes: Sequence[ClientWrite], timeout: float = 10.0) -> bool:
        cmds = [f"read -P {w.pattern:#x} {w.offset} {BLOCK}" for w in writes]
        return self.qemu_io(*cmds, timeout=timeout)

    def client_neighbour(self) -> str | None:
        """The MAC the client's ARP cache has for the VIP (None: no usable entry)."""
        res = self.runners["client"].run(["ip", "-j", "neigh", "show", VIP], check=False)
        for entry in json.loads(res.stdout or "[]") if res.ok else []:
            if entry.get("dst") == VIP and entry.get("lladdr"):
                return str(entry["lladdr"]).lower()
        return None

    def wait_client_read(self, write: ClientWrite, via: str, timeout: float = 60.0) -> float:
        """Seconds until a read through the VIP, served by node ``via`` (the client's ARP
        entry for the VIP is ``via``'s MAC), returns ``write``'s pattern."""
        mac = self.lab[via].spec.mac0.lower()

        def ok() -> bool:
            return self.client_neighbour() == mac and self.client_verify([write], 5.0)

        return wait_for(ok, timeout, f"client read via {via}", interval=0.02)

    def writer(self) -> ClientWriter:
        """Start writing fresh blocks one after the other through the VIP (see ClientWriter)."""
        return ClientWriter(self)

    # ------------------------------------------------------------------ hand-scripted floors
    def _cmd(self, node: str, *argv: str, env: dict[str, str] | None = None) -> None:
        self.runners[node].run(list(argv), env=env)

    def _tgt_env(self, node: str) -> dict[str, str]:
        return {"TGT_IPC_SOCKET": f"{TGT_DIR}/tgt-{node}/socket"}

    def promote_by_hand(self, node: str) -> None:
        """The adapters' promote -> add VIP -> announce -> define the target on the resident
        tgtd (started first only when none runs, e.g. after a boot) -> ACL -> export (LUN,
        IDs) commands."""
        lun = self.spec.spec.target.luns[0]
        env = self._tgt_env(node)
        adm = ("tgtadm", "--lld", "iscsi")
        self._cmd(node, "drbdadm", "primary", RESOURCE)
        self._cmd(node, "ip", "addr", "add", VIP_CIDR, "dev", "eth0")
        r = self.runners[node]
        self._floor_procs.append(r.spawn(["arping", "-U", "-c", "3", "-I", "eth0", VIP]))
        new = [*adm, "--mode", "target", "--op", "new", "--tid", "1", "-T", IQN]
        first = r.run(new, env=env, check=False)
        if first.rc == 107:  # no tgtd answers: start it; its first answer defines the target
            self._cmd(node, "mkdir", "-p", "-m", "0700", f"{TGT_DIR}/tgt-{node}")
            self._floor_procs.append(
                r.spawn(
                    ["tgtd", "-f", "--iscsi", f"portal={VIP}:3260"],
                    env=env,
                    log_path=f"{TGT_DIR}/tgt-{node}/tgtd.log",
                )
            )
            wait_for(
                lambda: r.run(new, env=env, check=False).ok, 5, "tgtd answering", interval=0.002
            )
        elif not first.ok:
            raise RuntimeError(f"{node}: tgtadm target new failed: {first.stderr.strip()}")
        self._cmd(
            node, *adm, "--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL", env=env
        )
        where = ("--tid", "1", "--lun", str(lun.lun))
        self._cmd(
            node,
            *adm,
            "--mode",
            "logicalunit",
            "--op",
            "new",
            *where,
            "-b",
            self.res.device,
            "--bsoflags",
            "direct",
            env=env,
        )
        self._cmd(
            node,
            *adm,
            "--mode",
            "logicalunit",
            "--op",
            "update",
            *where,
            "--params",
            f"scsi_id={lun.scsi_id},scsi_sn={lun.scsi_sn}",
            env=env,
        )

    def demote_by_hand(self, node: str) -> None:
        """The adapters' stop target (deleted with --force; tgtd stays resident) -> remove
        VIP -> demote commands."""
        env = self._tgt_env(node)
        delete = ["--mode", "target", "--op", "delete", "--force", "--tid", "1"]
        self._cmd(node, "tgtadm", "--lld", "iscsi", *delete, env=env)
        self._cmd(node, "ip", "addr", "del", VIP_CIDR, "dev", "eth0")
        self._cmd(node, "drbdadm", "secondary", RESOURCE)

    def stop_tgtd_by_hand(self, node: str) -> None:
        """Stop the node's tgtd (not part of any floor: cleaning up after one)."""
        r = self.runners[node]
        # tgtd exits at once; tgtadm itself then waits for it: do not wait for tgtadm
        self._floor_procs.append(
            r.spawn(["tgtadm", "--op", "delete", "--mode", "system"], env=self._tgt_env(node))
        )
        wait_for(
            lambda: not r.run(["pidof", "tgtd"], check=False).ok, 5, "tgtd gone", interval=0.005
        )

    def reap_floor_processes(self) -> None:
        for p in self._floor_procs:
            if p.poll() is None:
                with contextlib.suppress(Exception):
                    p.wait(5)
        self._floor_procs = [p for p in self._floor_procs if p.poll() is None]


def leftovers(lab: VmLab) -> list[str]:
    """What the lab's VMs hold that a fresh boot would not: a DRBD device, a tgtd or arping
    process, the VIP; a VM that is not running or does not answer. Empty when clean."""
    found = []
    script = "ls /sys/block; echo --; pidof tgtd arping; echo --; ip -o -4 addr show"
    for name, vm in lab.vms.items():
        if not vm.running:
            found.append(f"{name} is not running")
            continue
        try:
            out = vm.sh(script, timeout=10, check=False).stdout
            blocks, procs, addrs = out.split("--\n")
        except Exception as exc:  # a VM that cannot be checked is not clean
            found.append(f"{name} cannot be checked ({exc})")
            continue
        if any(b.startswith("drbd") for b in blocks.split()):
            found.append(f"{name} has a DRBD device")
        if procs.strip():
            found.append(f"{name} runs tgtd/arping ({procs.strip()})")
        if f" {VIP}/" in addrs:
            found.append(f"{name} holds the VIP")
    return found
