"""The status record: one model for the writer (agent) and the reader (`reconcile status`).

Round trip through the file, the recorded expectation (not a guess from the role), records of
the previous version, and corrupt or foreign files reported plainly instead of a traceback.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from reconciler.agent import status_record, write_status
from reconciler.core.observed import ConnState, Role
from reconciler.core.plan import BlockKind, WarningKind
from reconciler.record import BadRecord, StatusRecord, read_status, status_path
from reconciler.status import render
from tests.simcluster import SimCluster, demo_spec

# A record as tandem 0.1.0 wrote it before the typed plan values (abridged to what `status`
# reads): blocked entries without a kind, warnings as plain text, no recorded expectation.
PREVIOUS_VERSION_RECORD: dict[str, Any] = {
    "node": "node1",
    "desired_role": "Primary",
    "role_reason": "this node is the pool master",
    "dry_run": False,
    "actions": [],
    "blocked": [{"what": "add-vip", "reason": "VIP 198.51.100.3 is answered by another host"}],
    "applied": [],
    "steps": [],
    "observe_ms": 1.5,
    "observe_parts_ms": {"drbd": 0.5},
    "errors": [],
    "warnings": ["replication of iscsi1 is degraded: WFConnection UpToDate/DUnknown"],
    "converged": False,
    "exit_code": 3,
    "observed": {
        "resources": [
            {
                "name": "iscsi1",
                "up": True,
                "role": "Primary",
                "connection": "WFConnection",
                "disk": "UpToDate",
                "peer_role": "Unknown",
                "peer_disk": "DUnknown",
                "split_brain": False,
                "sync_percent": None,
                "error": None,
            }
        ],
        "vips": [
            {
                "address": "198.51.100.3",
                "local": False,
                "answered_elsewhere": True,
                "announced": None,
                "error": None,
            }
        ],
        "target": {"running": False, "exported_luns": [], "error": None},
        "role_source": {"role": "Primary", "detail": "this node is the pool master"},
        "manual_mode": False,
        "chosen_role": None,
        "peer_reachable": True,
    },
    "seconds": 0.01,
    "version": "0.1.0",
    "time": 1000.0,
}


def shown(record: StatusRecord | BadRecord | None, *, now: float) -> tuple[bool, str]:
    out = io.StringIO()
    console = Console(file=out, width=1000, color_system=None)
    fresh = render(console, demo_spec(), "node1", record, now)
    return fresh, out.getvalue()


def test_the_record_round_trips_through_the_file_as_typed_values(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path / "world")
    report = c.tick("node1")
    write_status(tmp_path, report)
    record, raw = read_status(tmp_path, "node1")
    assert isinstance(record, StatusRecord)
    assert record == status_record(report)
    assert record.desired_role is Role.PRIMARY and record.expected is not None
    assert record.expected.serving is True
    assert record.observed.resources[0].connection is ConnState.CONNECTED
    # The JSON keeps the readable spellings the previous version wrote.
    assert raw["desired_role"] == "Primary" and raw["time"] == report.started
    assert raw["actions"][0] == {
        "kind": "promote",
        "reason": report.plan.actions[0].reason,
        "resource": "iscsi1",
    }


def test_status_shows_the_recorded_expectation_not_a_guess_from_the_role(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path / "world")
    c.converge()
    c.world.pool_master = "node2"
    early = c.tick("node2")  # wants Primary, but node1 has not demoted yet
    assert early.plan.desired_role is Role.PRIMARY and not early.plan.serving
    assert [b.kind for b in early.plan.blocked] == [BlockKind.PEER_PRIMARY]
    write_status(tmp_path, early)
    record, _ = read_status(tmp_path, "node2")
    assert isinstance(record, StatusRecord) and record.blocked[0].kind is BlockKind.PEER_PRIMARY
    out = io.StringIO()
    render(Console(file=out, width=1000), demo_spec(), "node2", record, early.started)
    text = out.getvalue()
    assert "storage role Primary" in text
    assert "target: stopped (expected stopped)" in text  # the role alone would say "running"


def test_a_record_of_the_previous_version_still_reads(tmp_path: Path) -> None:
    status_path(tmp_path, "node1").write_text(json.dumps(PREVIOUS_VERSION_RECORD))
    record, _ = read_status(tmp_path, "node1")
    assert isinstance(record, StatusRecord)
    assert record.blocked[0].kind is None and record.blocked[0].what == "add-vip"
    assert record.warnings[0].kind is None
    assert record.warnings[0].message.startswith("replication of iscsi1 is degraded")
    assert record.expected is None
    fresh, text = shown(record, now=1001.0)
    assert fresh
    assert "target: stopped (expected not recorded)" in text
    assert "blocked add-vip: VIP 198.51.100.3 is answered by another host" in text
    assert "warning: replication of iscsi1 is degraded" in text


def test_warnings_are_written_with_their_kind_and_resource(tmp_path: Path) -> None:
    c = SimCluster.create(demo_spec(), tmp_path / "world")
    c.converge()
    c.world.set_links(replication=False, management=True)
    report = c.tick("node1")
    write_status(tmp_path, report)
    raw = json.loads(status_path(tmp_path, "node1").read_text())
    degraded = [w for w in raw["warnings"] if w["kind"] == WarningKind.DEGRADED.value]
    assert [w["resource"] for w in degraded] == ["iscsi1"]
    assert "degraded" in degraded[0]["message"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"node": "node1", "desired_ro', "not JSON"),  # truncated
        (b"\xff\xfe\x00garbage", "cannot read it"),  # not even text
        (b"[1, 2, 3]", "a JSON list"),  # valid JSON, wrong kind
        (b'{"hello": "world"}', "desired_role"),  # someone else's file
        (
            json.dumps({**PREVIOUS_VERSION_RECORD, "time": "yesterday"}).encode(),
            "time",
        ),
        (
            json.dumps({**PREVIOUS_VERSION_RECORD, "desired_role": "Leader"}).encode(),
            "desired_role",
        ),
    ],
)
def test_a_corrupt_or_foreign_record_is_reported_plainly(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    status_path(tmp_path, "node1").write_bytes(content)
    record, _ = read_status(tmp_path, "node1")
    assert isinstance(record, BadRecord) and problem in record.problem, record
    fresh, text = shown(record, now=1001.0)
    assert not fresh
    assert "unreadable status record" in text and problem in text
    assert "no status record yet" not in text


def test_no_file_is_no_record(tmp_path: Path) -> None:
    assert read_status(tmp_path, "node1") == (None, None)
    fresh, text = shown(None, now=0.0)
    assert not fresh and "no status record yet" in text
