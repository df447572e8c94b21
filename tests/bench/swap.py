#!/usr/bin/env python3
"""Swap benchmark: the longest client I/O gap of a planned swap, agents vs. a hand-scripted floor.

Run as root on a machine with the lab packages (see docs/testing.md)::

    python tests/bench/swap.py [--rounds 6] [--interval 0.05] [--json results.json]

What it does, in one namespace lab (tests/lab/netns.py; 198.51.100.0/24 only):

1. A client in the ``client`` namespace reads 4 KiB blocks through the VIP continuously (one
   read every ``--period`` seconds) and verifies every byte against the pattern written to the
   backing file beforehand. It is a minimal iSCSI initiator (below, stdlib only) that keeps one
   session and, when it breaks, reconnects at once (20 ms connect timeout, 2 ms between tries),
   so the gap it sees is the servers' gap, not an initiator's reconnect back-off (libiscsi
   retries about once a second, open-iscsi after its NOP/replacement timeouts).
2. Floor: the same real commands the agents would run, issued directly in sequence with no
   agent and no observation in between, by a small script inside each node's namespace
   (``swap.py node``; the agents run there too) through the product's ``Runner``: on the old
   primary tgtd offline, force-delete the target, SIGKILL tgtd, ``ip addr del``, demote
   (simulated DRBD); on the new one promote, ``ip addr add``, gratuitous ARP (the VIP
   adapter's in-process sender), start tgtd whose first request defines the target (repeated
   until tgtd answers), bind ALL, export the LUN (``--bsoflags direct``), set its SCSI ID/SN.
3. Agents: two ``reconcile --watch --interval I`` processes (one per node namespace); the
   script only rewrites the two pool.conf files, as HA-Lizard does when it moves the master.

For each round the gap is the longest interval between two consecutive verified reads around
the swap. The script prints both series, their medians and worst cases, the ratio, and a
breakdown of the agents' swaps from their ``--json`` tick reports.

Not a test: pytest does not collect it, and nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BLOCK = 4096
SPAN = 1 << 20  # the client reads 4 KiB blocks cycling over the first MiB
PATTERN = 0x5A
INITIATOR = "iqn.2024-01.test.lab:bench-reader"

# ===================================================================== a minimal iSCSI reader
# RFC 7143: 48-byte basic header segments; no digests, no AHS sent; reads only.
OP_SCSI_CMD = 0x01
OP_LOGIN_REQ = 0x03
OP_SCSI_RSP = 0x21
OP_LOGIN_RSP = 0x23
OP_DATA_IN = 0x25


class IscsiError(Exception):
    """The session is unusable (closed, refused, protocol error): reconnect."""


class ScsiCheck(Exception):
    """The command failed but the session is fine (e.g. the UNIT ATTENTION every new I_T
    nexus gets first, or a LUN not exported yet): retry on the same session."""


def _sense(payload: bytes) -> str:
    if len(payload) < 2 + 14:
        return "no sense data"
    sense = payload[2:]
    return f"sense key {sense[2] & 0x0F:#x} asc {sense[12]:#04x} ascq {sense[13]:#04x}"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise IscsiError("connection closed by the target")
        buf += chunk
    return bytes(buf)


def _recv_pdu(sock: socket.socket) -> tuple[bytes, bytes]:
    bhs = _recv_exact(sock, 48)
    ahs_len = bhs[4] * 4
    dlen = int.from_bytes(bhs[5:8], "big")
    rest = _recv_exact(sock, ahs_len + ((dlen + 3) & ~3))
    return bhs, rest[ahs_len : ahs_len + dlen]


def _keys(**pairs: str) -> bytes:
    return b"".join(f"{k.replace('_', '')}={v}".encode() + b"\0" for k, v in pairs.items())


class Session:
    """One iSCSI session with one connection: login (security, then operational stage) and
    READ(10) commands."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.itt = 0
        self.cmd_sn = 1
        self.exp_stat_sn = 0

    @classmethod
    def open(cls, portal: str, iqn: str, *, connect_timeout: float, io_timeout: float) -> Session:
        sock = socket.create_connection((portal, 3260), timeout=connect_timeout)
        sock.settimeout(io_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = cls(sock)
        try:
            session._login(iqn)
        except BaseException:
            sock.close()
            raise
        return session

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _login(self, iqn: str) -> None:
        isid = b"\x80" + os.urandom(5)
        stages = [
            (0, 1, _keys(InitiatorName=INITIATOR, TargetName=iqn, SessionType="Normal",
                         AuthMethod="None")),
            (1, 3, _keys(HeaderDigest="None", DataDigest="None",
                         MaxRecvDataSegmentLength="262144", MaxBurstLength="262144",
                         FirstBurstLength="65536", DefaultTime2Wait="0",
                         DefaultTime2Retain="0", InitialR2T="Yes", ImmediateData="No",
                         MaxOutstandingR2T="1", MaxConnections="1", DataPDUInOrder="Yes",
                         DataSequenceInOrder="Yes", ErrorRecoveryLevel="0")),
        ]  # fmt: skip
        tsih = 0
        for csg, nsg, data in stages:
            for _ in range(4):  # the target may ask for another exchange (T bit clear)
                flags = 0x80 | (csg << 2) | nsg
                bhs = struct.pack(
                    ">BBBBB3s6sHIHHII16x",
                    0x40 | OP_LOGIN_REQ,
                    flags,
                    0,
                    0,
                    0,
                    len(data).to_bytes(3, "big"),
                    isid,
                    tsih,
                    self.itt,
                    0,
                    0,
                    self.cmd_sn,
                    self.exp_stat_sn,
                )
                self.sock.sendall(bhs + data + b"\0" * (-len(data) % 4))
                rsp, _ = _recv_pdu(self.sock)
                if rsp[0] & 0x3F != OP_LOGIN_RSP:
                    raise IscsiError(f"unexpected opcode {rsp[0]:#x} during login")
                if rsp[36] != 0:
                    raise IscsiError(f"login refused: class {rsp[36]} detail {rsp[37]}")
                tsih = int.from_bytes(rsp[14:16], "big")
                self.exp_stat_sn = int.from_bytes(rsp[24:28], "big") + 1
                self.cmd_sn = int.from_bytes(rsp[28:32], "big")
                data = b""
                if rsp[1] & 0x80 and rsp[1] & 0x03 == nsg:
                    break
            else:
                raise IscsiError("login did not progress")

    def read(self, lun: int, lba: int, blocks: int, block_size: int = 512) -> bytes:
        self.itt = (self.itt + 1) & 0x7FFFFFFF
        length = blocks * block_size
        cdb = struct.pack(">BBIBHB6x", 0x28, 0, lba, 0, blocks, 0)
        lun_field = bytes([0, lun, 0, 0, 0, 0, 0, 0])
        bhs = struct.pack(
            ">BBH B3s 8s I I I I 16s",
            OP_SCSI_CMD,
            0xC1,  # Final, Read, simple task attribute
            0,
            0,
            b"\0\0\0",
            lun_field,
            self.itt,
            length,
            self.cmd_sn,
            self.exp_stat_sn,
            cdb,
        )
        self.sock.sendall(bhs)
        self.cmd_sn += 1
        data = bytearray(length)
        while True:
            rsp, payload = _recv_pdu(self.sock)
            op = rsp[0] & 0x3F
            if op == OP_DATA_IN:
                offset = int.from_bytes(rsp[40:44], "big")
                data[offset : offset + len(payload)] = payload
                if rsp[1] & 0x01:  # status carried in the final Data-In
                    self.exp_stat_sn = int.from_bytes(rsp[24:28], "big") + 1
                    if rsp[3] != 0:
                        raise ScsiCheck(f"SCSI status {rsp[3]:#x}")
                    return bytes(data)
            elif op == OP_SCSI_RSP:
                self.exp_stat_sn = int.from_bytes(rsp[24:28], "big") + 1
                if rsp[2] != 0:
                    raise IscsiError(f"iSCSI response {rsp[2]:#x}")
                if rsp[3] != 0:
                    raise ScsiCheck(f"SCSI status {rsp[3]:#x}, {_sense(payload)}")
                return bytes(data)
            else:
                raise IscsiError(f"unexpected opcode {op:#x}")


def reader_main(args: argparse.Namespace) -> int:
    """Read forever; one line per event in ``--out``: ``<monotonic> ok`` or
    ``<monotonic> fail <why>`` (failures rate-limited to one per 10 ms)."""
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    expected = bytes([PATTERN]) * BLOCK
    blocks = BLOCK // 512
    session: Session | None = None
    offset = 0
    last_fail = 0.0
    with open(args.out, "w", buffering=1) as out:
        while not stop:
            try:
                if session is None:
                    session = Session.open(
                        args.portal, args.iqn, connect_timeout=0.02, io_timeout=0.5
                    )
                data = session.read(args.lun, offset // 512, blocks)
                now = time.monotonic()
                if data != expected:
                    out.write(f"{now:.6f} mismatch at {offset}\n")
                else:
                    out.write(f"{now:.6f} ok\n")
                offset = (offset + BLOCK) % SPAN
                time.sleep(args.period)
            except (OSError, IscsiError, ScsiCheck) as exc:
                if session is not None and not isinstance(exc, ScsiCheck):
                    session.close()
                    session = None
                now = time.monotonic()
                if now - last_fail > 0.01:
                    out.write(f"{now:.6f} fail {type(exc).__name__}: {exc}\n")
                    last_fail = now
                time.sleep(0.002)
    if session is not None:
        session.close()
    return 0


# ======================================================================= the benchmark driver
def _load_reads(path: Path) -> tuple[list[float], list[str]]:
    ok: list[float] = []
    bad: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) >= 2 and parts[1] == "ok":
                ok.append(float(parts[0]))
            elif len(parts) >= 2 and parts[1] == "mismatch":
                bad.append(line)
    return ok, bad


def longest_gap(reads: list[float], start: float, end: float) -> tuple[float, float, float]:
    """The longest interval between consecutive reads that overlaps [start, end]:
    (seconds, gap start, gap end)."""
    best = (0.0, start, start)
    prev = None
    for t in reads:
        if prev is not None and t >= start and prev <= end and t - prev > best[0]:
            best = (t - prev, prev, t)
        prev = t
    return best


class Bench:
    def __init__(self, lab: Any, files: Any, period: float) -> None:
        self.lab = lab
        self.files = files
        self.reads_path = lab.path("reads.txt")
        self.period = period
        self.reader: Any = None

    # ------------------------------------------------------------ client
    def start_reader(self) -> None:
        from tests.lab.netns import VIP_IP
        from tests.lab.specs import IQN, LUN

        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "reader",
            "--portal",
            VIP_IP,
            "--iqn",
            IQN,
            "--lun",
            str(LUN),
            "--period",
            f"{self.period:g}",
            "--out",
            str(self.reads_path),
        ]
        self.reader = self.lab.spawn("client", argv, log_name="reader.log")

    def stop_reader(self) -> None:
        if self.reader is not None and self.reader.poll() is None:
            self.reader.send_signal(signal.SIGTERM)
            self.reader.wait(timeout=5)

    def reads(self) -> list[float]:
        return _load_reads(self.reads_path)[0]

    def wait_reads_flow(self, after: float, *, count: int = 20, timeout: float = 10.0) -> None:
        """Wait until ``count`` verified reads completed after ``after`` (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for t in self.reads()[-count - 5 :] if t > after) >= count:
                return
            time.sleep(0.02)
        raise RuntimeError(f"client reads did not resume within {timeout:g}s")

    # ------------------------------------------------------------ hand-scripted steps


# ============================================================== the hand-scripted floor
FLOOR_STEPS = {
    "stop": ("tgtd offline", "target delete --force", "SIGKILL tgtd + wait", "ip addr del VIP",
             "demote (sim)"),
    "start": ("promote (sim)", "ip addr add VIP", "gratuitous ARP (in-process)",
              "start tgtd + target new", "bind ALL", "logicalunit new",
              "logicalunit update ids"),
}  # fmt: skip


class NodeScript:
    """The floor's commands for one node, run *inside* the node's namespace (``swap.py node``)
    through the product's ``Runner`` with the local transport, exactly as an agent on the node
    issues them, and the VIP adapter's in-process gratuitous ARP. Orders arrive over a unix
    socket: ``start`` (promote, add VIP, GARP, tgtd, target, LUN, ACL: the agent's
    promote/add-vip/announce-vip/start-target/export-lun), ``stop`` (offline, force-delete,
    SIGKILL tgtd, del VIP, demote: stop-target/remove-vip/demote), ``reset``; each reply lists
    the steps' durations. No observation happens in between: this is the floor."""

    def __init__(self, spec_path: str, node: str, netns: str) -> None:
        from adapters.factory import world_store
        from adapters.runner import Local, Runner
        from adapters.vip import InProcessArp
        from reconciler.core.specload import load_spec

        self.spec = load_spec(Path(spec_path).read_text(), filename=spec_path)
        self.node = node
        state_dir = Path(spec_path).parent / "state"
        control = state_dir / f"floor-tgt-{node}"
        control.mkdir(parents=True, exist_ok=True)
        self.env = {"TGT_IPC_SOCKET": str(control / "socket")}
        self.log = str(control / "tgtd.log")
        self.runner = Runner(Local(), timeout=5.0)
        self.arp = InProcessArp(netns=netns)
        self.arp.check_netns()
        self.world = world_store(self.spec, state_dir)
        self.tgtd: Any = None
        s = self.spec.spec
        self.vip = s.vips[0]
        self.target = s.target
        self.lun = s.target.luns[0]
        self.device = s.resources[0].device

    def adm(self, *args: str, check: bool = True) -> None:
        self.runner.run(["tgtadm", *args], env=self.env, check=check)

    def iscsi(self, mode: str, op: str, *args: str, check: bool = True) -> None:
        self.adm("--lld", "iscsi", "--mode", mode, "--op", op, *args, check=check)

    def drbd(self, *, primary: bool) -> None:
        resource = self.spec.spec.resources[0].name
        with self.world.transaction() as world:
            if primary:
                world.drbd_primary(self.node, resource)
            else:
                world.drbd_secondary(self.node, resource)

    def start_tgtd_and_define(self) -> None:
        """Start tgtd; its first request (target new) is repeated until it answers, as the
        adapter does."""
        portal = f"portal={self.vip.ip}:3260"
        self.tgtd = self.runner.spawn(["tgtd", "-f", "--iscsi", portal], env=self.env,
                                      log_path=self.log)  # fmt: skip
        new = ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "new",
               "--tid", str(self.target.tid), "-T", self.target.iqn]  # fmt: skip
        deadline = time.monotonic() + 5
        while not self.runner.run(new, env=self.env, check=False).ok:
            if self.tgtd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tgtd did not start")
            time.sleep(0.002)

    def kill_tgtd(self) -> None:
        if self.tgtd is not None:
            self.tgtd.kill()
            self.tgtd.wait(timeout=5)
            self.tgtd = None

    def steps(self, op: str) -> list[Any]:
        vip, dev = str(self.vip.address), self.vip.interface
        lun = ("--tid", str(self.target.tid), "--lun", str(self.lun.lun))
        ids = f"scsi_id={self.lun.scsi_id},scsi_sn={self.lun.scsi_sn}"
        offline = ("--mode", "sys", "--op", "update", "--name", "State", "-v", "offline")
        tid = str(self.target.tid)
        if op == "stop":
            return [
                lambda: self.adm(*offline),
                # refused while a command is in flight: the SIGKILL below ends it anyway
                lambda: self.iscsi("target", "delete", "--force", "--tid", tid, check=False),
                self.kill_tgtd,
                lambda: self.runner.run(["ip", "addr", "del", vip, "dev", dev]),
                lambda: self.drbd(primary=False),
            ]
        return [
            lambda: self.drbd(primary=True),
            lambda: self.runner.run(["ip", "addr", "add", vip, "dev", dev]),
            lambda: self.arp.announce(dev, self.vip.ip),
            self.start_tgtd_and_define,
            lambda: self.iscsi("target", "bind", "--tid", tid, "-I", "ALL"),
            lambda: self.iscsi("logicalunit", "new", *lun, "-b", self.device,
                               "--bsoflags", "direct"),
            lambda: self.iscsi("logicalunit", "update", *lun, "--params", ids),
        ]  # fmt: skip

    def run(self, op: str) -> list[tuple[str, float]]:
        if op == "reset":
            self.kill_tgtd()
            vip = str(self.vip.address)
            self.runner.run(["ip", "addr", "del", vip, "dev", self.vip.interface], check=False)
            self.drbd(primary=False)
            return []
        out = []
        for name, fn in zip(FLOOR_STEPS[op], self.steps(op), strict=True):
            t = time.monotonic()
            fn()
            out.append((name, time.monotonic() - t))
        return out


