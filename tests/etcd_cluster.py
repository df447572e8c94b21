"""A real 3-member etcd on loopback for the tests (Debian ``etcd-server``), and node-side
proxies that cut one node from it.

- ``EtcdCluster.start(base)``: three ``etcd`` processes, children of the test, on free
  loopback ports, logs under ``base``, data directories in a temporary directory on
  ``/dev/shm`` when there is one (else under ``base``), removed in ``close``; short
  heartbeat/election timings so a lost member or leader is noticed in well under a second
  (leases of 1 s are allowed then). Stopped
  by PID (SIGKILL, then ``wait``) in ``close``, which always runs (the fixture's ``finally``).
- ``stop(i)`` / ``start(i)``: one member down and back with its data (the same ``--name``
  and peer URLs, ``--initial-cluster-state existing``).
- ``NodeLink``: what a node sees of etcd: one TCP proxy per member on its own loopback port;
  ``cut()`` is a network partition for that node only (open connections are dropped, new ones
  are accepted and never answered, so the client times out as across a real partition),
  ``heal()`` undoes it. Why proxies and not namespaces: the contract suite runs without root;
  the namespace lab (tests/lab) puts members in namespaces and cuts links for real.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.waiting import wait_for

ETCD = shutil.which("etcd")
SKIP_REASON = (
    "etcd is not installed here (Debian package etcd-server: apt-get install etcd-server); "
    "the real-etcd half of the witness tests needs it"
)
HEARTBEAT_MS = 50
ELECTION_MS = 500


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EtcdCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        # The members' data in memory where there is a tmpfs: each write is an fsync, and on
        # a loaded disk that is what a lease refresh would wait for.
        shm = Path("/dev/shm")
        use_shm = shm.is_dir() and os.access(shm, os.W_OK)
        self.data = Path(tempfile.mkdtemp(prefix="tandem-etcd-", dir=shm if use_shm else base))
        self.size = size
        self.names = [f"m{i + 1}" for i in range(size)]
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.token = f"tandem-{os.getpid()}-{id(self):x}"

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.client_ports]

    def _argv(self, i: int, state: str) -> list[str]:
        assert ETCD is not None
        initial = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        return [
            ETCD,
            "--name", self.names[i],
            "--data-dir", str(self.data / self.names[i]),
            "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
            "--initial-cluster", initial,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--log-level", "error",
            "--logger", "zap",
        ]  # fmt: skip

    def _spawn(self, i: int, state: str) -> None:
        log = open(self.base / f"{self.names[i]}.log", "ab")  # noqa: SIM115 (the child's)
        try:
            self.procs[i] = subprocess.Popen(
                self._argv(i, state), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()

    @classmethod
    def start(cls, base: Path, size: int = 3) -> EtcdCluster:
        cluster = cls(base, size)
        try:
            for i in range(size):
                cluster._spawn(i, "new")
            cluster.wait_healthy()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def healthy(self, i: int) -> bool:
        """Member ``i`` answers a linearizable read (it is part of a majority with a leader)."""
        try:
            r = requests.post(
                f"{self.endpoints[i]}/v3/kv/range", json={"key": "aGVhbHRo"}, timeout=0.5
            )
        except requests.RequestException:
            return False
        return r.status_code == 200 and "header" in r.json()

    def wait_healthy(self, members: list[int] | None = None, timeout: float = 30.0) -> None:
        which = members if members is not None else [i for i, p in enumerate(self.procs) if p]
        for i in which:
            wait_for(f"etcd member {self.names[i]} healthy", self._health_of(i),
                     timeout=timeout, interval=0.05)  # fmt: skip

    def _health_of(self, i: int) -> Callable[[], bool]:
        return lambda: self.healthy(i)

    def stop(self, i: int) -> None:
        proc = self.procs[i]
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.procs[i] = None

    def start_member(self, i: int) -> None:
        if self.procs[i] is None:
            self._spawn(i, "existing")

    def close(self) -> None:
        for i in range(self.size):
            self.stop(i)
        shutil.rmtree(self.data, ignore_errors=True)

    def link(self) -> NodeLink:
        """A node's own path to the members (proxies it can be cut from)."""
        return NodeLink(self.client_ports)


class _Proxy:
    """One listening port forwarding to one member; ``cut`` swallows traffic."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port: int = self.server.getsockname()[1]
        self.cut = False
        self.closed = False
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True, name="etcd-proxy")
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
                if self.cut:
                    continue  # accepted, never answered: a partition, not a refusal
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                upstream.settimeout(None)
            except OSError:
                conn.close()  # the member is down: refused, as its own port would be
                continue
            for s in (conn, upstream):  # no Nagle: small HTTP requests pass at once
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.conns.append(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.cut:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def drop_all(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.drop_all()


class NodeLink:
    def __init__(self, member_ports: list[int]) -> None:
        self.proxies = [_Proxy(p) for p in member_ports]

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p.port}" for p in self.proxies]

    def cut(self) -> None:
        for p in self.proxies:
            p.cut = True
            p.drop_all()

    def heal(self) -> None:
        for p in self.proxies:
            p.cut = False
            p.drop_all()  # the swallowed connections time out on the client side anyway

    def close(self) -> None:
        for p in self.proxies:
            p.close()


@contextlib.contextmanager
def etcd_cluster(base: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster.start(base)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One real 3-member etcd for the session (tests use their own key prefixes and give
    back every member they stopped); skipped, with the package to install, without etcd."""
    if ETCD is None:
        pytest.skip(SKIP_REASON)
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster
