#!/usr/bin/env python3
"""A protocol-level fake of DRBD's command-line tools for tier 1 (DRBD cannot run here).

``install(bin_dir)`` writes ``drbdsetup`` and ``drbdadm`` executables into ``bin_dir`` that run
this file; a test puts ``bin_dir`` first on PATH and gives the real ``Runner`` the environment
``TANDEM_FAKE_DRBD`` (the scripted state file, ``FakeDrbd.path``) and ``TANDEM_FAKE_DRBD_NODE``
(which node this runner is). The product then spawns these like the real tools, through the
real ``Runner`` (``run`` and ``stream``): nothing in the product is patched.

The state file is a two-node model a test changes through ``FakeDrbd`` (or that ``drbdadm``
changes): per resource, per node ``up``/``role``/``disk``/``standalone``. Each node's view of
it is printed in the shapes of real captures (``tests/fixtures/drbd/SOURCES.md``):

- ``drbdsetup status --json``: the layout of ``json_connected_two_resources.json``;
- ``drbdsetup events2``: DRBD 9 ``exists``/``create``/``change``/``destroy`` lines as in
  ``events2_stream_sync.txt`` (``exists -`` after the dump), then a line per changed object
  while it runs (it re-reads the state file every 10 ms: polling is the fake's, not the
  product's). ``events2`` behaves as the file's ``events2[node]`` mode says: ``run``;
  ``silent`` (keeps running, reports nothing: changes are lost); ``garbage`` (prints one line
  that is not events2, then runs); ``nodump`` (prints nothing at all, a stall before the dump);
  ``exit:N`` (exits with N at once). Its PID is appended to ``events2-<node>.pids`` beside
  the state file. ``FakeDrbd.events2_say`` makes the running streams print a line (a helper
  call); ``FakeDrbd.fail_status`` makes a node's ``status`` fail;
- ``drbdadm adjust|primary [--force]|secondary|connect [--discard-my-data]|disconnect|down
  RES``: DRBD's rules that matter to the planner (a second Primary is refused with 8.4/9's
  "Multiple primaries not allowed by config", a promotion without UpToDate data with "Need
  access to UpToDate data").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STATE_ENV = "TANDEM_FAKE_DRBD"
NODE_ENV = "TANDEM_FAKE_DRBD_NODE"
NODES = ("node1", "node2")


# ------------------------------------------------------------------------- the test's side


class FakeDrbd:
    """The scripted two-node DRBD world of one test (see the module docstring)."""

    def __init__(self, directory: Path, resources: dict[str, int], *, up: bool = True) -> None:
        """Both nodes Secondary, UpToDate and in sync; ``up``: connected (else both down, as
        after a clean shutdown)."""
        self.dir = directory
        self.path = directory / "fake-drbd.json"
        self.bin = directory / "bin"
        install(self.bin)
        nodes = {n: {"up": up, "role": "Secondary", "disk": "UpToDate"} for n in NODES}
        _write(
            self.path,
            {
                "resources": {
                    name: {"minor": minor, "nodes": json.loads(json.dumps(nodes))}
                    for name, minor in resources.items()
                },
                "events2": dict.fromkeys(NODES, "run"),
            },
        )

    def env(self, node: str) -> dict[str, str]:
        return {STATE_ENV: str(self.path), NODE_ENV: node}

    def state(self) -> dict[str, Any]:
        return _read(self.path)

    def change(self, edit: Callable[[dict[str, Any]], None]) -> None:
        with _locked(self.path):
            state = _read(self.path)
            edit(state)
            _write(self.path, state)

    def set_node(self, resource: str, node: str, **values: object) -> None:
        self.change(lambda s: s["resources"][resource]["nodes"][node].update(values))

    def node(self, resource: str, node: str) -> dict[str, Any]:
        nodes: dict[str, dict[str, Any]] = self.state()["resources"][resource]["nodes"]
        return nodes[node]

    def events2_mode(self, node: str, mode: str) -> None:
        self.change(lambda s: s["events2"].__setitem__(node, mode))

    def fail_status(self, node: str) -> None:
        """``drbdsetup status`` of ``node`` fails from now on (exit code 11)."""
        self.change(lambda s: s.setdefault("status_fails", []).append(node))

    def events2_say(self, node: str, line: str) -> None:
        """``node``'s running events2 streams print ``line`` (a helper call, say) once."""
        self.change(lambda s: s.setdefault("say", {}).setdefault(node, []).append(line))

    def events2_pids(self, node: str) -> list[int]:
        path = self.dir / f"events2-{node}.pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []


