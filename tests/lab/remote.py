"""Run a real ``IpVip`` (or ``NetlinkVip``, ``--adapter netlink``) inside a lab node's
namespace and call it from the test process.

The real VIP adapter sends ARP from a packet socket of the process that calls it, so it must run
*inside* the node's namespace (the production arrangement: the agent runs on the node). The test
process itself stays in the machine's real namespace, where it must never send lab traffic. So
``RemoteVip.start(lab, key)`` starts ``python -m tests.lab.remote`` through ``lab.spawn`` (the
lab's namespace-entering helper) and talks to it over a unix socket in the lab's work directory
(path-based unix sockets are not isolated by network namespaces). The server builds
``IpVip(Runner(), arp=InProcessArp(netns=NS))``: the ARP tool itself refuses to open a socket
unless it really is in ``NS``.

Protocol: one JSON object per line each way. Request ``{"op": "observe"|"add"|"add_probed"|"remove"|
"announce"|"drain", "vips": [...]}`` (VIPs as ``{"address": "A/P", "interface": "eth0"}``);
reply ``{"result": ...}`` or ``{"error": "TransientError"|"TerminalError"|..., "message": ...}``.
Adapter errors are re-raised on the client side as the same class.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler.core.errors import AdapterError, TerminalError, TransientError
from reconciler.core.observed import Leftovers, LeftoverVip, VipObs
from reconciler.core.spec import Vip

REPO = Path(__file__).resolve().parents[2]
_ERRORS: dict[str, type[AdapterError]] = {
    "TransientError": TransientError,
    "TerminalError": TerminalError,
}


class RemoteVip:
    """A ``VipAdapter`` whose calls run in a server process inside a lab namespace."""

    def __init__(self, sock_path: str, proc: Any) -> None:
        self.sock_path = sock_path
        self.proc = proc
        self._conn: socket.socket | None = None
        self._file: Any = None

    @classmethod
    def start(cls, lab: Any, key: str, *, timeout: float = 10.0, adapter: str = "ip") -> RemoteVip:
        # A short directory of its own: sun_path holds 108 bytes, pytest's paths get long.
        sock_dir = tempfile.mkdtemp(prefix="tdmrv")
        sock_path = os.path.join(sock_dir, "sock")
        argv = [
            sys.executable,
            "-m",
            "tests.lab.remote",
            "--socket",
            sock_path,
            "--netns",
            lab.ns(key),
            "--adapter",
            adapter,
        ]
        proc = lab.spawn(key, argv, env={"PYTHONPATH": str(REPO)}, log_name=f"remote-vip-{key}.log")
        remote = cls(sock_path, proc)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                shutil.rmtree(sock_dir, ignore_errors=True)
                log = lab.path(f"remote-vip-{key}.log").read_text()[-2000:]
                raise RuntimeError(f"remote VIP server in {key} exited: {log}")
            try:
                remote._connect()
                return remote
            except OSError as exc:  # not listening yet: poll (the server's start-up)
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    shutil.rmtree(sock_dir, ignore_errors=True)
                    raise RuntimeError(
                        f"remote VIP server in {key} not accepting on {sock_path} after "
                        f"{timeout:g}s: {exc}"
                    ) from exc
                time.sleep(0.02)

    def _connect(self) -> None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.sock_path)
        except OSError:
            conn.close()
            raise
        conn.settimeout(30)
        self._conn = conn
        self._file = conn.makefile("rwb")

    def _call(self, op: str, vips: Sequence[Vip] = ()) -> Any:
        assert self._file is not None, "not connected"
        request = {"op": op, "vips": [_vip_json(v) for v in vips]}
        self._file.write(json.dumps(request).encode() + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise RuntimeError("remote VIP server closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            raise _ERRORS.get(reply["error"], RuntimeError)(reply["message"])
        return reply["result"]

    # --- VipAdapter ---------------------------------------------------------------------
    def observe(self, vips: Sequence[Vip], *, wait_probes: bool = True) -> tuple[VipObs, ...]:
        # The server always waits for its probes: nothing is left pending across the socket.
        return tuple(VipObs(**item) for item in self._call("observe", vips))

    def complete(self, seen: tuple[VipObs, ...]) -> tuple[VipObs, ...]:
        return seen

    def add(self, vip: Vip, *, probe: bool = False) -> None:
        self._call("add_probed" if probe else "add", [vip])

    def remove(self, vip: Vip) -> None:
        self._call("remove", [vip])

    def announce(self, vip: Vip) -> None:
        self._call("announce", [vip])

    def leftovers(self, vips: Sequence[Vip]) -> Leftovers:
        found = self._call("leftovers", vips)
        return Leftovers(vips=tuple(LeftoverVip(**item) for item in found))

    def remove_old(self, address: str, interface: str) -> None:
        self._call("remove_old", [Vip.model_validate({"address": address, "interface": interface})])

    # --- lifecycle ----------------------------------------------------------------------
    def drain(self) -> bool:
        """Wait (up to 5 s) until every gratuitous ARP round the server scheduled is due and
        passed (sent, or skipped once cancelled); True when none is left."""
        return bool(self._call("drain"))

    def close(self) -> None:
        """Stop the server (it exits when the connection closes) and reap it."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._file = self._conn = None
        try:
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=5)
        shutil.rmtree(os.path.dirname(self.sock_path), ignore_errors=True)


