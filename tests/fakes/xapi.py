"""A protocol-level fake XAPI: XML-RPC over HTTP on loopback, so the real ``XenAPI`` SDK talks
to it unchanged (the SDK is never patched; this server is the seam).

What it models (XAPI's wire format and the calls tandem makes):

- Every answer is ``{'Status': 'Success', 'Value': ...}`` or ``{'Status': 'Failure',
  'ErrorDescription': [CODE, *params]}``; the first parameter of every call but the login is the
  session reference.
- ``session.login_with_password(user, password, version, originator)`` /
  ``session.logout``; ``invalidate_sessions()`` makes every open session answer
  ``SESSION_INVALID [ref]`` (as after a xapi restart); ``always_invalid`` makes every session
  invalid at once (the SDK's 3 tries run out).
- One ``FakePool`` (the pool database) served by one ``FakeXapiServer`` per host: the master's
  server answers everything, a slave's answers a login with ``HOST_IS_SLAVE [master
  address]`` (real XAPI does that on a slave's HTTP port; the SDK never follows it). The
  servers of one pool listen on one port at different loopback addresses (127.0.0.1,
  127.0.0.2, ...), so "the master's address" is all a client needs, as on a real pool.
- ``pool.get_all``, ``pool.get_master``, ``pool.get_other_config``,
  ``pool.add_to_other_config`` (``MAP_DUPLICATE_KEY`` when the key exists),
  ``pool.remove_from_other_config`` (no error for a missing key, like XAPI), ``pool.get_uuid``;
  ``host.get_all``, ``host.get_by_name_label``, ``host.get_record``, ``host.get_name_label``,
  ``host.get_uuid``, ``host.get_address``; ``SR.get_all_records``, ``SR.get_record``;
  ``PBD.get_all_records``, ``PBD.get_record``, ``PBD.get_by_uuid``, ``PBD.plug``,
  ``PBD.unplug`` (no-ops in the state asked for); ``message.create(name, priority, cls,
  obj_uuid, body)``. A handle that does not exist is ``HANDLE_INVALID [class, ref]``; an
  unknown method ``MESSAGE_METHOD_UNKNOWN [name]``.
- ``PBD.plug`` asks ``probe(pbd)`` (a callable: by default "the target serves"; the lab makes
  it run ``iscsi-inq`` through the VIP from the host's namespace) and fails with
  ``SR_BACKEND_FAILURE_141 ['', 'Unable to connect to ISCSI service on target', '']`` when it
  says no.
- Failure modes of the transport, per server: ``mode = "garbage"`` (HTTP 200 with a body that
  is not XML: ``ExpatError`` in the client), ``"http-error"`` (HTTP 500: ``ProtocolError``),
  ``"hang"`` (the answer waits until the mode changes or the server stops: a client timeout),
  ``"ok"``.

What it does not model: authentication beyond one user/password, roles (RBAC), events
(``event.from``), tasks and async calls, the unix socket (``xapi_local``), TLS, and every
class and field tandem does not read.
"""

from __future__ import annotations

import socketserver
import threading
import uuid as uuidlib
import xmlrpc.server
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

SR_BACKEND_FAILURE_141 = (
    "SR_BACKEND_FAILURE_141",
    "",
    "Unable to connect to ISCSI service on target",
    "",
)


def _ref(kind: str) -> str:
    return f"OpaqueRef:{kind.lower()}-{uuidlib.uuid4()}"


class XapiFailure(Exception):
    def __init__(self, *description: str) -> None:
        super().__init__(description)
        self.description = list(description)


@dataclass
class Host:
    ref: str
    uuid: str
    name_label: str
    address: str

    def record(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name_label": self.name_label,
            "hostname": self.name_label,
            "address": self.address,
            "enabled": True,
        }


@dataclass
class Sr:
    ref: str
    uuid: str
    name_label: str
    type: str
    pbds: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name_label": self.name_label,
            "name_description": "",
            "type": self.type,
            "content_type": "",
            "shared": True,
            "PBDs": list(self.pbds),
            "other_config": {},
        }


@dataclass
class Pbd:
    ref: str
    uuid: str
    host: str
    sr: str
    device_config: dict[str, str]
    currently_attached: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "host": self.host,
            "SR": self.sr,
            "device_config": dict(self.device_config),
            "currently_attached": self.currently_attached,
            "other_config": {},
        }


@dataclass
class Message:
    name: str
    priority: int
    cls: str
    obj_uuid: str
    body: str