def install(bin_dir: Path) -> None:
    """The fake tools in ``bin_dir``; ``modprobe`` too (``RealDrbd.up`` loads the module
    first): it succeeds for ``drbd`` and touches nothing."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("drbdsetup", "drbdadm"):
        exe = bin_dir / tool
        exe.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {tool} "$@"\n'
        )
        exe.chmod(0o755)
    modprobe = bin_dir / "modprobe"
    modprobe.write_text('#!/bin/sh\n[ "$*" = drbd ]\n')
    modprobe.chmod(0o755)


# ------------------------------------------------------------------------- the state file


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _write(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ------------------------------------------------------------------------- one node's view


def _peer(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


def _conn(res: dict[str, Any], node: str) -> str:
    me, peer = res["nodes"][node], res["nodes"][_peer(node)]
    if me.get("standalone"):
        return "StandAlone"
    if peer["up"] and not peer.get("standalone"):
        return "Connected"
    return "Connecting"


def view(state: dict[str, Any], node: str) -> dict[str, dict[str, Any]]:
    """What ``node``'s DRBD shows per resource that is up there."""
    out: dict[str, dict[str, Any]] = {}
    for name, res in sorted(state["resources"].items()):
        me = res["nodes"][node]
        if not me["up"]:
            continue
        peer = res["nodes"][_peer(node)]
        conn = _conn(res, node)
        connected = conn == "Connected"
        out[name] = {
            "minor": res["minor"],
            "role": me["role"],
            "disk": me["disk"],
            "conn": conn,
            "peer": _peer(node),
            "peer_role": peer["role"] if connected else "Unknown",
            "peer_disk": peer["disk"] if connected else "DUnknown",
            "replication": "Established" if connected else "Off",
        }
    return out


def _objects(name: str, v: dict[str, Any]) -> dict[str, str]:
    """One resource's events2 objects, keyed by object type, as DRBD 9 prints them."""
    peer = f"peer-node-id:1 conn-name:{v['peer']}"
    return {
        "resource": f"resource name:{name} role:{v['role']} suspended:no",
        "connection": f"connection name:{name} {peer} connection:{v['conn']} role:{v['peer_role']}",
        "device": f"device name:{name} volume:0 minor:{v['minor']} disk:{v['disk']} client:no",
        "peer-device": (
            f"peer-device name:{name} {peer} volume:0 replication:{v['replication']} "
            f"peer-disk:{v['peer_disk']} resync-suspended:no"
        ),
    }


ORDER = ("resource", "connection", "device", "peer-device")


