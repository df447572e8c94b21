"""Manual mode in the pool database: set on one host with ``reconcile manual-mode``, visible in
the fake pool's ``other_config`` and through the other host's ``manual-mode show``, kept when a
host's state dir is wiped; the local copy answers while XAPI is unreachable, and a disagreement
is reported. The ``reconcile`` command runs for real; XAPI is the protocol-level fake."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.state import FileOperatorStore
from adapters.xapi import XapiClient
from adapters.xapi.pooldb import (
    MANUAL_MODE_KEY,
    PoolDatabase,
    PoolOperatorStore,
    format_manual_mode,
    parse_manual_mode,
)
from adapters.xapi.session import Credentials
from reconciler.core.observed import OperatorState, Role
from tests.fakes.xapi import FakeXapiPool
from tests.simcluster import DEMO_TEXT

RECONCILE = shutil.which("reconcile") or ""


@pytest.fixture
def fake() -> Iterator[FakeXapiPool]:
    pool = FakeXapiPool.start()
    try:
        yield pool
    finally:
        pool.stop()


def xapi_spec(tmp: Path, fake: FakeXapiPool) -> Path:
    creds = tmp / "xapi-credentials"
    creds.write_text(f"{fake.pool.username}\n{fake.pool.password}\n")
    os.chmod(creds, 0o600)
    text = DEMO_TEXT.replace("    roleSource: sim\n", "    roleSource: xapi\n")
    text += f"  xapi:\n    url: {fake.url('node1')}\n    credentialsFile: {creds}\n    timeout: 5\n"
    spec = tmp / "tandem.yaml"
    spec.write_text(text)
    return spec


def run(spec: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), COLUMNS="200")
    return subprocess.run(
        [RECONCILE, *args, "--file", str(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed")
def test_manual_mode_is_shared_through_the_pool_database(
    tmp_path: Path, fake: FakeXapiPool
) -> None:
    spec = xapi_spec(tmp_path, fake)
    one, two = tmp_path / "state-node1", tmp_path / "state-node2"
    enabled = run(spec, one, "manual-mode", "enable", "--node", "node1")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    node1_uuid = fake.pool.host_named("node1").uuid
    assert fake.pool.other_config[MANUAL_MODE_KEY] == f"{node1_uuid}=enable"
    seen = run(spec, two, "manual-mode", "show", "--node", "node2")
    assert seen.returncode == 0, seen.stderr
    assert "node2: manual mode off" in seen.stdout
    assert "pool database MANUAL_MODE: node1=enable" in seen.stdout
    shutil.rmtree(one)  # a dom0 reinstall: the state dir is gone
    again = run(spec, one, "manual-mode", "show", "--node", "node1")
    assert again.returncode == 0, again.stderr
    assert "node1: manual mode on" in again.stdout and "Traceback" not in again.stderr


def _store(fake: FakeXapiPool, tmp: Path, node: str, url: str | None = None) -> PoolOperatorStore:
    client = XapiClient(
        url=url or fake.url(node), credentials=Credentials("root", "secret"), timeout=5.0
    )
    local = FileOperatorStore(tmp / f"operator-{node}.json")
    return PoolOperatorStore(local, PoolDatabase(client), host_name=node)


def test_both_hosts_entries_live_side_by_side(tmp_path: Path, fake: FakeXapiPool) -> None:
    one, two = _store(fake, tmp_path, "node1"), _store(fake, tmp_path, "node2")
    one.save(OperatorState(manual_mode=True, chosen_role=Role.PRIMARY))
    two.save(OperatorState(manual_mode=True, chosen_role=Role.SECONDARY))
    entries = parse_manual_mode(fake.pool.other_config[MANUAL_MODE_KEY])
    uuids = {fake.pool.host_named(n).uuid: n for n in ("node1", "node2")}
    assert {uuids[u]: w for u, w in entries.items()} == {"node1": "primary", "node2": "secondary"}
    one.save(OperatorState())
    assert parse_manual_mode(fake.pool.other_config[MANUAL_MODE_KEY]) == {
        fake.pool.host_named("node2").uuid: "secondary"
    }
    two.save(OperatorState())
    assert MANUAL_MODE_KEY not in fake.pool.other_config


def test_the_local_copy_answers_while_xapi_is_unreachable(
    tmp_path: Path, fake: FakeXapiPool
) -> None:
    store = _store(fake, tmp_path, "node1")
    store.save(OperatorState(manual_mode=True, chosen_role=Role.SECONDARY))
    fake.servers["node1"].set_mode("garbage")
    assert store.load() == OperatorState(manual_mode=True, chosen_role=Role.SECONDARY)
    assert store.warning and "pool database unreachable" in store.warning
    store.save(OperatorState(manual_mode=True, chosen_role=Role.PRIMARY))
    assert store.warning and "saved locally only" in store.warning
    fake.servers["node1"].set_mode("ok")
    loaded = store.load()
    assert loaded.chosen_role is Role.PRIMARY  # the local copy wins
    assert store.warning and "disagree" in store.warning


def test_malformed_entries_do_not_hide_the_others() -> None:
    assert parse_manual_mode("a=enable,,junk,b=sideways,c=primary") == {
        "a": "enable",
        "c": "primary",
    }
    assert format_manual_mode({"b": "secondary", "a": "enable"}) == "a=enable,b=secondary"


# ------------------------------------------------------------------------ backup/restore
def restore_args(fake: FakeXapiPool, tmp: Path) -> list[str]:
    return ["--url", fake.url("node1"), "--credentials-file", str(tmp / "xapi-credentials")]


def run_plain(state: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TANDEM_STATE_DIR=str(state), COLUMNS="200")
    return subprocess.run(
        [RECONCILE, *args], capture_output=True, text=True, env=env, timeout=60, input=stdin
    )


@pytest.mark.skipif(not RECONCILE, reason="reconcile is not installed")
def test_backup_then_restore_on_a_wiped_node_gives_the_identical_spec(
    tmp_path: Path, fake: FakeXapiPool
) -> None:
    spec = xapi_spec(tmp_path, fake)
    os.chmod(spec, 0o640)
    original = spec.read_bytes()
    state = tmp_path / "state"
    saved = run_plain(state, "backup", "--file", str(spec), "--output", str(tmp_path / "b.json"))
    assert saved.returncode == 0, saved.stdout + saved.stderr
    key = f"tandem-backup:{spec}"
    assert key in fake.pool.other_config and fake.pool.other_config[key].startswith("0640:")
    unchanged = run_plain(state, "restore", *restore_args(fake, tmp_path))
    assert unchanged.returncode == 0 and "nothing to restore" in unchanged.stdout
    spec.unlink()  # the dom0 reinstall
    declined = run_plain(state, "restore", *restore_args(fake, tmp_path), stdin="n\n")
    assert declined.returncode != 0 and not spec.exists()
    assert "(missing)" in declined.stdout and "+  xapi:" in declined.stdout
    done = run_plain(state, "restore", *restore_args(fake, tmp_path), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert spec.read_bytes() == original and (spec.stat().st_mode & 0o777) == 0o640
    again = run_plain(state, "restore", *restore_args(fake, tmp_path))
    assert "nothing to restore" in again.stdout  # the diff is empty
    spec.write_text("edited\n")
    from_file = run_plain(state, "restore", "--input", str(tmp_path / "b.json"), "--yes")
    assert from_file.returncode == 0 and spec.read_bytes() == original


# ---------------------------------------------------------------------------------- factory
def test_the_factory_builds_the_xapi_adapters_on_one_session(
    tmp_path: Path, fake: FakeXapiPool
) -> None:
    from adapters.factory import build_adapters
    from adapters.xapi import XapiHypervisor, XapiRoleSource
    from reconciler.core.specload import load_spec

    path = xapi_spec(tmp_path, fake)
    text = re.sub(r"(?m)^    hypervisor: \w+.*$\n?", "", path.read_text()).replace(
        "    roleSource: xapi\n", "    roleSource: xapi\n    hypervisor: xapi\n"
    )
    spec = load_spec(text, filename=str(path))
    built = build_adapters(spec, "node2", tmp_path / "state")
    role, hv, store = built.role_source, built.hypervisor, built.operator
    assert isinstance(role, XapiRoleSource) and isinstance(hv, XapiHypervisor)
    assert isinstance(store, PoolOperatorStore)
    assert role.client is hv.client is store.db.client
    assert "pool.conf" in [w.name for w in built.wake]
    assert role.observe().role is Role.SECONDARY
    os.chmod(tmp_path / "xapi-credentials", 0o644)
    from reconciler.core.errors import TerminalError

    with pytest.raises(TerminalError, match="chmod 600"):
        build_adapters(spec, "node2", tmp_path / "state")


# ------------------------------------------------------------------------------------ spec
@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("    url: ftp://x/\n", "spec.xapi.url: expected an http:// or https:// URL"),
        ("    usernameFile: /a\n", "usernameFile and passwordFile go together"),
        (
            "    credentialsFile: /a\n    usernameFile: /b\n    passwordFile: /c\n",
            "use either credentialsFile or usernameFile/passwordFile",
        ),
        ("    hostNames: {node3: xcp3}\n", "xapi.hostNames names 'node3'"),
        ("    timeout: 0\n", "spec.xapi.timeout"),
    ],
)
def test_the_xapi_section_refuses(section: str, message: str) -> None:
    from reconciler.core.specload import SpecError, load_spec

    with pytest.raises(SpecError) as caught:
        load_spec(DEMO_TEXT + "  xapi:\n" + section, filename="x.yaml")
    assert message in caught.value.render()


def test_the_xapi_section_defaults() -> None:
    from reconciler.core.specload import load_spec

    xapi = load_spec(DEMO_TEXT, filename="x.yaml").spec.xapi
    assert (xapi.url, xapi.timeout, xapi.local_socket) == (None, 13.0, "/var/lib/xcp/xapi")
    named = load_spec(DEMO_TEXT + "  xapi:\n    hostNames: {node1: xcp1}\n", filename="x.yaml")
    assert (named.spec.xapi.host_name("node1"), named.spec.xapi.host_name("node2")) == (
        "xcp1",
        "node2",
    )