def node_main(args: argparse.Namespace) -> int:
    script = NodeScript(args.spec, args.node, args.netns)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    listener.listen(1)
    conn, _ = listener.accept()
    listener.close()
    try:
        with conn, conn.makefile("rwb") as fh:
            for line in fh:
                try:
                    reply: dict[str, Any] = {"steps": script.run(json.loads(line)["op"])}
                except Exception as exc:
                    reply = {"error": repr(exc)}
                fh.write(json.dumps(reply).encode() + b"\n")
                fh.flush()
    finally:
        script.kill_tgtd()
        script.arp.drain(2.0)
    return 0


class NodeClient:
    """The driver's handle on one ``NodeScript`` (started with ``lab.spawn``)."""

    def __init__(self, lab: Any, files: Any, node: str) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="tdmnode")
        path = os.path.join(self.dir, "sock")
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "node",
            "--spec",
            str(files.spec_path),
            "--node",
            node,
            "--netns",
            lab.ns(node),
            "--socket",
            path,
        ]
        self.proc = lab.spawn(node, argv, env={"PYTHONPATH": str(REPO)},
                              log_name=f"floor-{node}.log")  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"floor script on {node} did not start") from None
                time.sleep(0.02)
        self.fh = self.sock.makefile("rwb")

    def call(self, op: str) -> list[tuple[str, float]]:
        self.fh.write(json.dumps({"op": op}).encode() + b"\n")
        self.fh.flush()
        reply = json.loads(self.fh.readline())
        if "error" in reply:
            raise RuntimeError(f"floor {op}: {reply['error']}")
        return [(name, secs) for name, secs in reply["steps"]]

    def close(self) -> None:
        import shutil

        with contextlib.suppress(OSError):
            self.fh.close()
            self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_floor(bench: Bench, rounds: int) -> list[dict[str, Any]]:
    scripts = {n: NodeClient(bench.lab, bench.files, n) for n in ("node1", "node2")}
    results = []
    try:
        scripts["node1"].call("start")
        bench.wait_reads_flow(time.monotonic())
        for i in range(rounds):
            old, new = ("node1", "node2") if i % 2 == 0 else ("node2", "node1")
            time.sleep(0.3)
            t0 = time.monotonic()
            steps = scripts[old].call("stop")
            steps += scripts[new].call("start")
            t1 = time.monotonic()
            bench.wait_reads_flow(t1)
            gap, g0, g1 = longest_gap(bench.reads(), t0 - 0.05, t1 + 0.5)
            results.append(
                {
                    "from": old,
                    "to": new,
                    "gap_ms": gap * 1e3,
                    "script_ms": (t1 - t0) * 1e3,
                    "gap_start_ms": (g0 - t0) * 1e3,
                    "gap_end_ms": (g1 - t0) * 1e3,
                    "steps_ms": [(name, round(secs * 1e3, 2)) for name, secs in steps],
                }
            )
    finally:
        for script in scripts.values():
            with contextlib.suppress(Exception):
                script.call("reset")
            script.close()
    return results


