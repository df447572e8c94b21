"""The agent's read-only HTTP endpoint (``--metrics-address HOST:PORT``).

Two paths, GET/HEAD only:
- ``/metrics``: the Prometheus text exposition of ``reconciler.metrics.Metrics``;
- ``/status``: this node's status record, the JSON ``reconcile status --json`` prints (the
  file the agent writes each tick, read afresh per request; 503 before the first tick).
Nothing secret is in either (no spec secrets, no credentials); the operator chooses the bind
address (a management address, not 0.0.0.0: docs/operations.md says why).

Invariants: one ``ThreadingHTTPServer`` on a daemon thread; a request never blocks a tick (it
reads the registry and a file); ``close()`` stops the serving thread and closes the socket,
and the agent calls it on its way out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from reconciler.agent import TickReport
from reconciler.core.spec import StorageCluster
from reconciler.metrics import Metrics
from reconciler.record import BadRecord, read_status

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}"


def parse_address(text: str) -> Address:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6); raises ``ValueError`` with what is wrong."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", text) or re.fullmatch(
        r"([^:\[\]]+):(\d+)", text
    )
    if m is None:
        raise ValueError(f"{text!r} is not HOST:PORT (IPv6: [ADDRESS]:PORT)")
    host, port_text = m.group(1), m.group(2)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    return Address(host, port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.server.metrics(), body)
        elif path == "/status":
            code, payload = self.server.status()
            data = (json.dumps(payload, sort_keys=True) + "\n").encode()
            self._send(code, "application/json", data, body)
        else:
            self._send(
                404, "text/plain; charset=utf-8", b"not found: try /metrics, /status\n", body
            )

    def _send(self, code: int, ctype: str, data: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s must not fill the agent's log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Callable[[], bytes]
    status: Callable[[], tuple[int, Any]]


class _Server6(_Server):
    address_family = socket.AF_INET6


def status_payload(state_dir: Path, node: str) -> tuple[int, Any]:
    """The HTTP code and JSON of ``/status``: 200 and the raw record; 503 and an error when
    there is none yet or it is unreadable."""
    record, raw = read_status(state_dir, node)
    if record is None:
        return 503, {"node": node, "error": "no status record yet (the agent has not ticked)"}
    if isinstance(record, BadRecord):
        return 503, {"node": node, "error": f"status record unreadable: {record.problem}"}
    return 200, raw


class StatusServer:
    """``/metrics`` and ``/status`` on ``address``, served from a daemon thread."""

    def __init__(
        self,
        address: Address,
        *,
        metrics: Callable[[], bytes],
        status: Callable[[], tuple[int, Any]],
    ) -> None:
        # Raises OSError when the address is busy or not local: the caller reports it.
        kind = _Server6 if ":" in address.host else _Server
        self._server = kind((address.host, address.port), _Handler)
        self._server.metrics = metrics
        self._server.status = status
        host, port = self._server.server_address[:2]
        self.address = Address(str(host), int(port))
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="status-http", daemon=True)

    def _serve(self) -> None:
        """Like ``serve_forever`` without its 0.5 s poll (twice a second per idle agent):
        block on the listening socket and a pipe ``close`` writes to."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                # The one request step of serve_forever (accept, then a handler thread).
                self._server._handle_request_noblock()  # type: ignore[attr-defined]

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join(timeout=5)
        self._server.server_close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Endpoint:
    """What ``--watch --metrics-address`` adds to the agent: the metrics observer (call it with
    each tick's report) and the server; ``Endpoint.off()`` when no address was given."""

    def __init__(self, metrics: Metrics | None, server: StatusServer | None) -> None:
        self.metrics = metrics
        self.server = server

    @classmethod
    def off(cls) -> Endpoint:
        return cls(None, None)

    @classmethod
    def open(cls, spec: StorageCluster, node: str, state_dir: Path, address: Address) -> Endpoint:
        """Bind and start serving; raises ``OSError`` when the address cannot be bound."""
        metrics = Metrics(spec, node)
        server = StatusServer(
            address, metrics=metrics.render, status=lambda: status_payload(state_dir, node)
        )
        return cls(metrics, server.start())

    def __call__(self, report: TickReport) -> None:
        if self.metrics is not None:
            self.metrics(report)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
