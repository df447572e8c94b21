"""Table tests of the DRBD output parsers over captured fixtures, plus fuzzing.

Fixtures live in tests/fixtures/drbd/ (provenance in SOURCES.md). Every parser must turn any
text into a ``ParseResult`` without raising; the fuzz tests check that, and the invariants of
every ``ResourceObs`` it returns, for arbitrary text and for mutated real fixtures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.drbd.parse import (
    ParseResult,
    parse_events2,
    parse_proc_drbd,
    parse_status_json,
    parse_status_text,
)
from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "drbd"
MINORS = {n: f"r{n}" for n in range(10)}

P, S, U = Role.PRIMARY, Role.SECONDARY, Role.UNKNOWN
C = ConnState
D = DiskState


def _proc(text: str, split_brain: frozenset[str] = frozenset()) -> ParseResult:
    return parse_proc_drbd(text, MINORS, split_brain)


PARSERS: dict[str, Callable[..., ParseResult]] = {
    "json": parse_status_json,
    "status": parse_status_text,
    "events2": parse_events2,
    "proc": _proc,
}


def parser_for(fixture: str) -> Callable[..., ParseResult]:
    """The fixture's name starts with its format: json_, status9_/status84_, events2_, proc8x_."""
    return next(parse for prefix, parse in PARSERS.items() if fixture.startswith(prefix))


def read(fixture: str) -> str:
    return (FIXTURES / fixture).read_text()


@dataclass(frozen=True)
class Want:
    role: Role
    conn: ConnState
    disk: DiskState
    peer_role: Role
    peer_disk: DiskState
    sync: float | None = None


