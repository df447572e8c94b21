"""One XAPI session over the official ``XenAPI`` SDK, with what the SDK leaves to its caller.

Invariants:

- Every call has a timeout, set in the ``xmlrpc.client`` transport (the SDK's ``Session`` has
  no timeout parameter; ``XenAPI.xapi_local()`` builds one without any): ``TimeoutTransport``
  for a URL, ``LocalTransport`` for the local socket (the same socket and URL as
  ``xapi_local()``, ``/var/lib/xcp/xapi``).
- ``SESSION_INVALID``: the SDK logs in again and retries by itself (3 tries); when they run out
  it raises ``xmlrpc.client.Fault``, reported here as a transient "session invalid" error.
- ``HOST_IS_SLAVE [master address]``: the SDK does not follow it; ``XapiClient`` reconnects to
  the master (the configured URL with the master's address as its host; ``https://<master>/``
  from the local socket) and retries once per call.
- Nothing but ``XapiError`` leaves ``call``: unreachable, timeout, garbage (``ExpatError``,
  ``ProtocolError``, a broken HTTP answer) and XAPI error codes all become one, with a reason
  for people and ``transient`` for the executor. After a transport failure the session is
  dropped, so the next call connects afresh.
- Credentials files are refused unless only their owner may read them (mode 0600 or 0400).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import stat
import threading
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.parsers.expat import ExpatError

import XenAPI

from reconciler.core.errors import AdapterError, TerminalError, TransientError

LOCAL_SOCKET = "/var/lib/xcp/xapi"
LOCAL_URL = "http://_var_lib_xcp_xapi/"  # what XenAPI.xapi_local() uses
ORIGINATOR = "tandem"

# XAPI error codes worth retrying soon: the host or the storage backend is busy or starting,
# or the iSCSI target does not answer yet (SR_BACKEND_FAILURE_141) - the next tick may see it
# serve. Everything else (HANDLE_INVALID, PERMISSION_DENIED, bad credentials ...) is terminal.
TRANSIENT_CODES = frozenset(
    {
        "HOST_OFFLINE",
        "HOST_STILL_BOOTING",
        "HOST_IS_SLAVE",
        "TOO_BUSY",
        "OTHER_OPERATION_IN_PROGRESS",
        "SR_BACKEND_FAILURE_141",
        "SESSION_INVALID",
        "CANNOT_CONTACT_HOST",
    }
)


class XapiError(Exception):
    """A call that did not answer: ``reason`` says why (for people), ``code`` is XAPI's error
    code when XAPI answered with one."""

    def __init__(self, reason: str, *, transient: bool, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.code = code

    def __str__(self) -> str:
        return self.reason

    def adapter_error(self) -> AdapterError:
        kind = TransientError if self.transient else TerminalError
        return kind(self.reason)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


def read_credentials(
    *,
    credentials_file: str | None = None,
    username_file: str | None = None,
    password_file: str | None = None,
) -> Credentials:
    """``credentials_file``: the username on the first line, the password on the second; or
    one file each. Raises ``TerminalError`` for a file others may read or one that is
    missing. Neither given: root with an empty password (accepted on the local socket)."""
    if credentials_file:
        lines = _secret(credentials_file).splitlines()
        if len(lines) < 2 or not lines[0].strip():
            raise TerminalError(
                f"{credentials_file}: expected the username on the first line and the "
                "password on the second"
            )
        return Credentials(lines[0].strip(), lines[1])
    if username_file or password_file:
        if not (username_file and password_file):
            raise TerminalError("xapi: usernameFile and passwordFile go together")
        return Credentials(_secret(username_file).strip(), _secret(password_file).rstrip("\r\n"))
    return Credentials("root", "")


def _secret(path: str) -> str:
    try:
        info = os.stat(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TerminalError(
                f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: a credentials file must "
                "be readable by its owner only (chmod 600)"
            )
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TerminalError(f"cannot read {path}: {exc.strerror or exc}") from exc


class TimeoutTransport(xmlrpc.client.Transport):
    """HTTP with a timeout on connect and on every read."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


class TimeoutSafeTransport(xmlrpc.client.SafeTransport):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPSConnection:
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class LocalTransport(xmlrpc.client.Transport):
    """The SDK's local-socket transport (``XenAPI.UDSTransport``) with a timeout."""

    def __init__(self, timeout: float, path: str = LOCAL_SOCKET) -> None:
        super().__init__()
        self.timeout = timeout
        self.path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        cached = self._connection[1]
        if cached is not None and host == self._connection[0]:
            return cached
        conn = _UnixConnection(self.path, self.timeout)
        self._connection = host, conn
        return conn


