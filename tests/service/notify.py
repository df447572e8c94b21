"""A NOTIFY_SOCKET listener for tests: what systemd's manager would receive."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Datagram:
    at: float  # time.monotonic() when it arrived
    fields: dict[str, str]


@dataclass
class NotifyListener:
    """Binds an AF_UNIX datagram socket (a path, or ``@name`` abstract) and records what
    arrives, in a thread, until closed."""

    address: str
    received: list[Datagram] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        self.sock.bind(bind)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def at_path(cls, directory: Path) -> NotifyListener:
        return cls(str(directory / "notify.sock"))

    @classmethod
    def abstract(cls) -> NotifyListener:
        return cls(f"@tandem-test-{os.getpid()}-{time.monotonic_ns()}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.received.append(Datagram(time.monotonic(), fields))

    def snapshot(self) -> list[Datagram]:
        with self._lock:
            return list(self.received)

    def wait_for(self, key: str, *, after: float = 0.0, timeout: float = 20.0) -> Datagram:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.snapshot():
                if d.at > after and key in d.fields:
                    return d
            time.sleep(0.02)
        raise AssertionError(f"no {key} within {timeout}s; got {self.snapshot()[-5:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)