CASES: dict[str, dict[str, Want]] = {
    # ---- drbdsetup status --json (DRBD 9)
    "json_connected_two_resources.json": {
        "1-single-0": Want(S, C.CONNECTED, D.UPTODATE, P, D.UPTODATE),
        "1-single-1": Want(S, C.CONNECTED, D.UPTODATE, P, D.UPTODATE),
    },
    "json_sync_source.json": {
        "iscsi1": Want(P, C.SYNC_SOURCE, D.UPTODATE, S, D.INCONSISTENT, 45.21),
    },
    "json_standalone_primary.json": {
        "iscsi1": Want(P, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
    },
    "json_two_volumes_sync_target.json": {
        # volume 0 is Established/UpToDate, volume 1 SyncTarget/Inconsistent: worst wins
        "iscsi1": Want(S, C.SYNC_TARGET, D.INCONSISTENT, P, D.UPTODATE, 19.0),
    },
    # ---- drbdsetup/drbdadm status text, DRBD 9
    "status9_sync_source_done.txt": {
        "single": Want(P, C.SYNC_SOURCE, D.UPTODATE, S, D.INCONSISTENT, 96.47),
    },
    "status9_two_resources_two_volumes.txt": {
        "res": Want(P, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
        "test": Want(P, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
    },
    "status9_connecting_inconsistent.txt": {
        "wwwdata": Want(S, C.CONNECTING, D.INCONSISTENT, U, D.DUNKNOWN),
    },
    "status9_sync_source_no_done.txt": {
        "wwwdata": Want(P, C.SYNC_SOURCE, D.UPTODATE, S, D.INCONSISTENT, None),
    },
    "status9_sync_target_three_nodes.txt": {
        # node2 is the sync source, node3 a diskless peer: both folded pessimistically
        "my_ssd_res": Want(S, C.SYNC_TARGET, D.INCONSISTENT, S, D.DISKLESS, 19.4),
    },
    "status9_connecting_consistent_multi.txt": {
        "lab-sysprep": Want(S, C.CONNECTING, D.CONSISTENT, U, D.DUNKNOWN),
        "srv00-sql1": Want(S, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
        "srv01-lab01": Want(S, C.CONNECTING, D.CONSISTENT, U, D.DUNKNOWN),
        "srv02-lab02": Want(S, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
    },
    "status9_standalone_split_brain.txt": {
        "iscsi1": Want(P, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
    },
    "status9_verbose_connecting_outdated_peer.txt": {
        # --verbose keeps the peer's disk state while disconnected
        "iscsi1": Want(S, C.CONNECTING, D.UPTODATE, U, D.OUTDATED),
    },
    # ---- drbd-utils 9 on an 8.4 kernel (connection "peer", replication:Established)
    "status84_sync_source.txt": {
        "datos": Want(P, C.SYNC_SOURCE, D.UPTODATE, S, D.INCONSISTENT, 1.86),
    },
    "status84_established.txt": {
        "datos": Want(P, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
    },
    "status84_dual_primary_wrapped.txt": {
        "datos": Want(P, C.CONNECTED, D.UPTODATE, P, D.UPTODATE),
    },
    # ---- /proc/drbd (8.0 - 8.4), minors named r<minor>
    "proc84_mixed.txt": {
        "r0": Want(P, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
        "r1": Want(S, C.CONNECTED, D.UPTODATE, P, D.UPTODATE),
        "r4": Want(P, C.WF_CONNECTION, D.UPTODATE, U, D.DUNKNOWN),
        "r6": Want(S, C.CONNECTED, D.DISKLESS, P, D.UPTODATE),
        "r8": Want(S, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
    },
    "proc84_sync_source.txt": {
        "r0": Want(P, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
        "r5": Want(S, C.SYNC_SOURCE, D.UPTODATE, S, D.INCONSISTENT, 68.5),
    },
    "proc83_sync_target.txt": {
        "r0": Want(S, C.SYNC_TARGET, D.INCONSISTENT, P, D.UPTODATE, 44.4),
    },
    "proc80_st_format.txt": {
        "r0": Want(P, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
        "r1": Want(S, C.CONNECTED, D.UPTODATE, P, D.UPTODATE),
        "r4": Want(P, C.WF_CONNECTION, D.UPTODATE, U, D.DUNKNOWN),
        "r5": Want(P, C.CONNECTED, D.UPTODATE, S, D.DISKLESS),
        "r6": Want(S, C.CONNECTED, D.DISKLESS, P, D.UPTODATE),
        "r7": Want(S, C.WF_CONNECTION, D.UPTODATE, U, D.DUNKNOWN),
        "r8": Want(S, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
    },
    "proc84_dual_primary.txt": {
        "r1": Want(P, C.CONNECTED, D.UPTODATE, P, D.UPTODATE),
    },
    "proc84_split_brain_node1.txt": {
        "r0": Want(S, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
    },
    "proc84_split_brain_node2.txt": {
        "r0": Want(P, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
    },
    # ---- drbdsetup events2
    "events2_drbdtop_sync_source.txt": {
        "test0": Want(P, C.SYNC_SOURCE, D.UPTODATE, S, D.INCONSISTENT),
    },
    "events2_stream_sync.txt": {
        "some-resource": Want(S, C.SYNC_SOURCE, D.UPTODATE, S, D.INCONSISTENT, 37.5),
    },
    "events2_stream_helper_diskless.txt": {
        "some-resource": Want(S, C.STANDALONE, D.DISKLESS, U, D.DUNKNOWN),
    },
    "events2_now_84compat_two_resources.txt": {
        "iscsi1": Want(P, C.CONNECTED, D.UPTODATE, S, D.UPTODATE),
        "iscsi2": Want(S, C.CONNECTING, D.OUTDATED, U, D.DUNKNOWN),
    },
    "events2_stream_split_brain.txt": {
        "iscsi1": Want(P, C.STANDALONE, D.UPTODATE, U, D.DUNKNOWN),
    },
}


def test_every_fixture_has_a_case_and_a_source() -> None:
    files = {p.name for p in FIXTURES.iterdir() if p.name != "SOURCES.md"}
    assert files == set(CASES)
    sources = (FIXTURES / "SOURCES.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|", sources, re.MULTILINE))
    assert listed == files
    assert len(files) >= 16


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_fixture_table(fixture: str) -> None:
    result = parser_for(fixture)(read(fixture))
    assert result.error is None
    assert set(result.resources) == set(CASES[fixture])
    for name, want in CASES[fixture].items():
        obs = result.resources[name]
        got = Want(obs.role, obs.conn, obs.disk, obs.peer_role, obs.peer_disk, obs.sync_percent)
        assert got == want, name
        assert obs.name == name
        assert obs.up and obs.known and obs.error is None
        expected_sb = fixture == "events2_stream_split_brain.txt"
        assert obs.split_brain is expected_sb


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_known_split_brain_names_are_flagged(fixture: str) -> None:
    names = set(CASES[fixture])
    flagged = sorted(names)[0]
    result = parser_for(fixture)(read(fixture), frozenset({flagged, "not-in-output"}))
    assert result.resources[flagged].split_brain
    assert "not-in-output" not in result.resources
    for name in names - {flagged}:
        assert not result.resources[name].split_brain


# -------------------------------------------------------------------- "nothing configured"


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_status_text, ""),
        (parse_status_text, "\n\n"),
        (parse_status_text, "# No currently configured DRBD found.\n"),
        (parse_status_json, ""),
        (parse_status_json, "[\n]\n"),
        (parse_events2, ""),
        (parse_events2, "exists -\n"),
        (_proc, ""),
        (_proc, "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: 473968AD625BA317874A57E\n"),
        (_proc, "version: 8.4.2 (api:1/proto:86-101)\n 0: cs:Unconfigured\n 1: cs:Unconfigured\n"),
    ],
)
def test_nothing_configured_is_empty_and_ok(parse: Callable[[str], ParseResult], text: str) -> None:
    assert parse(text) == ParseResult({}, None)


# ------------------------------------------------------------------------ not the format


@pytest.mark.parametrize(
    ("parse", "text", "why"),
    [
        (parse_status_json, "{not json", "not valid JSON"),
        (parse_status_json, '{"name": "r0"}', "not a JSON list"),
        (parse_status_json, "r0 role:Primary\n  disk:UpToDate\n", "not valid JSON"),
        (parse_status_text, "  disk:UpToDate\n  peer role:Secondary\n", "not drbdsetup status"),
        (parse_events2, "Could not connect to 'drbd' generic netlink family\n", "not drbdsetup"),
        (_proc, "hello world\n", "not /proc/drbd"),
        (
            _proc,
            "version: 9.2.8 (api:2/proto:86-122)\nTransports (api:21): tcp (9.2.8)\n",
            "DRBD 9",
        ),
    ],
)
def test_wrong_format_is_an_error_without_resources(
    parse: Callable[[str], ParseResult], text: str, why: str
) -> None:
    result = parse(text)
    assert result.resources == {}
    assert result.error is not None and why in result.error
    assert not result.ok


def test_json_from_the_text_command_is_not_mistaken_for_resources() -> None:
    # Garbage that looks like resource lines: every block unreadable -> an error for the whole.
    result = parse_status_text("hello world\nfoo bar baz\n")
    assert result.error is not None and "could be read" in result.error
    assert all(not obs.known for obs in result.resources.values())


# --------------------------------------------------------------- truncation and garbage


def test_truncated_peer_line_makes_the_resource_unknown() -> None:
    text = "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    replication:SyncSo"
    obs = parse_status_text(text).resources["r0"]
    assert not obs.known and not obs.up
    assert obs.error is not None and "SyncSo" in obs.error


def test_truncated_connection_line_makes_the_resource_unknown() -> None:
    obs = parse_status_text("r0 role:Primary\n  disk:UpToDate\n  peer\n").resources["r0"]
    assert not obs.known and obs.error is not None and "connection state" in obs.error


def test_a_bad_block_does_not_spoil_its_neighbours() -> None:
    text = "r0 role:Primry\n  disk:UpToDate\n\nr1 role:Secondary\n  disk:UpToDate\n"
    result = parse_status_text(text)
    assert result.error is None
    assert not result.resources["r0"].known
    assert result.resources["r1"].known and result.resources["r1"].conn is C.STANDALONE


@pytest.mark.parametrize(
    "text",
    [
        "r0 role:Unknown\n  disk:UpToDate\n",
        "r0 role:Primary\n  disk:Unknown\n",
        "r0 role:Primary\n  disk:UpToDate\n  b connection:Unknown\n",
        "r0 role:Primary\n  disk:UpToDate\n  b role:Secondary\n    peer-disk:Unknown\n",
    ],
)
def test_unknown_is_a_word_only_for_the_peer_role(text: str) -> None:
    assert not parse_status_text(text).resources["r0"].known


def test_missing_role_is_unknown_not_guessed() -> None:
    result = parse_status_json('[{"name": "r0", "devices": [], "connections": []}]')
    assert not result.resources["r0"].known


def test_json_with_wrong_types_is_unknown() -> None:
    doc = [{"name": "r0", "role": "Primary", "devices": [{"volume": "zero", "disk-state": 3}]}]
    obs = parse_status_json(json.dumps(doc)).resources["r0"]
    assert not obs.known and obs.error is not None


def test_json_entries_without_names_are_reported() -> None:
    result = parse_status_json('[{"role": "Primary"}, 3]')
    assert result.resources == {} and result.error is not None


def test_progress_out_of_range_is_unknown() -> None:
    text = "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n"
    text += "    replication:SyncSource peer-disk:Inconsistent done:nan\n"
    assert not parse_status_text(text).resources["r0"].known


def test_ansi_colours_are_ignored() -> None:
    text = "r0 role:\x1b[1mPrimary\x1b[0m\n  disk:\x1b[32mUpToDate\x1b[0m\n"
    obs = parse_status_text(text).resources["r0"]
    assert obs.known and obs.role is P and obs.disk is D.UPTODATE


def test_stray_lines_after_a_block_are_reported() -> None:
    result = parse_status_text("r0 role:Primary\n  disk:UpToDate\n\n    junk:1\n")
    assert result.resources["r0"].known
    assert result.error is not None and "outside any resource" in result.error


# ------------------------------------------------------------------ folding and semantics


def test_resource_without_connection_is_standalone() -> None:
    # The 8.4 form after "drbdadm disconnect": no connection line at all.
    obs = parse_status_text("r0 role:Primary\n  disk:UpToDate\n").resources["r0"]
    assert obs.conn is C.STANDALONE and obs.peer_disk is D.DUNKNOWN and obs.peer_role is U


def test_resource_without_volume_is_diskless() -> None:
    obs = parse_status_json('[{"name": "r0", "role": "Secondary"}]').resources["r0"]
    assert obs.known and obs.disk is D.DISKLESS and obs.conn is C.STANDALONE


def test_unknown_peer_volume_is_worse_than_an_outdated_one() -> None:
    doc = [
        {
            "name": "r0",
            "role": "Secondary",
            "devices": [{"volume": 0, "disk-state": "UpToDate"}],
            "connections": [
                {
                    "name": "b",
                    "connection-state": "Connecting",
                    "peer-role": "Unknown",
                    "peer_devices": [
                        {"volume": 0, "replication-state": "Off", "peer-disk-state": "Outdated"},
                        {"volume": 1, "replication-state": "Off", "peer-disk-state": "DUnknown"},
                    ],
                }
            ],
        }
    ]
    obs = parse_status_json(json.dumps(doc)).resources["r0"]
    assert obs.peer_disk is D.DUNKNOWN


def test_any_primary_peer_wins() -> None:
    text = "r0 role:Secondary\n  disk:UpToDate\n  a role:Secondary\n    peer-disk:UpToDate\n"
    text += "  b role:Primary\n    peer-disk:UpToDate\n"
    assert parse_status_text(text).resources["r0"].peer_role is P


def test_connected_without_handshake_is_not_connected() -> None:
    # replication:Off on a Connected connection: the handshake has not finished.
    text = "r0 role:Secondary\n  disk:UpToDate\n  b role:Secondary\n    replication:Off\n"
    assert parse_status_text(text).resources["r0"].conn is C.WF_REPORT_PARAMS


def test_proc_volumes_of_one_resource_are_combined() -> None:
    text = read("proc84_mixed.txt")
    result = parse_proc_drbd(text, {0: "iscsi", 4: "iscsi", 9: "absent"})
    assert set(result.resources) == {"iscsi"}
    obs = result.resources["iscsi"]
    assert obs.role is P and obs.conn is C.WF_CONNECTION and obs.peer_disk is D.DUNKNOWN


def test_proc_volumes_disagreeing_on_role_are_unknown() -> None:
    result = parse_proc_drbd(read("proc84_mixed.txt"), {0: "x", 1: "x"})
    assert not result.resources["x"].known


def test_proc_truncated_device_line_is_unknown() -> None:
    text = "version: 8.4.11 (api:1/proto:86-101)\n 1: cs:Connected ro:Primary/Secondary ds:UpTo"
    obs = parse_proc_drbd(text, {1: "r1"}).resources["r1"]
    assert not obs.known


def test_events2_split_brain_clears_when_connected_again() -> None:
    text = read("events2_stream_split_brain.txt")
    text += "change connection name:iscsi1 peer-node-id:1 conn-name:xcp-b connection:Connected\n"
    text += "change peer-device name:iscsi1 peer-node-id:1 conn-name:xcp-b volume:0 "
    text += "replication:SyncSource peer-disk:Inconsistent done:3.00\n"
    obs = parse_events2(text).resources["iscsi1"]
    assert not obs.split_brain
    assert obs.conn is C.SYNC_SOURCE and obs.sync_percent == 3.0


def test_events2_destroy_removes_the_resource() -> None:
    text = read("events2_now_84compat_two_resources.txt") + "destroy resource name:iscsi2\n"
    assert set(parse_events2(text).resources) == {"iscsi1"}


def test_events2_change_lines_update_only_what_changed() -> None:
    text = read("events2_now_84compat_two_resources.txt")
    text += "change resource name:iscsi2 role:Primary\n"
    obs = parse_events2(text).resources["iscsi2"]
    assert obs.role is P and obs.disk is D.OUTDATED


# ------------------------------------------------------------------------------ fuzzing


def check_result(result: object) -> None:
    """The invariants every parser promises, whatever it was fed."""
    assert isinstance(result, ParseResult)
    assert isinstance(result.resources, dict)
    assert result.error is None or (isinstance(result.error, str) and result.error)
    for name, obs in result.resources.items():
        assert isinstance(name, str) and isinstance(obs, ResourceObs)
        assert obs.name == name
        assert isinstance(obs.role, Role) and isinstance(obs.peer_role, Role)
        assert isinstance(obs.conn, ConnState)
        assert isinstance(obs.disk, DiskState) and isinstance(obs.peer_disk, DiskState)
        assert isinstance(obs.split_brain, bool)
        if obs.known:
            assert obs.up and obs.error is None
            assert obs.role is not U and obs.conn is not C.UNKNOWN
            assert obs.disk is not D.UNKNOWN and obs.peer_disk is not D.UNKNOWN
        else:
            assert not obs.up and isinstance(obs.error, str) and obs.error
        if obs.sync_percent is not None:
            assert 0.0 <= obs.sync_percent <= 100.0
            assert obs.conn.is_syncing


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL_PARSERS = [parse_status_json, parse_status_text, parse_events2, _proc]
DRBD_WORDS = st.sampled_from(
    [
        "role:",
        "disk:",
        "peer-disk:",
        "replication:",
        "connection:",
        "volume:",
        "done:",
        "cs:",
        "ro:",
        "ds:",
        "exists",
        "change",
        "destroy",
        "resource",
        "connection",
        "peer-device",
        "device",
        "name:",
        "Primary",
        "Secondary",
        "UpToDate",
        "SyncSource",
        "StandAlone",
        "Connected",
        "-",
        " ",
        "  ",
        "    ",
        "\n",
        "0",
        "1:",
        "{",
        "}",
        "[",
        "]",
        '"',
        ",",
    ]
)


@pytest.mark.parametrize("parse", ALL_PARSERS, ids=lambda f: f.__name__)
@FUZZ
@given(text=st.text())
def test_fuzz_arbitrary_text(parse: Callable[[str], ParseResult], text: str) -> None:
    check_result(parse(text))


@pytest.mark.parametrize("parse", ALL_PARSERS, ids=lambda f: f.__name__)
@FUZZ
@given(words=st.lists(DRBD_WORDS | st.text(max_size=4), max_size=60))
def test_fuzz_drbd_flavoured_text(parse: Callable[[str], ParseResult], words: list[str]) -> None:
    check_result(parse("".join(words)))


def _mutate(data: st.DataObject, text: str) -> str:
    kind = data.draw(st.sampled_from(["truncate", "drop_line", "replace", "insert", "dup_line"]))
    lines = text.split("\n")
    if kind == "truncate":
        return text[: data.draw(st.integers(0, len(text)))]
    if kind == "drop_line":
        del lines[data.draw(st.integers(0, len(lines) - 1))]
        return "\n".join(lines)
    if kind == "dup_line":
        i = data.draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
        return "\n".join(lines)
    at = data.draw(st.integers(0, len(text)))
    noise = data.draw(st.text(min_size=1, max_size=8) | DRBD_WORDS)
    if kind == "replace":
        return text[:at] + noise + text[at + len(noise) :]
    return text[:at] + noise + text[at:]


@pytest.mark.parametrize("fixture", sorted(CASES))
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_fixtures(fixture: str, data: st.DataObject) -> None:
    text = read(fixture)
    for _ in range(data.draw(st.integers(1, 3))):
        text = _mutate(data, text)
    result = parser_for(fixture)(text, frozenset({"r0", "iscsi1"}))
    check_result(result)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "role",
                    "devices",
                    "volume",
                    "disk-state",
                    "connections",
                    "connection-state",
                    "peer-role",
                    "peer_devices",
                    "replication-state",
                    "peer-disk-state",
                    "percent-resync-done",
                    "percent-in-sync",
                ]
            )
            | st.text(max_size=6),
            inner,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@FUZZ
@given(doc=JSON_VALUES)
def test_fuzz_json_structures(doc: object) -> None:
    check_result(parse_status_json(json.dumps(doc)))
    check_result(parse_status_json(json.dumps([doc])))