def master_url(url: str | None, master: str) -> str:
    """Where the pool master answers: the configured URL with ``master`` as its host (scheme
    and port kept), or ``https://<master>/`` when the slave was the local socket."""
    if url is None:
        return f"https://{master}/"
    parts = urlsplit(url)
    netloc = master if parts.port is None else f"{master}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


class XapiClient:
    """Calls on one pool, as ``call("PBD.plug", ref)``. One call at a time (a lock): the role
    source, the hypervisor adapter and the operator store of one agent share one session,
    and the agent may observe concerns concurrently."""

    def __init__(
        self,
        *,
        url: str | None,
        credentials: Credentials,
        timeout: float = 13.0,
        local_socket: str = LOCAL_SOCKET,
    ) -> None:
        self.url = url
        self.credentials = credentials
        self.timeout = timeout
        self.local_socket = local_socket
        self._lock = threading.RLock()
        self._connected_url: str | None = url
        self._session: Any = None

    @property
    def source(self) -> str:
        if self._connected_url is None:
            return "xapi (local socket)"
        if self._connected_url != self.url:
            return f"xapi ({self._connected_url}, the master; {self.url} is a slave)"
        return f"xapi ({self._connected_url})"

    def call(self, method: str, *args: Any) -> Any:
        with self._lock:
            return self._call(method, args)

    def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        for _hop in range(3):
            try:
                return self._call_once(method, args)
            except XenAPI.Failure as exc:
                details = [str(d) for d in (exc.details or ["UNKNOWN"])]
                if details[0] == "HOST_IS_SLAVE" and len(details) > 1:
                    self._drop()
                    self._connected_url = master_url(self.url, details[1])
                    continue
                raise _failure(method, details) from None
        raise XapiError(
            f"{method}: HOST_IS_SLAVE more than twice (the pool is electing a master?)",
            transient=True,
            code="HOST_IS_SLAVE",
        )

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            # Logout is best effort: an abandoned session expires on its own.
            with contextlib.suppress(Exception):
                session.xenapi.session.logout()

    def _drop(self) -> None:
        self._session = None

    def _call_once(self, method: str, args: tuple[Any, ...]) -> Any:
        where = self._connected_url or self.local_socket
        try:
            if self._session is None:
                session = self._new_session()
                session.xenapi.login_with_password(
                    self.credentials.username, self.credentials.password, "1.0", ORIGINATOR
                )
                self._session = session
            target: Any = self._session.xenapi
            for part in method.split("."):
                target = getattr(target, part)
            return target(*args)
        except XenAPI.Failure:
            if self._session is not None and method.startswith("session."):
                self._drop()
            raise
        except xmlrpc.client.Fault as exc:
            self._drop()
            text = str(exc.faultString)
            if "session" in text.lower():
                raise XapiError(
                    f"{method}: XAPI at {where} keeps answering SESSION_INVALID ({text})",
                    transient=True,
                    code="SESSION_INVALID",
                ) from None
            raise XapiError(
                f"{method}: XAPI at {where} answered garbage ({text})", transient=True
            ) from None
        except TimeoutError:
            self._drop()
            raise XapiError(
                f"{method}: XAPI at {where} timed out after {self.timeout:g}s", transient=True
            ) from None
        except (ExpatError, xmlrpc.client.ProtocolError, xmlrpc.client.ResponseError) as exc:
            self._drop()
            raise XapiError(
                f"{method}: XAPI at {where} answered garbage ({type(exc).__name__}: {exc})",
                transient=True,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise XapiError(
                f"{method}: XAPI at {where} is unreachable ({type(exc).__name__}: {exc})",
                transient=True,
            ) from None

    def _new_session(self) -> Any:
        url = self._connected_url
        if url is None:
            return XenAPI.Session(
                LOCAL_URL, transport=LocalTransport(self.timeout, self.local_socket)
            )
        if url.startswith("https:"):
            return XenAPI.Session(url, transport=TimeoutSafeTransport(self.timeout))
        return XenAPI.Session(url, transport=TimeoutTransport(self.timeout))


def _failure(method: str, details: list[str]) -> XapiError:
    code = details[0]
    shown = " ".join(d for d in details[1:] if d)
    text = f"{method}: XAPI error {code}" + (f" ({shown})" if shown else "")
    return XapiError(text, transient=code in TRANSIENT_CODES, code=code)