def events_between(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for name in sorted(set(old) | set(new)):
        before = _objects(name, old[name]) if name in old else None
        after = _objects(name, new[name]) if name in new else None
        if after is None and before is not None:
            lines += [f"destroy {before[o]}" for o in reversed(ORDER)]
        elif before is None and after is not None:
            lines += [f"create {after[o]}" for o in ORDER]
        elif before is not None and after is not None:
            lines += [f"change {after[o]}" for o in ORDER if after[o] != before[o]]
    return lines


def status_json(v: dict[str, dict[str, Any]]) -> str:
    doc = [
        {
            "name": name,
            "node-id": 0,
            "role": r["role"],
            "suspended": False,
            "write-ordering": "flush",
            "devices": [
                {"volume": 0, "minor": r["minor"], "disk-state": r["disk"], "client": False}
            ],
            "connections": [
                {
                    "peer-node-id": 1,
                    "name": r["peer"],
                    "connection-state": r["conn"],
                    "congested": False,
                    "peer-role": r["peer_role"],
                    "peer_devices": [
                        {
                            "volume": 0,
                            "replication-state": r["replication"],
                            "peer-disk-state": r["peer_disk"],
                            "peer-client": False,
                            "resync-suspended": "no",
                            "percent-in-sync": 100,
                        }
                    ],
                }
            ],
        }
        for name, r in v.items()
    ]
    return json.dumps(doc, indent=2)


# ------------------------------------------------------------------------- the tools


def _drbdsetup(args: list[str], path: Path, node: str) -> int:
    if args[:2] == ["status", "--json"]:
        state = _read(path)
        if node in state.get("status_fails", ()):
            print("fake drbdsetup: status failed (scripted by the test)", file=sys.stderr)
            return 11
        print(status_json(view(state, node)))
        return 0
    if args[:1] == ["events2"] and "--now" not in args:
        return _events2(path, node)
    print(f"fake drbdsetup: unsupported {' '.join(args)}", file=sys.stderr)
    return 20


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _events2(path: Path, node: str) -> int:
    with open(path.parent / f"events2-{node}.pids", "a") as pids:
        pids.write(f"{os.getpid()}\n")
    mode = _read(path)["events2"][node]
    if mode.startswith("exit:"):
        return int(mode.partition(":")[2])
    if mode == "nodump":
        while True:
            time.sleep(1)
    shown = view(_read(path), node)
    for name, v in shown.items():
        objects = _objects(name, v)
        for o in ORDER:
            _out(f"exists {objects[o]}")
    _out("exists -")
    garbage_done = False
    said = len(_read(path).get("say", {}).get(node, []))
    while True:
        time.sleep(0.01)
        with contextlib.suppress(ValueError, OSError):  # a state file being replaced
            state = _read(path)
            mode = state["events2"][node]
            current = view(state, node)
            if mode.startswith("exit:"):
                return int(mode.partition(":")[2])
            if mode == "garbage" and not garbage_done:
                _out("<html>this is not events2</html>")
                garbage_done = True
            if mode != "silent":
                for line in events_between(shown, current):
                    _out(line)
            shown = current
            say = state.get("say", {}).get(node, [])
            for line in say[said:]:
                _out(line)
            said = len(say)


def _fail(message: str, rc: int = 11) -> int:
    print(message, file=sys.stderr)
    return rc


def _drbdadm(args: list[str], path: Path, node: str) -> int:
    action, options, name = args[0], args[1:-1], args[-1]
    with _locked(path):
        state = _read(path)
        res = state["resources"].get(name)
        if res is None:
            return _fail(f"'{name}' not defined in your config (for this host).", 10)
        me, peer = res["nodes"][node], res["nodes"][_peer(node)]
        if action != "adjust" and not me["up"] and action != "down":
            return _fail(f"{name}: No such resource", 10)
        if action == "adjust":
            me["up"] = True
            me["standalone"] = False
        elif action == "down":
            me.update(up=False, role="Secondary", standalone=False)
        elif action == "secondary":
            me["role"] = "Secondary"
        elif action == "primary":
            connected = _conn(res, node) == "Connected"
            if connected and peer["role"] == "Primary":
                return _fail(
                    f"{name}: State change failed: (-1) Multiple primaries not allowed by config"
                )
            peer_data = connected and peer["disk"] == "UpToDate"
            if me["disk"] != "UpToDate" and not peer_data and "--force" not in options:
                return _fail(f"{name}: State change failed: (-2) Need access to UpToDate data")
            me["role"] = "Primary"
        elif action == "disconnect":
            me["standalone"] = True
        elif action == "connect":
            me["standalone"] = False
        else:
            return _fail(f"fake drbdadm: unsupported {action}", 20)
        _write(path, state)
    return 0


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    path, node = Path(os.environ[STATE_ENV]), os.environ[NODE_ENV]
    if tool == "drbdsetup":
        return _drbdsetup(args, path, node)
    return _drbdadm(args, path, node)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