def _vip_json(vip: Vip) -> dict[str, str]:
    return {"address": str(vip.address), "interface": vip.interface}


# ------------------------------------------------------------------------------ the server
def serve(sock_path: str, netns: str, adapter_kind: str = "ip") -> int:
    from adapters.runner import Runner
    from adapters.vip import AddressVip, InProcessArp, IpVip

    arp = InProcessArp(netns=netns)
    arp.check_netns()  # refuse to serve at all from the wrong namespace
    adapter: AddressVip
    if adapter_kind == "netlink":
        from adapters.vip.netlink import NetlinkVip

        adapter = NetlinkVip(arp=arp)  # transport local: the server runs in the namespace
    else:
        adapter = IpVip(Runner(), arp=arp)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    listener.bind(sock_path)
    listener.listen(1)
    conn, _ = listener.accept()
    listener.close()
    with conn, conn.makefile("rwb") as fh:
        for line in fh:
            request = json.loads(line)
            vips = [Vip.model_validate(v) for v in request.get("vips", [])]
            try:
                reply: dict[str, Any] = {"result": _dispatch(adapter, arp, request["op"], vips)}
            except AdapterError as exc:
                reply = {"error": type(exc).__name__, "message": str(exc)}
            except Exception as exc:  # report, keep serving
                reply = {"error": type(exc).__name__, "message": repr(exc)}
            fh.write(json.dumps(reply).encode() + b"\n")
            fh.flush()
    arp.drain(5.0)
    close = getattr(adapter, "close", None)
    if close is not None:
        close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    return 0


def _dispatch(adapter: Any, arp: Any, op: str, vips: list[Vip]) -> Any:
    if op == "observe":
        return [dataclasses.asdict(o) for o in adapter.observe(vips)]
    if op == "drain":
        return arp.drain(5.0)
    if op == "leftovers":
        return [dataclasses.asdict(o) for o in adapter.leftovers(vips).vips]
    if op == "remove_old":
        (vip,) = vips
        adapter.remove_old(str(vip.address), vip.interface)
        return None
    if op == "add_probed":
        (vip,) = vips
        adapter.add(vip, probe=True)
        return None
    if op in ("add", "remove", "announce"):
        (vip,) = vips
        getattr(adapter, op)(vip)
        return None
    raise ValueError(f"unknown op {op!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.remote")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--adapter", choices=("ip", "netlink"), default="ip")
    args = parser.parse_args(argv)
    return serve(args.socket, args.netns, args.adapter)


if __name__ == "__main__":
    sys.exit(main())