Probe = Callable[["FakePool", Pbd], bool]


def _always_serves(pool: FakePool, pbd: Pbd) -> bool:
    return True


class FakePool:
    """The pool database and the calls on it. Thread-safe (one lock): the server is threaded.
    Tests change the world through the methods below, behind the client's back."""

    def __init__(self, *, username: str = "root", password: str = "secret") -> None:
        self.lock = threading.RLock()
        self.username = username
        self.password = password
        self.ref = _ref("pool")
        self.uuid = str(uuidlib.uuid4())
        self.other_config: dict[str, str] = {}
        self.hosts: dict[str, Host] = {}
        self.srs: dict[str, Sr] = {}
        self.pbds: dict[str, Pbd] = {}
        self.messages: list[Message] = []
        self.master: str | None = None
        self.sessions: dict[str, str] = {}  # session ref -> host ref it logged in on
        self.logins = 0
        self.always_invalid = False
        self.probe: Probe = _always_serves
        # Called after a PBD is unplugged (a test's model of the host, e.g. its LVM view).
        self.on_unplug: Callable[[Pbd], None] | None = None
        self.calls: list[str] = []  # method names, in order (for tests that count)

    # ------------------------------------------------------------------ the world (tests)
    def add_host(self, name: str, address: str) -> Host:
        with self.lock:
            host = Host(_ref("host"), str(uuidlib.uuid4()), name, address)
            self.hosts[host.ref] = host
            if self.master is None:
                self.master = host.ref
            return host

    def host_named(self, name: str) -> Host:
        with self.lock:
            return next(h for h in self.hosts.values() if h.name_label == name)

    def add_iscsi_sr(
        self, name: str, *, target: str, iqn: str, attached: bool = False, kind: str = "lvmoiscsi"
    ) -> Sr:
        """A shared SR with one PBD per host (device-config ``target``/``targetIQN``)."""
        with self.lock:
            sr = Sr(_ref("sr"), str(uuidlib.uuid4()), name, kind)
            self.srs[sr.ref] = sr
            for host in self.hosts.values():
                pbd = Pbd(
                    _ref("pbd"),
                    str(uuidlib.uuid4()),
                    host.ref,
                    sr.ref,
                    {"target": target, "targetIQN": iqn, "port": "3260", "SCSIid": "tandem1"},
                    attached,
                )
                self.pbds[pbd.ref] = pbd
                sr.pbds.append(pbd.ref)
            return sr

    def pbd_of(self, host_name: str, sr: Sr) -> Pbd:
        with self.lock:
            host = self.host_named(host_name)
            return next(p for p in self.pbds.values() if p.host == host.ref and p.sr == sr.ref)

    def set_master(self, name: str) -> None:
        with self.lock:
            self.master = self.host_named(name).ref

    def invalidate_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    def address_of_master(self) -> str:
        with self.lock:
            assert self.master is not None
            return self.hosts[self.master].address

    # ------------------------------------------------------------------------ the calls
    def call(self, served_by: Host, method: str, params: tuple[Any, ...]) -> Any:
        with self.lock:
            self.calls.append(method)
            if method == "session.login_with_password":
                return self._login(served_by, *params)
            if method == "session.logout":
                self._check_session(params)
                self.sessions.pop(params[0], None)
                return ""
            if served_by.ref != self.master:
                # The slave's xapi serves nothing but the redirect to its master.
                raise XapiFailure("HOST_IS_SLAVE", self.address_of_master())
            self._check_session(params)
            handler = _HANDLERS.get(method)
            if handler is None:
                raise XapiFailure("MESSAGE_METHOD_UNKNOWN", method)
            return handler(self, *params[1:])

    def _login(self, served_by: Host, *params: Any) -> str:
        if served_by.ref != self.master:
            raise XapiFailure("HOST_IS_SLAVE", self.address_of_master())
        if len(params) < 2:
            raise XapiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password")
        if (params[0], params[1]) != (self.username, self.password):
            raise XapiFailure(
                "SESSION_AUTHENTICATION_FAILED", str(params[0]), "Authentication failure"
            )
        self.logins += 1
        ref = _ref("session")
        self.sessions[ref] = served_by.ref
        return ref

    def _check_session(self, params: tuple[Any, ...]) -> None:
        ref = params[0] if params else ""
        if self.always_invalid or ref not in self.sessions:
            raise XapiFailure("SESSION_INVALID", str(ref))

    def _host(self, ref: str) -> Host:
        if ref not in self.hosts:
            raise XapiFailure("HANDLE_INVALID", "host", ref)
        return self.hosts[ref]

    def _pool(self, ref: str) -> None:
        if ref != self.ref:
            raise XapiFailure("HANDLE_INVALID", "pool", ref)

    def _sr(self, ref: str) -> Sr:
        if ref not in self.srs:
            raise XapiFailure("HANDLE_INVALID", "SR", ref)
        return self.srs[ref]

    def _pbd(self, ref: str) -> Pbd:
        if ref not in self.pbds:
            raise XapiFailure("HANDLE_INVALID", "PBD", ref)
        return self.pbds[ref]

    def plug(self, ref: str) -> str:
        pbd = self._pbd(ref)
        if pbd.currently_attached:
            return ""
        # The probe may run a command for a while (the lab's iscsi-inq): other calls wait,
        # as XAPI serialises operations on one PBD.
        if not self.probe(self, pbd):
            raise XapiFailure(*SR_BACKEND_FAILURE_141)
        pbd.currently_attached = True
        return ""

    def unplug(self, ref: str) -> str:
        pbd = self._pbd(ref)
        pbd.currently_attached = False
        if self.on_unplug is not None:
            self.on_unplug(pbd)
        return ""

    def add_to_other_config(self, ref: str, key: str, value: str) -> str:
        self._pool(ref)
        if key in self.other_config:
            raise XapiFailure("MAP_DUPLICATE_KEY", "pool", "other_config", ref, key)
        self.other_config[key] = value
        return ""

    def remove_from_other_config(self, ref: str, key: str) -> str:
        self._pool(ref)
        self.other_config.pop(key, None)
        return ""

    def create_message(self, name: str, priority: Any, cls: str, obj_uuid: str, body: str) -> str:
        self.messages.append(Message(name, int(priority), cls, obj_uuid, body))
        return _ref("message")


