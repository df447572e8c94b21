"""etcd's v3 HTTP gateway through ``etcd3gw``, with one time budget per call and failover
between the cluster's client URLs.

Invariants:

- Every ``call`` is bounded by ``timeout`` seconds in total (``witness.retryTimeout``): the
  endpoints are tried in turn, the one that answered last first, each attempt with an equal
  share of what is left of the budget, so one member that hangs (cut off, paused) cannot eat
  the whole budget and a majority behind the other members still answers.
- An answer is either a value, ``EtcdRefused`` (etcd answered and said no: a definite answer,
  not retried on another member), ``EtcdUnavailable`` (no member answered in time: the
  witness is unreachable) or ``EtcdGarbage`` (something answered, but not in etcd's shape:
  unknown, never read as a value). Nothing else leaves ``call``.
- Reads are linearizable (etcd3gw's default ``serializable=False``): a member that lost its
  majority cannot answer them, so an answer means a majority was reachable.
- ``https://`` endpoints verify the server with ``ca_file`` (or the system's CA store); client
  certificates are passed by path (``cert_file``/``key_file``); no secret is ever logged.
- ``close`` closes the HTTP sessions (idempotent; a later call opens new ones); building a
  gateway opens nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client

T = TypeVar("T")

# A single attempt gets at least this long: below it a healthy member on a loaded host times
# out although it would have answered.
MIN_ATTEMPT = 0.05


class EtcdError(Exception):
    """Base of what ``EtcdGateway.call`` raises."""


class EtcdUnavailable(EtcdError):
    """No member answered within the budget (connection refused, timed out, no leader)."""


class EtcdGarbage(EtcdError):
    """A member answered with something that is not an etcd v3 gateway answer."""


class EtcdRefused(EtcdError):
    """etcd answered and refused (a 4xx answer, e.g. a lease it does not know)."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    protocol: str
    host: str
    port: int


def parse_endpoint(url: str) -> Endpoint:
    """``http://HOST:PORT`` or ``https://HOST:PORT`` (port 2379 when left out); ValueError
    for anything else (a path, credentials in the URL, another scheme)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint {url!r}: use http:// or https://")
    if parts.username or parts.password:
        raise ValueError(f"etcd endpoint {url!r}: no credentials in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"etcd endpoint {url!r}: only scheme, host and port")
    if not parts.hostname:
        raise ValueError(f"etcd endpoint {url!r}: no host")
    port = parts.port or 2379
    return Endpoint(url=url, protocol=parts.scheme, host=parts.hostname, port=port)


class EtcdGateway:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("the witness needs at least one etcd endpoint")
        self.endpoints = tuple(parse_endpoint(u) for u in endpoints)
        self.timeout = timeout
        self._ca_file = ca_file
        self._cert = (cert_file, key_file) if cert_file and key_file else None
        self._clock = clock
        self._clients: dict[int, Etcd3Client] = {}
        self._first = 0  # the endpoint that answered last
        self._lock = threading.Lock()

    def describe(self) -> str:
        return ", ".join(e.url for e in self.endpoints)

    def _client(self, index: int) -> Etcd3Client:
        client = self._clients.get(index)
        if client is None:
            e = self.endpoints[index]
            session = requests.Session()
            if self._ca_file:
                session.verify = self._ca_file
            if self._cert:
                session.cert = self._cert
            # api_path fixed: etcd >= 3.4 serves /v3/ (a discovery request per client would
            # spend part of the first call's budget).
            client = Etcd3Client(
                host=e.host, port=e.port, protocol=e.protocol, api_path="/v3/", session=session
            )
            self._clients[index] = client
        return client

    def call(self, what: str, operation: Callable[[Etcd3Client], T]) -> T:
        """``operation(client)`` against the first member that answers within the budget."""
        with self._lock:
            deadline = self._clock() + self.timeout
            count = len(self.endpoints)
            order = [(self._first + i) % count for i in range(count)]
            problems: list[str] = []
            garbage = False
            for tried, index in enumerate(order):
                left = deadline - self._clock()
                if left <= 0:
                    problems.append(f"{self.endpoints[index].url}: no time left")
                    continue
                client = self._client(index)
                client.timeout = max(MIN_ATTEMPT, left / (count - tried))
                url = self.endpoints[index].url
                try:
                    value = operation(client)
                except (
                    etcd_errors.ConnectionFailedError,
                    etcd_errors.ConnectionTimeoutError,
                    etcd_errors.InternalServerError,
                ) as exc:
                    problems.append(f"{url}: {_text(exc)}")
                    continue
                except etcd_errors.Etcd3Exception as exc:
                    # etcd answered (4xx): a definite answer from the cluster.
                    self._first = index
                    raise EtcdRefused(f"{what}: {url}: {_text(exc)}", detail=_text(exc)) from exc
                except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                    # (requests' JSONDecodeError is a ValueError too: checked first)
                    garbage = True
                    problems.append(f"{url}: unreadable answer ({type(exc).__name__}: {exc})")
                    continue
                except requests.RequestException as exc:
                    problems.append(f"{url}: {type(exc).__name__}: {exc}")
                    continue
                self._first = index
                return value
            summary = f"{what}: " + "; ".join(problems)
            if garbage:
                raise EtcdGarbage(summary)
            raise EtcdUnavailable(summary)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.session.close()


def _text(exc: etcd_errors.Etcd3Exception) -> str:
    detail = (exc.detail_text or "").strip()
    reason = " ".join(str(a) for a in exc.args if a)
    text = " ".join(p for p in (reason, detail) if p)
    return (text or type(exc).__name__)[:300]
