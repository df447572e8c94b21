"""Tier-1 lab: a shared L2 segment built from network namespaces, for real-tool tests.

Topology (all names carry ``prefix`` so parallel labs never meet)::

    {prefix}node1  eth0 02:00:00:00:00:01 198.51.100.1/24  --veth--+
    {prefix}node2  eth0 02:00:00:00:00:02 198.51.100.2/24  --veth--+-- br0 in {prefix}sw
    {prefix}client eth0 02:00:00:00:00:03 198.51.100.10/24 --veth--+   (no IP, no uplink)
    node1 repl0 198.51.100.129/30 <--direct veth--> node2 repl0 198.51.100.130/30

Invariants (the safety rules of this lab):

- Only 198.51.100.0/24 (TEST-NET-2) is used. ``up()`` refuses to start when the root namespace
  has any route more specific than the default that covers that range, when a root address sits
  in it, or when the range is directly reachable from the root namespace.
- The root namespace is only ever *read* (``ip -j route|link|addr``, ``ip netns list|pids``) or
  used to create/delete this lab's own namespaces: every other command goes through ``run()``,
  the single helper that enters a lab namespace (``ip netns exec NS ...``). ``_root()`` enforces
  that whitelist in code.
- No default route, no bridge or veth towards the root namespace, IPv6 off everywhere.
- ``down()`` is idempotent, works after a partial or failed ``up()``, deletes only namespaces this
  object created, kills (SIGKILL by PID) only processes that this lab spawned *and* that
  ``ip netns pids`` still lists inside a lab namespace, reaps them, and removes the lab's
  temporary directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.runner import CommandResult, Local, Netns, Runner

LAB_NET = ipaddress.IPv4Network("198.51.100.0/24")
VIP = "198.51.100.3/24"
VIP_IP = VIP.split("/", 1)[0]

KEYS = ("sw", "node1", "node2", "client")
HOST_KEYS = ("node1", "node2", "client")
MACS: Mapping[str, str] = {
    "node1": "02:00:00:00:00:01",
    "node2": "02:00:00:00:00:02",
    "client": "02:00:00:00:00:03",
}
ADDRS: Mapping[str, str] = {
    "node1": "198.51.100.1/24",
    "node2": "198.51.100.2/24",
    "client": "198.51.100.10/24",
}
REPL_ADDRS: Mapping[str, str] = {"node1": "198.51.100.129/30", "node2": "198.51.100.130/30"}

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}-$")
_IPV6_OFF = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


class LabError(RuntimeError):
    """The lab cannot (or must not) be brought up."""


@dataclass
class _TrackingRunner(Runner):
    """A ``Runner`` whose ``spawn`` reports every process to the lab that handed it out, so
    daemons started by adapters under test (tgtd) are cleaned up with the lab."""

    on_spawn: Callable[[subprocess.Popen[bytes]], None] | None = None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
        new_session: bool = True,
    ) -> subprocess.Popen[bytes]:
        proc = super().spawn(argv, env=env, log_path=log_path, new_session=new_session)
        # The lab's transports wrap argv (ip netns exec), so the handle is a local Popen.
        assert isinstance(proc, subprocess.Popen), proc
        if self.on_spawn is not None:
            self.on_spawn(proc)
        return proc


def lab_range_conflicts(
    routes: Iterable[Mapping[str, Any]],
    addrs: Iterable[Mapping[str, Any]],
    route_get: Sequence[Mapping[str, Any]] | None,
) -> list[str]:
    """Reasons why the root namespace is not safe for the lab (empty list: safe).

    ``routes``: ``ip -j route show table all``; ``addrs``: ``ip -j addr``; ``route_get``:
    ``ip -j route get 198.51.100.1`` or None when the kernel said unreachable. Pure function.
    """
    problems: list[str] = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst in ("", "default"):
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.prefixlen > 0 and net.overlaps(LAB_NET):
            table = route.get("table", "main")
            problems.append(f"root namespace route {dst} (table {table}) covers the lab range")
    for link in addrs:
        for info in link.get("addr_info", ()):
            if info.get("family") != "inet":
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.IPv4Address(str(info.get("local", ""))) in LAB_NET:
                    problems.append(
                        f"root namespace address {info.get('local')} on {link.get('ifname')} "
                        "is inside the lab range"
                    )
    for entry in route_get or ():
        if "gateway" not in entry and entry.get("type", "unicast") == "unicast":
            problems.append(
                f"198.51.100.1 is directly reachable from the root namespace via {entry.get('dev')}"
            )
    return problems


@dataclass
class Lab:
    """One namespace lab; see the module docstring for its topology and invariants."""

    prefix: str
    tmp_dir: Path | None = None
    timeout: float = 10.0
    created: list[str] = field(default_factory=list, init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    workdir: Path | None = field(default=None, init=False)
    _owns_workdir: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"lab prefix {self.prefix!r} must match {_PREFIX_RE.pattern}")
        self._root_runner = Runner(Local(), timeout=self.timeout)

    # ---------------------------------------------------------------- names and helpers
    def ns(self, key: str) -> str:
        """Namespace name of ``key`` (one of sw, node1, node2, client)."""
        if key not in KEYS:
            raise KeyError(f"unknown lab host {key!r} (known: {', '.join(KEYS)})")
        return f"{self.prefix}{key}"

    def mac(self, key: str) -> str:
        """The fixed MAC of ``key``'s eth0."""
        return MACS[key]

    def addr(self, key: str) -> str:
        """The IPv4 address (no prefix length) of ``key``'s eth0."""
        return ADDRS[key].split("/", 1)[0]

    def runner(self, key: str, *, env: Mapping[str, str] | None = None) -> Runner:
        """A ``Runner`` that runs everything inside ``key``'s namespace; processes it spawns
        are recorded for cleanup by ``down()``."""
        return _TrackingRunner(
            transport=Netns(self.ns(key)), timeout=self.timeout, env=env, on_spawn=self._track
        )

    def run(self, key: str, argv: Sequence[str], **kw: Any) -> CommandResult:
        """THE helper for lab commands: runs ``argv`` inside ``key``'s namespace."""
        return self.runner(key).run(argv, **kw)

    def spawn(
        self,
        key: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_name: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside ``key``'s namespace; ``down()`` kills it."""
        log_path = str(self.path(log_name)) if log_name else None
        proc = self.runner(key).spawn(argv, env=env, log_path=log_path)
        assert isinstance(proc, subprocess.Popen), proc  # see _TrackingRunner.spawn
        return proc

    def path(self, name: str) -> Path:
        """A path inside the lab's temporary directory (removed by ``down()``)."""
        if self.workdir is None:
            raise LabError("the lab is not up")
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        return self.workdir / name

    def neigh(self, key: str, ip: str) -> str | None:
        """The MAC ``key`` currently has for ``ip`` in its ARP cache, or None (absent,
        INCOMPLETE or FAILED entries have no lladdr)."""
        out = self.run(key, ["ip", "-j", "neigh", "show", ip]).stdout
        for entry in json.loads(out or "[]"):
            lladdr = entry.get("lladdr")
            if entry.get("dst") == ip and lladdr:
                return str(lladdr)
        return None

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        self.procs.append(proc)

    def _root(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        """The only way this module touches the root namespace: reads, or creating/deleting
        this lab's own namespaces."""
        allowed = (
            tuple(argv[:3]) in {("ip", "netns", "add"), ("ip", "netns", "delete")}
            and argv[3].startswith(self.prefix)
        ) or tuple(argv[:3]) in {
            ("ip", "netns", "pids"),
            ("ip", "-j", "netns"),
            ("ip", "-j", "route"),
            ("ip", "-j", "link"),
            ("ip", "-j", "addr"),
        }
        if not allowed:
            raise LabError(f"refusing to run {argv!r} in the root namespace")
        return self._root_runner.run(argv, check=check)

    def existing_namespaces(self) -> set[str]:
        out = self._root(["ip", "-j", "netns", "list"]).stdout
        return {str(item["name"]) for item in json.loads(out or "[]")}

    # ---------------------------------------------------------------- lifecycle
    def check_root_namespace(self) -> None:
        """Raise ``LabError`` when the root namespace overlaps the lab range (module doc)."""
        routes = json.loads(self._root(["ip", "-j", "route", "show", "table", "all"]).stdout)
        addrs = json.loads(self._root(["ip", "-j", "addr", "show"]).stdout)
        got = self._root(["ip", "-j", "route", "get", "198.51.100.1"], check=False)
        route_get = json.loads(got.stdout) if got.ok and got.stdout.strip() else None
        problems = lab_range_conflicts(routes, addrs, route_get)
        if problems:
            raise LabError("refusing to start the lab: " + "; ".join(problems))

    def up(self) -> Lab:
        """Build the lab. On any failure everything created so far is removed again."""
        if self.created:
            return self
        try:
            self.check_root_namespace()
            wanted = [self.ns(k) for k in KEYS]
            clash = sorted(set(wanted) & self.existing_namespaces())
            if clash:
                raise LabError(f"namespace(s) already exist: {', '.join(clash)}")
            self._make_workdir()
            for name in wanted:
                self._root(["ip", "netns", "add", name])
                self.created.append(name)
            self._configure()
        except BaseException as exc:
            try:
                self.down()
            except Exception as cleanup:  # keep the original error, mention the cleanup's
                exc.add_note(f"cleanup after the failed up() also failed: {cleanup}")
            raise
        return self

    def _make_workdir(self) -> None:
        if self.tmp_dir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}lab"))
        else:
            self.workdir = Path(self.tmp_dir) / f"{self.prefix}lab"
            self.workdir.mkdir(parents=True, exist_ok=False)
        self._owns_workdir = True

    def _configure(self) -> None:
        """Sysctls first (IPv6 off before any interface appears), then one ``ip -batch`` per
        namespace: the switch creates the veth pairs, node1 the replication pair."""
        for key in KEYS:
            extra = ("net.ipv4.ip_nonlocal_bind=1",) if key in ("node1", "node2") else ()
            self.run(key, ["sysctl", "-qw", *_IPV6_OFF, *extra])
        sw = [
            "link set lo up",
            "link add br0 type bridge stp_state 0 forward_delay 0",
            "link set br0 up",
        ]
        for i, key in enumerate(HOST_KEYS, start=1):
            sw.append(f"link add p{i} type veth peer name eth0 netns {self.ns(key)}")
            sw.append(f"link set p{i} master br0 up")
        self._batch("sw", sw)
        for key in HOST_KEYS:
            cmds = [
                "link set lo up",
                f"link set eth0 address {MACS[key]}",
                f"addr add {ADDRS[key]} dev eth0",
                "link set eth0 up",
            ]
            if key == "node1":
                cmds += [
                    f"link add repl0 type veth peer name repl0 netns {self.ns('node2')}",
                    f"addr add {REPL_ADDRS['node1']} dev repl0",
                    "link set repl0 up",
                ]
            if key == "node2":
                cmds += [f"addr add {REPL_ADDRS['node2']} dev repl0", "link set repl0 up"]
            self._batch(key, cmds)

    def _batch(self, key: str, commands: Sequence[str]) -> None:
        self.run(key, ["ip", "-batch", "-"], stdin="\n".join(commands) + "\n")

    def down(self, *, keep_files: bool = False) -> None:
        """Tear everything down (idempotent; safe after a partial ``up()``)."""
        errors: list[str] = []
        pids_by_ns: dict[str, set[int]] = {}
        for name in self.created:
            got = self._root(["ip", "netns", "pids", name], check=False)
            pids_by_ns[name] = {int(p) for p in got.stdout.split() if p.isdigit()}
        inside = set().union(*pids_by_ns.values()) if pids_by_ns else set()
        for proc in self.procs:
            if proc.poll() is None and proc.pid in inside:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                errors.append(f"pid {proc.pid} did not exit")
        ours = {p.pid for p in self.procs}
        self.procs = [p for p in self.procs if p.returncode is None]
        for name, pids in pids_by_ns.items():
            for pid in sorted(pids - ours):
                warnings.warn(
                    f"pid {pid} ({_comm(pid)}) is still inside {name} and was not started by "
                    "this lab; left alone",
                    RuntimeWarning,
                    stacklevel=2,
                )
        for name in reversed(list(self.created)):
            got = self._root(["ip", "netns", "delete", name], check=False)
            if got.ok or name not in self.existing_namespaces():
                self.created.remove(name)
            else:
                errors.append(f"ip netns delete {name}: {got.stderr.strip()}")
        if self.workdir is not None and self._owns_workdir and not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._owns_workdir = False
        if errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took (monotonic clock)."""
    started = time.monotonic()
    fn()
    return time.monotonic() - started