def _get_by_name_label(pool: FakePool, label: str) -> list[str]:
    return [h.ref for h in pool.hosts.values() if h.name_label == label]


def _pbd_by_uuid(pool: FakePool, uuid: str) -> str:
    for p in pool.pbds.values():
        if p.uuid == uuid:
            return p.ref
    raise XapiFailure("UUID_INVALID", "PBD", uuid)


def _pool_other_config(pool: FakePool, ref: str) -> dict[str, str]:
    pool._pool(ref)
    return dict(pool.other_config)


def _pool_master(pool: FakePool, ref: str) -> str:
    pool._pool(ref)
    assert pool.master is not None
    return pool.master


def _pool_uuid(pool: FakePool, ref: str) -> str:
    pool._pool(ref)
    return pool.uuid


_HANDLERS: dict[str, Callable[..., Any]] = {
    "pool.get_all": lambda pool: [pool.ref],
    "pool.get_master": _pool_master,
    "pool.get_uuid": _pool_uuid,
    "pool.get_other_config": _pool_other_config,
    "pool.add_to_other_config": FakePool.add_to_other_config,
    "pool.remove_from_other_config": FakePool.remove_from_other_config,
    "host.get_all": lambda pool: list(pool.hosts),
    "host.get_by_name_label": _get_by_name_label,
    "host.get_record": lambda pool, ref: pool._host(ref).record(),
    "host.get_name_label": lambda pool, ref: pool._host(ref).name_label,
    "host.get_uuid": lambda pool, ref: pool._host(ref).uuid,
    "host.get_address": lambda pool, ref: pool._host(ref).address,
    "SR.get_all_records": lambda pool: {r: s.record() for r, s in pool.srs.items()},
    "SR.get_record": lambda pool, ref: pool._sr(ref).record(),
    "PBD.get_all_records": lambda pool: {r: p.record() for r, p in pool.pbds.items()},
    "PBD.get_record": lambda pool, ref: pool._pbd(ref).record(),
    "PBD.get_by_uuid": _pbd_by_uuid,
    "PBD.plug": FakePool.plug,
    "PBD.unplug": FakePool.unplug,
    "message.create": FakePool.create_message,
}