class Tail(threading.Thread):
    """Follows an agent's log and stamps each ``--json`` tick report with the wall-clock time
    it appeared. A report is printed right after its tick's actions, so ``arrival - seconds``
    is when the tick began (the reports carry no time of their own)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name=f"tail-{path.name}")
        self.path = path
        self.reports: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.path.exists() and not self.stopping.is_set():
            time.sleep(0.001)
        with open(self.path, "rb") as fh:
            pending = b""
            while not self.stopping.is_set():
                chunk = fh.read()
                if not chunk:
                    time.sleep(0.001)
                    continue
                now = time.time()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"{"):
                        with contextlib.suppress(ValueError):
                            report = json.loads(line)
                            report["started"] = now - report["seconds"]
                            self.reports.append(report)

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def run_agents(bench: Bench, rounds: int, interval: float) -> list[dict[str, Any]]:
    from tests.lab.agents import AgentCluster

    agents = AgentCluster(bench.lab, bench.files, interval=interval)
    tails = {n: Tail(bench.lab.path(agents.log_name(n))) for n in ("node1", "node2")}
    for tail in tails.values():
        tail.start()
    results = []
    try:
        bench.files.set_master("node1")
        agents.start("node1")
        agents.start("node2")
        agents.wait_serving("node1", timeout=20)
        bench.wait_reads_flow(time.monotonic())
        for i in range(rounds):
            old, new = ("node1", "node2") if i % 2 == 0 else ("node2", "node1")
            time.sleep(0.3)
            wall0, t0 = time.time(), time.monotonic()
            bench.files.set_master(new)
            # Watch the new primary's tick reports (in memory), not the nodes: polling the
            # nodes with commands would load the CPU the agents need during the swap.
            deadline = t0 + 20
            while not any(
                r["started"] >= wall0 and any(a["kind"] == "export-lun" for a in r["applied"])
                for r in list(tails[new].reports)
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{new} did not take over: {agents.tails()}")
                time.sleep(0.005)
            t1 = time.monotonic()
            bench.wait_reads_flow(t1)
            agents.wait_serving(new, timeout=10, strict=False)  # and nothing else serves
            gap, g0, g1 = longest_gap(bench.reads(), t0, t1 + 0.5)
            results.append(
                {
                    "from": old,
                    "to": new,
                    "gap_ms": gap * 1e3,
                    "gap_start_ms": (g0 - t0) * 1e3,
                    "gap_end_ms": (g1 - t0) * 1e3,
                    "breakdown": breakdown(tails, old, new, wall0, g0 - t0, g1 - t0),
                }
            )
        results.append({"idle_tick_ms": idle_ticks(tails)})
    finally:
        for tail in tails.values():
            tail.finish()
        agents.close()
    return results


def breakdown(
    tails: dict[str, Tail], old: str, new: str, wall0: float, gap0: float, gap1: float
) -> dict[str, Any]:
    """Where the milliseconds of one agent swap went, from the agents' tick reports (times
    relative to the pool.conf change)."""

    def acting(node: str, kind: str) -> dict[str, Any] | None:
        for r in list(tails[node].reports):
            if r["started"] >= wall0 - 0.2 and any(a["kind"] == kind for a in r["applied"]):
                return r
        return None

    def ticks_between(node: str, t0: float, t1: float) -> list[dict[str, Any]]:
        return [r for r in list(tails[node].reports) if t0 <= r["started"] <= t1]

    down = acting(old, "demote")
    up = acting(new, "export-lun")
    out: dict[str, Any] = {}
    if down is None or up is None:
        return {"note": "the acting ticks were not found in the agents' reports"}
    out["old_tick_start_ms"] = (down["started"] - wall0) * 1e3
    out["old_tick_ms"] = down["seconds"] * 1e3
    out["old_tick_applied"] = [a["kind"] for a in down["applied"]]
    out["errors"] = down["errors"] + up["errors"]
    old_end = down["started"] + down["seconds"]
    out["new_wait_after_demote_ms"] = (up["started"] - old_end) * 1e3
    out["new_tick_ms"] = up["seconds"] * 1e3
    out["new_tick_steps"] = {
        "observe": up.get("observe_ms", 0.0),
        **{st["kind"]: st["ms"] for st in up.get("steps", [])},
    }
    out["old_tick_steps"] = {
        "observe": down.get("observe_ms", 0.0),
        **{st["kind"]: st["ms"] for st in down.get("steps", [])},
    }
    out["new_tick_end_ms"] = (up["started"] + up["seconds"] - wall0) * 1e3
    between = ticks_between(new, wall0, up["started"] - 1e-6)
    out["new_ticks_before"] = [
        {
            "at_ms": round((r["started"] - wall0) * 1e3, 1),
            "ms": round(r["seconds"] * 1e3, 1),
            "applied": [a["kind"] for a in r["applied"]],
            "blocked": [b["what"] for b in r["blocked"]],
        }
        for r in between
    ]
    out["client_gap_ms"] = [round(gap0 * 1e3, 1), round(gap1 * 1e3, 1)]
    return out


def idle_ticks(tails: dict[str, Tail]) -> dict[str, float]:
    """Median duration of converged ticks (observe + plan only) per role."""
    out: dict[str, list[float]] = {}
    for node in ("node1", "node2"):
        for r in list(tails[node].reports):
            if not r["actions"] and not r["blocked"]:
                key = f"{r['desired_role']}".lower()
                out.setdefault(key, []).append(r["seconds"] * 1e3)
    return {k: round(statistics.median(v), 1) for k, v in out.items() if v}


def summarise(floor: list[dict[str, Any]], agent: list[dict[str, Any]]) -> dict[str, Any]:
    f = [r["gap_ms"] for r in floor]
    a = [r["gap_ms"] for r in agent if "gap_ms" in r]
    return {
        "floor_ms": {"median": statistics.median(f), "max": max(f), "all": f},
        "agent_ms": {"median": statistics.median(a), "max": max(a), "all": a},
        "ratio_median": statistics.median(a) / statistics.median(f),
        "ratio_max": max(a) / max(f),
    }


def driver_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from tests.lab.conftest import _base36, lab_unavailable
    from tests.lab.netns import Lab
    from tests.lab.specs import LabCluster

    reason = lab_unavailable()
    if reason:
        print(f"cannot run the swap benchmark: {reason}", file=sys.stderr)
        return 2
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tdmbench"))
    lab = Lab(f"b{_base36(os.getpid())}-")
    bench: Bench | None = None
    try:
        lab.up()
        files = LabCluster.create(root)
        with open(files.device, "r+b") as fh:
            fh.write(bytes([PATTERN]) * SPAN)
            fh.flush()
            os.fsync(fh.fileno())
        bench = Bench(lab, files, args.period)
        bench.start_reader()
        floor = run_floor(bench, args.rounds)
        agent = run_agents(bench, args.rounds, args.interval)
        bench.stop_reader()
        _, mismatches = _load_reads(bench.reads_path)
        report = {
            "interval_s": args.interval,
            "read_period_s": args.period,
            "floor": floor,
            "agents": agent,
            "summary": summarise(floor, agent),
            "mismatches": mismatches[:5],
            "reads": len(bench.reads()),
        }
        print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return 0 if not mismatches else 1
    finally:
        if bench is not None:
            with contextlib.suppress(Exception):
                bench.stop_reader()
        lab.down(keep_files=args.keep)
        shutil.rmtree(root, ignore_errors=True)


def print_report(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(f"reads verified: {report['reads']}; pattern mismatches: {len(report['mismatches'])}")
    print(f"\nhand-scripted floor ({len(report['floor'])} swaps): gap ms", end=" ")
    print(", ".join(f"{x:.1f}" for x in s["floor_ms"]["all"]))
    for name, ms in report["floor"][0]["steps_ms"]:
        print(f"    {name:<26} {ms:7.2f} ms")
    print(f"agents, --interval {report['interval_s']:g} s: gap ms", end=" ")
    print(", ".join(f"{x:.1f}" for x in s["agent_ms"]["all"]))
    for r in report["agents"]:
        if "breakdown" in r:
            b = r["breakdown"]
            if "old_tick_start_ms" not in b:
                continue
            print(
                f"    {r['from']}->{r['to']}: gap {r['gap_ms']:.1f} ms "
                f"[{b['client_gap_ms'][0]:.0f}..{b['client_gap_ms'][1]:.0f}]; old tick at "
                f"{b['old_tick_start_ms']:.0f} took {b['old_tick_ms']:.0f}; new agent waited "
                f"{b['new_wait_after_demote_ms']:.0f}, its tick took {b['new_tick_ms']:.0f} "
                f"(ends {b['new_tick_end_ms']:.0f}); earlier new ticks: "
                + "; ".join(
                    f"@{t['at_ms']:.0f} {t['ms']:.0f}ms {'+'.join(t['applied']) or '-'}"
                    + (f" blocked {'+'.join(t['blocked'])}" if t["blocked"] else "")
                    for t in b["new_ticks_before"]
                )
            )
            for side in ("old", "new"):
                steps = ", ".join(f"{k} {v:.0f}" for k, v in b[f"{side}_tick_steps"].items())
                print(f"        {side} tick ms: {steps}")
        elif "idle_tick_ms" in r:
            print(f"    converged tick (observe + plan), median ms: {r['idle_tick_ms']}")
    print(
        f"\nlongest gap, median: agents {s['agent_ms']['median']:.1f} ms, floor "
        f"{s['floor_ms']['median']:.1f} ms, ratio {s['ratio_median']:.2f}"
    )
    print(
        f"longest gap, worst:  agents {s['agent_ms']['max']:.1f} ms, floor "
        f"{s['floor_ms']['max']:.1f} ms, ratio {s['ratio_max']:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    rd = sub.add_parser("reader", help="(internal) the client, run inside the client namespace")
    rd.add_argument("--portal", required=True)
    rd.add_argument("--iqn", required=True)
    rd.add_argument("--lun", type=int, default=1)
    rd.add_argument("--period", type=float, default=0.002)
    rd.add_argument("--out", required=True)
    nd = sub.add_parser("node", help="(internal) the floor's script, run inside a node namespace")
    nd.add_argument("--spec", required=True)
    nd.add_argument("--node", required=True)
    nd.add_argument("--netns", required=True)
    nd.add_argument("--socket", required=True)
    parser.add_argument("--rounds", type=int, default=6, help="swaps per series (default 6)")
    parser.add_argument("--interval", type=float, default=0.05, help="agent tick interval")
    parser.add_argument("--period", type=float, default=0.002, help="client read period")
    parser.add_argument("--json", help="also write the full results here")
    parser.add_argument("--keep", action="store_true", help="keep the lab's files (logs)")
    args = parser.parse_args(argv)
    if args.cmd == "reader":
        return reader_main(args)
    if args.cmd == "node":
        sys.path.insert(0, str(REPO))
        return node_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
