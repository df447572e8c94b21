"""Tier 2 lab: three qemu/TCG VMs (node1, node2, client) on a shared L2 segment, plus a
dedicated replication link between the nodes, each VM controlled through its command agent.

Topology (addresses in 198.51.100.0/24, TEST-NET-2; nothing of it exists on the host)::

    node1  eth0 52:54:00:00:01:01 198.51.100.1/24    --+
    node2  eth0 52:54:00:00:01:02 198.51.100.2/24    --+-- "lan" switch (MAC learning)
    client eth0 52:54:00:00:01:0a 198.51.100.10/24   --+
    node1  eth1 52:54:00:00:02:01 198.51.100.129/30  <-- "repl" link (can be cut) -->
    node2  eth1 52:54:00:00:02:02 198.51.100.130/30

Invariants:

- Links are qemu ``-netdev dgram`` over unix datagram sockets in the lab directory; the
  switches are threads of this process forwarding Ethernet frames between those sockets. The
  host has no interface, address or route in the lab range: a frame can only reach another VM.
- Each VM's agent is reached through ``tests.vm.vmconsole.VmConsole`` on the unix socket of a
  virtio-serial port (``<dir>/<name>.agent``); ``Vm.runner()`` is the command seam for it.
- qemu runs with PR_SET_PDEATHSIG=SIGKILL (it dies with the thread that started it: start VMs
  from the main thread) and is killed and reaped by ``Vm.kill``/``VmLab.down``. ``down`` is
  idempotent, works after a failed ``up``, and removes the lab directory unless asked to keep
  it (the fixture keeps it when a test failed, for the console logs).
- A VM's disk (a sparse raw file) survives ``kill`` + ``start``: a crash loses nothing the guest
  had written (``cache=unsafe`` only skips host flushes; the host itself does not crash).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from adapters.runner import CommandResult, Runner
from tests.vm.image import Image
from tests.vm.vmconsole import VmConsole

QEMU = "qemu-system-x86_64"
LAN_PREFIX = 24
VIP = "198.51.100.3"


@dataclass(frozen=True)
class VmSpec:
    name: str
    eth0: str  # ADDR/PREFIX on the shared segment
    mac0: str
    eth1: str | None = None  # ADDR/PREFIX on the replication link
    mac1: str | None = None
    disk_mb: int = 0  # 0: no disk

    @property
    def ip(self) -> str:
        return self.eth0.split("/", 1)[0]

    @property
    def repl_ip(self) -> str | None:
        return self.eth1.split("/", 1)[0] if self.eth1 else None


LAB_VMS: tuple[VmSpec, ...] = (
    VmSpec(
        "node1",
        "198.51.100.1/24",
        "52:54:00:00:01:01",
        "198.51.100.129/30",
        "52:54:00:00:02:01",
        disk_mb=64,
    ),
    VmSpec(
        "node2",
        "198.51.100.2/24",
        "52:54:00:00:01:02",
        "198.51.100.130/30",
        "52:54:00:00:02:02",
        disk_mb=64,
    ),
    VmSpec("client", "198.51.100.10/24", "52:54:00:00:01:0a"),
)


class VmError(RuntimeError):
    """A VM did not start, did not come up, or died."""


# ------------------------------------------------------------------------------ switch


class Switch:
    """A MAC-learning Ethernet switch between qemu ``-netdev dgram`` unix sockets.

    ``ports`` are the VMs' local socket paths; frames arrive on ``path``. ``cut()`` drops every
    frame until ``mend()`` (a link failure as DRBD sees it: no RST, no carrier change)."""

    def __init__(self, path: str, ports: Iterable[str], name: str = "switch") -> None:
        self.path = path
        self.name = name
        self.ports = list(ports)
        self.fdb: dict[bytes, str] = {}
        self.frames = 0
        self.dropped = 0
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, name=f"switch-{name}", daemon=True)
        self._thread.start()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def cut(self) -> None:
        self._up.clear()

    def mend(self) -> None:
        self._up.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set() or len(data) < 14:
                self.dropped += 1
                continue
            self.frames += 1
            if not isinstance(src, str) or not src:
                continue
            self.fdb[data[6:12]] = src
            dst = None if data[0] & 1 else self.fdb.get(data[0:6])
            for port in [dst] if dst else [p for p in self.ports if p != src]:
                # a VM that is not running (yet) loses the frame, like on a real wire
                with contextlib.suppress(OSError):
                    self._sock.sendto(data, port)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._thread.join(timeout=2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# ------------------------------------------------------------------------------ VMs

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Vm:
    spec: VmSpec
    image: Image
    directory: Path
    lan: str  # the lan switch socket
    repl: str | None  # the replication link's socket
    memory_mb: int = 192
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    console: VmConsole = field(init=False)
    started_at: float = field(default=0.0, init=False)
    boots: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.console = VmConsole(str(self.agent_socket), label=self.name)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def agent_socket(self) -> Path:
        return self.directory / f"{self.name}.agent"

    @property
    def disk(self) -> Path:
        return self.directory / f"{self.name}.img"

    @property
    def console_log(self) -> Path:
        return self.directory / f"{self.name}.console"

    def port(self, nic: int) -> str:
        return str(self.directory / f"{self.name}-eth{nic}.sock")

    def command(self) -> list[str]:
        s = self.spec
        # no_timer_check: under TCG on a starved host the kernel's boot-time timer IRQ check
        # can fail ("IO-APIC + timer doesn't work!", a panic seen here at load average ~7).
        append = (
            "console=ttyS0 quiet panic=-1 ipv6.disable=1 no_timer_check "
            f"tandem.name={s.name} tandem.eth0={s.eth0}"
            + (f" tandem.eth1={s.eth1}" if s.eth1 else "")
        )
        argv = [
            QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-M", "q35,accel=tcg", "-cpu", "max", "-m", str(self.memory_mb), "-smp", "1",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", append,
            "-serial", f"file:{self.console_log}",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={self.agent_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=tandem.agent",
            "-netdev", f"dgram,id=n0,local.type=unix,local.path={self.port(0)},"
                       f"remote.type=unix,remote.path={self.lan}",
            "-device", f"virtio-net-pci,netdev=n0,mac={s.mac0}",
        ]  # fmt: skip
        if s.eth1 and self.repl:
            argv += [
                "-netdev", f"dgram,id=n1,local.type=unix,local.path={self.port(1)},"
                           f"remote.type=unix,remote.path={self.repl}",
                "-device", f"virtio-net-pci,netdev=n1,mac={s.mac1}",
            ]  # fmt: skip
        if s.disk_mb:
            argv += ["-drive", f"file={self.disk},if=virtio,format=raw,cache=unsafe"]
        return argv

    def start(self, *, fresh_disk: bool = False) -> None:
        """Start qemu (the disk is kept unless ``fresh_disk``); returns at once."""
        if self.proc is not None and self.proc.poll() is None:
            raise VmError(f"{self.name} is already running")
        if self.spec.disk_mb and (fresh_disk or not self.disk.exists()):
            with open(self.disk, "wb") as fh:
                fh.truncate(self.spec.disk_mb << 20)
        for stale in (self.agent_socket, Path(self.port(0)), Path(self.port(1))):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self.console.close()
        log = open(self.directory / f"{self.name}.qemu.log", "ab")  # noqa: SIM115
        try:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # prctl only: safe between fork and exec
            )
        finally:
            log.close()
        self.boots += 1

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until the agent answers; returns seconds since ``start``."""
        deadline = self.started_at + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise VmError(f"{self.name}: qemu exited ({code}): {self.log_tail()}")
            if self.agent_socket.exists() and self.console.ping(0.3):
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise VmError(f"{self.name}: agent not ready after {timeout:g}s: {self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL qemu (a crash: nothing in the guest gets to react) and reap it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        self.console.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def runner(self, timeout: float = 10.0) -> Runner:
        return Runner(transport=self.console, timeout=timeout)

    def run(self, argv: list[str], **kw: object) -> CommandResult:
        return self.runner().run(argv, **kw)  # type: ignore[arg-type]

    def sh(self, script: str, *, timeout: float = 30.0, check: bool = True) -> CommandResult:
        """A shell script in the VM (for provisioning and the hand-scripted floors)."""
        return self.runner().run(["sh", "-c", script], timeout=timeout, check=check)

    def write_file(self, path: str, text: str) -> None:
        self.runner().run(["sh", "-c", 'cat > "$0"', path], stdin=text)

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for p in (self.directory / f"{self.name}.qemu.log", self.console_log):
            with contextlib.suppress(OSError):
                text = p.read_text(errors="replace").strip().splitlines()[-lines:]
                if text:
                    parts.append(f"[{p.name}] " + " | ".join(text))
        return " ".join(parts) or "(no output)"


# ------------------------------------------------------------------------------ the lab


@dataclass
class VmLab:
    image: Image
    memory_mb: int = 192
    directory: Path | None = None
    vms: dict[str, Vm] = field(default_factory=dict, init=False)
    lan: Switch | None = field(default=None, init=False)
    repl: Switch | None = field(default=None, init=False)
    boot_seconds: dict[str, float] = field(default_factory=dict, init=False)
    _owns_dir: bool = field(default=False, init=False)

    def __getitem__(self, name: str) -> Vm:
        return self.vms[name]

    def up(self, specs: Iterable[VmSpec] = LAB_VMS) -> VmLab:
        """Boot every VM in parallel and wait for their agents; cleans up on failure."""
        try:
            if self.directory is None:
                # short: unix socket paths are limited to 108 bytes
                self.directory = Path(tempfile.mkdtemp(prefix="tvm-", dir="/tmp"))
                self._owns_dir = True
            d = self.directory
            specs = list(specs)
            for s in specs:
                self.vms[s.name] = Vm(
                    s, self.image, d, str(d / "lan.sock"), str(d / "repl.sock"), self.memory_mb
                )
            self.lan = Switch(str(d / "lan.sock"), [v.port(0) for v in self.vms.values()], "lan")
            self.repl = Switch(
                str(d / "repl.sock"),
                [v.port(1) for v in self.vms.values() if v.spec.eth1],
                "repl",
            )
            started = time.monotonic()
            for vm in self.vms.values():
                vm.start(fresh_disk=True)
            with ThreadPoolExecutor(len(self.vms)) as pool:
                waits = {name: pool.submit(vm.wait_ready) for name, vm in self.vms.items()}
                for name, fut in waits.items():
                    self.boot_seconds[name] = fut.result()
            self.boot_seconds["all"] = time.monotonic() - started
        except BaseException as exc:
            try:
                self.down(keep_files=True)
            except Exception as cleanup:
                exc.add_note(f"cleanup after the failed up() also failed: {cleanup}")
            raise
        return self

    def restart(self, name: str, timeout: float = 120.0) -> float:
        """Start a stopped VM again (same disk); returns its boot time."""
        vm = self.vms[name]
        vm.start()
        seconds = vm.wait_ready(timeout)
        self.boot_seconds[f"{name} (restart {vm.boots - 1})"] = seconds
        return seconds

    def down(self, *, keep_files: bool = False) -> None:
        """Kill every VM, stop the switches, remove the directory (idempotent)."""
        errors = []
        for vm in self.vms.values():
            try:
                vm.kill()
            except Exception as exc:
                errors.append(f"{vm.name}: {exc}")
        for sw in (self.lan, self.repl):
            if sw is not None:
                sw.close()
        self.lan = self.repl = None
        if self.directory is not None and self._owns_dir and not keep_files:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        if errors:
            raise VmError("lab teardown incomplete: " + "; ".join(errors))

    def log_tails(self) -> str:
        return "\n".join(f"{n}: {vm.log_tail()}" for n, vm in self.vms.items())


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.05
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took (raises TimeoutError)."""
    started = time.monotonic()
    last: Exception | None = None
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception as exc:  # a failing probe is "not yet"
            last = exc
        else:
            last = None
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not reached within {timeout:g}s (last error: {last})")
        time.sleep(interval)


def qemu_unavailable() -> str | None:
    """Why VMs cannot run here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is missing (apt-get install qemu-system-x86)"
    return None


__all__ = [
    "LAB_VMS",
    "VIP",
    "Switch",
    "Vm",
    "VmError",
    "VmLab",
    "VmSpec",
    "qemu_unavailable",
    "wait_for",
]


def main() -> int:
    """``python -m tests.vm.machine``: boot the lab and keep it up until Ctrl-C (or SIGTERM),
    for poking at it by hand with ``python -m tests.vm.vmconsole <dir>/<vm>.agent -- CMD``."""
    from tests.vm.image import build_image

    lab = VmLab(build_image(log=True))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        lab.up()
        for vm in lab.vms.values():
            vm.console.close()  # leave the sockets free for the command line client
        print(f"lab up in {lab.boot_seconds['all']:.1f}s: {lab.directory}", flush=True)
        for vm in lab.vms.values():
            print(f"  python -m tests.vm.vmconsole {vm.agent_socket} -- CMD...", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