class _Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:
        server: FakeXapiServer = self.server.owner  # type: ignore[attr-defined]
        mode = server.wait_for_mode()
        if mode == "garbage":
            self._raw(200, b"<<<this is not XML-RPC>>>")
            return
        if mode == "http-error":
            self._raw(500, b"internal error")
            return
        super().do_POST()

    def _raw(self, code: int, body: bytes) -> None:
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        self.send_response(code)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, xmlrpc.server.SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(
    socketserver.ThreadingMixIn,
    socketserver.UnixStreamServer,
    xmlrpc.server.SimpleXMLRPCDispatcher,
):
    """XML-RPC over HTTP on a unix socket (XAPI's local socket, ``xapi_local()``)."""

    daemon_threads = True
    logRequests = False

    def __init__(self, path: str) -> None:
        xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, allow_none=True)
        socketserver.UnixStreamServer.__init__(self, path, _UnixHandler)


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False  # TCP_NODELAY: not on a unix socket

    def setup(self) -> None:
        self.client_address = ("local", 0)  # BaseHTTPRequestHandler expects (host, port)
        super().setup()


class FakeXapiServer:
    """One host's xapi: an XML-RPC server on ``address``:``port`` serving ``pool`` as
    ``host``. ``port=0`` picks a free port (the first server of a pool); the others of the
    pool reuse it on their own loopback address. With ``unix_path`` instead, XAPI's local
    socket: it answers as the master, whoever that is (a slave's xapi forwards local calls
    to its master)."""

    def __init__(
        self, pool: FakePool, host: Host | None, *, port: int = 0, unix_path: str | None = None
    ) -> None:
        self.pool = pool
        self.host = host
        self._mode = "ok"
        self._mode_changed = threading.Condition()
        self._stopping = False
        self._server: _Server | _UnixServer
        if unix_path is not None:
            self._server = _UnixServer(unix_path)
            self.port = 0
        else:
            assert host is not None
            self._server = _Server(
                (host.address, port), requestHandler=_Handler, allow_none=True, logRequests=False
            )
            self.port = self._server.server_address[1]
        self.unix_path = unix_path
        self._server.owner = self  # type: ignore[union-attr]
        self._server.register_instance(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name=f"fake-xapi-{host.name_label if host else 'local'}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        assert self.host is not None, "a local-socket server has no URL"
        return f"http://{self.host.address}:{self.port}/"

    def start(self) -> FakeXapiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._mode_changed:
            self._stopping = True
            self._mode_changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def set_mode(self, mode: str) -> None:
        assert mode in ("ok", "garbage", "http-error", "hang"), mode
        with self._mode_changed:
            self._mode = mode
            self._mode_changed.notify_all()

    def wait_for_mode(self) -> str:
        with self._mode_changed:
            while self._mode == "hang" and not self._stopping:
                self._mode_changed.wait()
            return self._mode

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> dict[str, Any]:
        try:
            with self.pool.lock:
                assert self.pool.master is not None
                host = self.host or self.pool.hosts[self.pool.master]
            value = self.pool.call(host, method, params)
        except XapiFailure as exc:
            return {"Status": "Failure", "ErrorDescription": exc.description}
        except Exception as exc:  # a bug in the fake, or bad arguments: XAPI's internal error
            return {"Status": "Failure", "ErrorDescription": ["INTERNAL_ERROR", repr(exc)]}
        return {"Status": "Success", "Value": value}


@dataclass
class FakeXapiPool:
    """A pool of hosts, each with its own server (the first host is the master)."""

    pool: FakePool
    servers: dict[str, FakeXapiServer]

    @classmethod
    def start(
        cls, hosts: Iterable[str] = ("node1", "node2"), *, pool: FakePool | None = None
    ) -> FakeXapiPool:
        pool = pool or FakePool()
        servers: dict[str, FakeXapiServer] = {}
        port = 0
        try:
            for i, name in enumerate(hosts, start=1):
                host = pool.add_host(name, f"127.0.0.{i}")
                server = FakeXapiServer(pool, host, port=port).start()
                port = server.port
                servers[name] = server
        except BaseException:
            for server in servers.values():
                server.stop()
            raise
        return cls(pool, servers)

    local: list[FakeXapiServer] = field(default_factory=list)

    def url(self, host: str) -> str:
        return self.servers[host].url

    def serve_local(self, path: str) -> FakeXapiServer:
        """XAPI's local socket at ``path`` (what ``xapi.localSocket`` points to)."""
        server = FakeXapiServer(self.pool, None, unix_path=path).start()
        self.local.append(server)
        return server

    def stop(self) -> None:
        for server in [*self.servers.values(), *self.local]:
            server.stop()

    def __enter__(self) -> FakeXapiPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
