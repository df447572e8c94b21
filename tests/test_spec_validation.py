"""The spec loader: shipped specs load, and every kind of bad input is reported at its exact
``line:column`` with the field path and what was expected - by ``load_spec`` and by
``reconcile validate`` (exit 2, never a traceback) - and nothing but ``SpecError`` ever escapes.

Bad documents are made by editing the text of specs/demo.yaml; expected positions are computed
from the edited text (see ``at``), so they stay right when the demo changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.spec import StorageCluster
from reconciler.core.specload import SpecError, SpecProblem, load_spec

ROOT = Path(__file__).resolve().parent.parent
DEMO_FILE = ROOT / "specs" / "demo.yaml"
DEMO = DEMO_FILE.read_text(encoding="utf-8")
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))


# --- helpers -----------------------------------------------------------------------------------


def edit(text: str, old: str, new: str) -> str:
    """Replace the one occurrence of ``old`` (fail loudly if the base text changed)."""
    assert text.count(old) == 1, f"expected exactly one {old!r} in the base spec"
    return text.replace(old, new)


def at(text: str, snippet: str, part: str | None = None) -> tuple[int, int]:
    """1-based (line, column) of ``part`` inside the one occurrence of ``snippet`` in ``text``
    (of ``snippet`` itself when ``part`` is None)."""
    assert text.count(snippet) == 1, f"expected exactly one {snippet!r} in the document"
    offset = text.index(snippet)
    if part is not None:
        assert part in snippet
        offset += snippet.index(part)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def problems_of(text: str) -> tuple[SpecProblem, ...]:
    with pytest.raises(SpecError) as info:
        load_spec(text, filename="bad.yaml")
    assert info.value.problems, "a SpecError always holds at least one problem"
    return info.value.problems


@dataclass(frozen=True)
class Bad:
    """A bad document and the problem it must produce (among possibly others)."""

    id: str
    text: str
    line: int
    column: int
    path: str
    says: str  # a fragment of the message: what was expected
    only: bool = True  # the document has exactly this one problem


def _bad_cases() -> list[Bad]:
    cases: list[Bad] = []

    def add(
        id: str, text: str, where: tuple[int, int], path: str, says: str, only: bool = True
    ) -> None:
        cases.append(Bad(id, text, where[0], where[1], path, says, only))

    # Not a StorageCluster document at all.
    add("empty-file", "", (1, 1), "", "the file is empty")
    add("only-comments", "# nothing here\n\n   \n", (1, 1), "", "the file is empty")
    t = edit(DEMO, "      minor: 1\n", "      minor: 1: 2\n")
    add("not-yaml-colon", t, at(t, "minor: 1: 2", ": 2"), "", "not valid YAML")
    t = edit(DEMO, "[198.51.100.254]", "[198.51.100.254")
    add("not-yaml-unclosed-list", t, at(t, "  resources:", ":"), "", "not valid YAML")
    t = edit(DEMO, "    drbd: sim\n", "\tdrbd: sim\n")
    add("not-yaml-tab", t, at(t, "\tdrbd"), "", "not valid YAML")
    t = edit(DEMO, "  name: demo\n", "  name: demo\n  name: demo2\n")
    add("duplicate-yaml-key", t, at(t, "  name: demo2", "name"), "", "duplicate key")
    t = edit(DEMO, "name: demo", "name: de\x00mo")
    add("nul-character", t, at(t, "\x00"), "", "not valid YAML")
    add(
        "top-level-list",
        "- apiVersion: tandem/v1\n- kind: StorageCluster\n",
        (1, 1),
        "",
        "got a list",
    )
    add("top-level-scalar", "StorageCluster\n", (1, 1), "", "expected a mapping")

    # The document header.
    t = edit(DEMO, "apiVersion: tandem/v1", "apiVersion: tandem/v2")
    add(
        "wrong-apiVersion",
        t,
        at(t, "apiVersion: tandem/v2", "tandem/v2"),
        "apiVersion",
        "'tandem/v1'",
    )
    t = edit(DEMO, "kind: StorageCluster", "kind: Cluster")
    add("wrong-kind", t, at(t, "kind: Cluster", "Cluster"), "kind", "'StorageCluster'")
    t = DEMO[: DEMO.index("spec:\n")]
    add("missing-spec-section", t, at(t, "apiVersion"), "spec", "required field is missing")
    t = edit(DEMO, "  target:\n", "  target:\n  targetOptions:\n")
    add(
        "empty-section",
        t,
        at(t, "  target:\n", "target"),
        "spec.target",
        "valid dictionary",
        only=False,
    )

    # Unknown keys (typos) anywhere in the tree, at the line of the key.
    t = edit(
        DEMO,
        "        scsiId: tandem-iscsi1\n",
        "        scsiId: tandem-iscsi1\n        scsiID: x\n",
    )
    add(
        "unknown-key-deep",
        t,
        at(t, "scsiID", "scsiID"),
        "spec.target.luns[0].scsiID",
        "unknown field",
    )
    t = edit(DEMO, "    tickInterval: 2", "    tickIntervall: 2")
    add(
        "unknown-key-typo", t, at(t, "tickIntervall"), "spec.timings.tickIntervall", "unknown field"
    )
    t = edit(DEMO, "  vips:\n", "  true: 1\n  vips:\n")
    add("unknown-non-string-key", t, at(t, "  true: 1", "true"), "spec.True", "unknown field")

    # Missing fields and wrong types/values.
    t = edit(DEMO, "      disk: /dev/vdb\n", "")
    add(
        "missing-required-field",
        t,
        at(t, "- name: iscsi1", "name"),
        "spec.resources[0].disk",
        "required field is missing",
    )
    t = edit(DEMO, "      minor: 1\n", "      minor: one\n")
    add("string-for-int", t, at(t, "minor: one", "one"), "spec.resources[0].minor", "valid integer")
    t = edit(DEMO, "      - lun: 1\n", "      - lun: 256\n")
    add(
        "out-of-range",
        t,
        at(t, "lun: 256", "256"),
        "spec.target.luns[0].lun",
        "less than or equal to 255",
    )
    t = edit(DEMO, "    tickInterval: 2", "    tickInterval: 0")
    add(
        "zero-duration",
        t,
        at(t, "tickInterval: 0", "0"),
        "spec.timings.tickInterval",
        "greater than 0",
    )
    t = edit(DEMO, "    type: pool-master ", "    type: master ")
    add(
        "bad-enum",
        t,
        at(t, "type: master", "master"),
        "spec.roleSource.type",
        "'pool-master', 'manual' or 'static'",
    )
    t = edit(DEMO, "replicationAddress: 198.51.100.129", "replicationAddress: 198.51.100.300")
    add("bad-ip", t, at(t, "198.51.100.300"), "spec.nodes[0].replicationAddress", "IPv4 address")
    t = edit(DEMO, "replicationAddress: 198.51.100.129", "replicationAddress: 12")
    add(
        "ip-as-number",
        t,
        at(t, "replicationAddress: 12", "12"),
        "spec.nodes[0].replicationAddress",
        "IPv4 address written as text",
    )
    t = edit(DEMO, "      minor: 1\n", "      minor: 0x" + "f" * 4000 + "\n")
    add(
        "huge-number",
        t,
        at(t, "minor: 0x", "0x"),
        "spec.resources[0].minor",
        "less than or equal to 1048575",
    )

    # Exactly two nodes.
    node3 = "    - name: node3\n      replicationAddress: 198.51.100.131\n"
    t = edit(DEMO, "  roleSource:\n", node3 + "  roleSource:\n")
    add("three-nodes", t, at(t, "- name: node3", "name"), "spec.nodes", "at most 2")
    t = edit(
        DEMO,
        "    - name: node2\n"
        "      replicationAddress: 198.51.100.130\n"
        "      managementAddress: 198.51.100.2\n",
        "",
    )
    add("one-node", t, at(t, "- name: node1"), "spec.nodes[1]", "item 2 is missing")

    # Strings that could reach a command line.
    t = edit(DEMO, "    - name: node1\n", "    - name: 'node1; rm -rf /'\n")
    add(
        "unsafe-name",
        t,
        at(t, "'node1; rm -rf /'"),
        "spec.nodes[0].name",
        "expected letters, digits",
    )
    t = edit(DEMO, "disk: /dev/vdb", "disk: /dev/../etc/passwd")
    add(
        "device-path-dotdot",
        t,
        at(t, "/dev/../etc/passwd"),
        "spec.resources[0].disk",
        "block device path under /dev",
    )
    t = edit(DEMO, "disk: /dev/vdb", "disk: vdb")
    add(
        "device-path-relative",
        t,
        at(t, "disk: vdb", "vdb"),
        "spec.resources[0].disk",
        "block device path under /dev",
    )
    t = edit(DEMO, "iqn: iqn.2024-01.org", "iqn: iqn.24-01.org")
    add("bad-iqn", t, at(t, "iqn.24-01"), "spec.target.iqn", "iSCSI qualified name")
    t = edit(DEMO, "initiators: [ALL]", "initiators: [ALL, 'host; reboot']")
    add(
        "bad-initiator",
        t,
        at(t, "[ALL, "),
        "spec.target.initiators",
        "is not 'ALL', an IPv4 address/network or an IQN",
    )
    t = edit(DEMO, "interface: eth0", "interface: eth0-with-a-very-long-name")
    add("bad-interface", t, at(t, "eth0-with"), "spec.vips[0].interface", "Linux interface name")
    t = edit(DEMO, "scsiSn: TANDEM0001", "scsiSn: TANDEM 0001")
    add(
        "bad-scsi-sn",
        t,
        at(t, "TANDEM 0001"),
        "spec.target.luns[0].scsiSn",
        "expected SCSI identifier text",
    )

    # Rules inside one section.
    t = edit(DEMO, "    type: pool-master ", "    type: static ")
    add(
        "static-without-preferred",
        t,
        at(t, "type: static", "type"),
        "spec.roleSource",
        "needs 'preferred'",
    )
    t = edit(
        DEMO,
        "  alerts:\n    syslog: false\n",
        "  alerts:\n    mail:\n      enabled: true\n    syslog: false\n",
    )
    add(
        "mail-without-recipients",
        t,
        at(t, "enabled: true", "enabled"),
        "spec.alerts.mail",
        "'to' lists no recipient",
    )
    t = edit(
        DEMO,
        "      managementAddress: 198.51.100.1\n",
        "      managementAddress: 198.51.100.1\n      transport: netns\n",
    )
    add(
        "netns-without-namespace",
        t,
        at(t, "- name: node1", "name"),
        "spec.nodes[0]",
        "transport 'netns' needs 'namespace'",
    )

    # Rules across sections: reported at the field that breaks them.
    t = edit(DEMO, "    - name: node2\n", "    - name: node1\n")
    add(
        "duplicate-node-names",
        t,
        at(t, "- name: node1\n      replicationAddress: 198.51.100.130", "node1"),
        "spec.nodes[1].name",
        "distinct names",
    )
    t = edit(DEMO, "        resource: iscsi1\n", "        resource: iscsi9\n")
    add(
        "lun-undeclared-resource",
        t,
        at(t, "iscsi9"),
        "spec.target.luns[0].resource",
        "'iscsi9', which is not declared",
    )
    t = edit(DEMO, "address: 198.51.100.3/24", "address: 198.51.100.1/24")
    add(
        "vip-is-node-address",
        t,
        at(t, "198.51.100.1/24"),
        "spec.vips[0].address",
        "also a node address",
    )
    t = edit(DEMO, "    type: pool-master ", "    type: static\n    preferred: node7 ")
    add(
        "preferred-not-a-node",
        t,
        at(t, "preferred: node7", "node7"),
        "spec.roleSource.preferred",
        "not one of the nodes (node1, node2)",
    )
    resource2 = "    - name: iscsi2\n      minor: 1\n      disk: /dev/vdc\n"
    t = edit(DEMO, "  vips:\n", resource2 + "  vips:\n")
    add(
        "duplicate-minor",
        t,
        at(t, "- name: iscsi2\n      minor: 1", "1"),
        "spec.resources[1].minor",
        "duplicate DRBD minor: 1",
    )
    resource2 = "    - name: iscsi1\n      minor: 2\n      disk: /dev/vdc\n"
    t = edit(DEMO, "  vips:\n", resource2 + "  vips:\n")
    add(
        "duplicate-resource-name",
        t,
        at(t, "- name: iscsi1\n      minor: 2", "iscsi1"),
        "spec.resources[1].name",
        "duplicate resource name",
    )
    lun2 = (
        "      - lun: 1\n        resource: iscsi1\n        scsiId: other\n        scsiSn: OTHER\n"
    )
    t = edit(DEMO, "    initiators:", lun2 + "    initiators:")
    add(
        "duplicate-lun-number",
        t,
        at(t, "- lun: 1\n        resource: iscsi1\n        scsiId: other", "1"),
        "spec.target.luns[1].lun",
        "duplicate LUN number: 1",
    )
    vip2 = "    - address: 198.51.100.3/25\n      interface: eth1\n"
    t = edit(DEMO, "  target:\n", vip2 + "  target:\n")
    add(
        "duplicate-vip",
        t,
        at(t, "198.51.100.3/25"),
        "spec.vips[1].address",
        "duplicate VIP address",
    )
    return cases


BAD = _bad_cases()


def test_bad_cases_are_distinct() -> None:
    assert len({c.id for c in BAD}) == len(BAD)
    assert len({c.text for c in BAD}) == len(BAD)
    assert len(BAD) >= 14


# --- the shipped specs -------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_load(path: Path) -> None:
    spec = load_spec(path.read_text(encoding="utf-8"), filename=str(path))
    assert isinstance(spec, StorageCluster)
    assert len(spec.node_names) == 2


def test_shipped_specs_include_the_demo_and_the_reference_design() -> None:
    assert {p.name for p in SHIPPED} >= {"demo.yaml", "xenserver-pool.yaml"}


def test_embedded_demo_is_identical_to_specs_demo() -> None:
    embedded = ROOT / "reconciler" / "demo.yaml"
    assert embedded.read_bytes() == DEMO_FILE.read_bytes(), (
        "reconciler/demo.yaml (embedded in the package) differs from specs/demo.yaml: "
        "cp specs/demo.yaml reconciler/demo.yaml"
    )


# --- load_spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_input_is_reported_at_its_position(case: Bad) -> None:
    problems = problems_of(case.text)
    matching = [
        p for p in problems if (p.line, p.column, p.path) == (case.line, case.column, case.path)
    ]
    shown = "\n".join(p.format("bad.yaml") for p in problems)
    assert matching, f"expected {case.line}:{case.column} {case.path!r}; got:\n{shown}"
    assert case.says in matching[0].message, shown
    if case.only:
        assert len(problems) == 1, shown
    rendered = SpecError(problems, "bad.yaml").render()
    prefix = f"bad.yaml:{case.line}:{case.column}: "
    assert prefix + (f"{case.path}: " if case.path else "") + matching[0].message in rendered


def test_a_typo_reports_the_unknown_key_and_the_missing_one() -> None:
    text = edit(DEMO, "        scsiSn: TANDEM0001\n", "        scsiSN: TANDEM0001\n")
    problems = problems_of(text)
    assert [(p.line, p.column, p.path) for p in problems] == [
        (*at(text, "- lun: 1", "lun"), "spec.target.luns[0].scsiSn"),
        (*at(text, "scsiSN"), "spec.target.luns[0].scsiSN"),
    ]
    assert problems[0].message == "required field is missing"
    assert problems[1].message.startswith("unknown field")


def test_every_problem_is_reported_in_file_order() -> None:
    text = edit(DEMO, "      minor: 1\n", "      minor: one\n")
    text = edit(text, "apiVersion: tandem/v1", "apiVersion: v2")
    text = edit(text, "    tickInterval: 2", "    tickInterval: -1")
    problems = problems_of(text)
    assert [p.path for p in problems] == [
        "apiVersion",
        "spec.resources[0].minor",
        "spec.timings.tickInterval",
    ]
    assert [p.line for p in problems] == sorted(p.line for p in problems)


def test_messages_show_the_offending_value() -> None:
    (problem,) = problems_of(edit(DEMO, "disk: /dev/vdb", "disk: '/dev/vdb; reboot'"))
    assert problem.message == (
        "expected a block device path under /dev (no spaces, no '..') (got '/dev/vdb; reboot')"
    )


def test_nesting_too_deep_is_a_spec_error() -> None:
    (problem,) = problems_of("[" * 5000 + "]" * 5000)
    assert (problem.line, problem.column) == (1, 1)
    assert "nested too deeply" in problem.message


@pytest.mark.parametrize(
    "text", ["0x" + "f" * 4000, "- 0x" + "f" * 4000, "9" * 5000], ids=["hex", "item", "decimal"]
)
def test_numbers_too_large_to_print_are_spec_errors(text: str) -> None:
    (problem,) = problems_of(text)
    assert (problem.line, problem.column) == (1, 1)


def test_a_key_too_large_to_print_is_a_spec_error() -> None:
    text = "? 0x" + "f" * 4000 + "\n: 1\n"
    problems = problems_of(text)
    assert any(p.path == "<a 16000-bit number>" for p in problems), problems


def test_merge_keys_are_positioned() -> None:
    """Keys merged in with `<<:` have no position of their own (once a TypeError escaped)."""
    problems = problems_of("<<: \n  ::")
    assert (":", 2, 3) in {(p.path, p.line, p.column) for p in problems}
    base = "x-node: &node\n  poolConf: relative/pool.conf\n"
    text = base + edit(DEMO, "    - name: node1\n", "    - name: node1\n      <<: *node\n")
    problems = problems_of(text)
    paths = {(p.path, p.line, p.column) for p in problems}
    assert ("x-node", 1, 1) in paths
    assert ("spec.nodes[0].poolConf", *at(text, "relative/pool.conf")) in paths


def test_alias_bombs_are_cheap() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    problems = problems_of("\n".join(lines) + "\n")  # 10**9 leaves if expanded
    assert any(p.path == "a8" and p.message.startswith("unknown field") for p in problems)


def test_valid_edits_still_load() -> None:
    """The helpers' edits are only wrong where they mean to be: the same edits done right load."""
    text = edit(DEMO, "    type: pool-master ", "    type: static\n    preferred: node2 ")
    assert load_spec(text).spec.role_source.preferred == "node2"
    text = edit(
        DEMO, "  vips:\n", "    - name: iscsi2\n      minor: 2\n      disk: /dev/vdc\n  vips:\n"
    )
    assert [r.device for r in load_spec(text).spec.resources] == ["/dev/drbd1", "/dev/drbd2"]


# --- reconcile validate ------------------------------------------------------------------------


def _reconcile() -> list[str]:
    found = shutil.which("reconcile")
    if found:
        return [found]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def validate(path: Path | str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TANDEM_SPEC", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [*_reconcile(), "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_validate_accepts_the_shipped_specs() -> None:
    for path in SHIPPED:
        run = validate(path)
        assert run.returncode == 0, run.stderr
        assert f"{path}: valid" in run.stdout


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_validate_reports_bad_input(case: Bad, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(case.text, encoding="utf-8", newline="")
    run = validate(path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    where = f"{path}:{case.line}:{case.column}: "
    expected = where + (f"{case.path}: " if case.path else "")
    lines = [line for line in run.stderr.splitlines() if line.startswith(expected)]
    assert lines, f"no line starting with {expected!r} in:\n{run.stderr}"
    assert case.says in lines[0]
    assert "nothing was changed" in run.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    run = validate(tmp_path / "nope.yaml")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"cannot read spec {tmp_path / 'nope.yaml'}" in run.stderr
    assert "No such file" in run.stderr


def test_validate_directory(tmp_path: Path) -> None:
    run = validate(tmp_path)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "cannot read spec" in run.stderr


def test_validate_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00" + bytes(range(256)))
    run = validate(path)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"cannot read spec {path}" in run.stderr
    assert "utf-8" in run.stderr


def test_validate_latin1_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(edit(DEMO, "name: demo", "name: d\xe9mo").encode("latin-1"))
    run = validate(path)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "cannot read spec" in run.stderr


def test_validate_file_name_with_brackets(tmp_path: Path) -> None:
    """File names are not rich markup (a '[/x]' once raised MarkupError: traceback, exit 1)."""
    run = validate(tmp_path / "[/x].yaml")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "[/x].yaml" in run.stderr


def test_validate_prints_values_verbatim(tmp_path: Path) -> None:
    """Values are not rich emoji codes (':smile:' once printed as a smiley)."""
    path = tmp_path / "bad.yaml"
    path.write_text(edit(DEMO, "scsiSn: TANDEM0001", "scsiSn: ':smile:'"), encoding="utf-8")
    run = validate(path)
    assert run.returncode == 2
    assert "(got ':smile:')" in run.stderr


# --- nothing but SpecError, ever ---------------------------------------------------------------


def check_never_crashes(text: str) -> None:
    try:
        spec = load_spec(text, filename="fuzz.yaml")
    except SpecError as exc:
        assert exc.problems
        lines = len(text.splitlines()) + 1
        for p in exc.problems:
            assert p.line >= 1 and p.column >= 1, p
            assert p.line <= lines, (p, lines)
            assert p.message, p
            assert p.format("fuzz.yaml").startswith(f"fuzz.yaml:{p.line}:{p.column}: ")
    else:
        assert isinstance(spec, StorageCluster)


YAML_BITS = st.sampled_from(
    [
        ":",
        ": ",
        "-",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "!!str ",
        "!!int ",
        "!tag ",
        "!!python/object:os.system ",
        "\n",
        "\n  ",
        "\n    ",
        "\t",
        "'",
        '"',
        "#",
        "? ",
        "|",
        ">",
        "%YAML 1.2\n",
        "---\n",
        "...\n",
        "<<: ",
        "~",
        "null",
        "true",
        "0x1F",
        "1e400",
        "9" * 5000,
        "0x" + "f" * 4000,
        "apiVersion",
        "kind",
        "spec",
        "metadata",
        "nodes",
        "tandem/v1",
        "\x00",
        "\ufeff",
        "\u2028",
        "\r",
        "\x85",
        "é",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_never_crashes(text: str) -> None:
    check_never_crashes(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(YAML_BITS | st.text(max_size=5), max_size=40).map("".join))
def test_yaml_like_text_never_crashes(text: str) -> None:
    check_never_crashes(text)


DEMO_LINES = DEMO.splitlines(keepends=True)


@st.composite
def mutated_demo(draw: st.DrawFn) -> str:
    lines = list(DEMO_LINES)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["delete", "replace-char", "insert-char", "duplicate", "swap"]))
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            line = lines[i]
            k = draw(st.integers(0, max(0, len(line) - 1)))
            char = draw(st.characters() | st.sampled_from(list(":-[]{}#&*!|>'\" \t\n0x.")))
            drop = 1 if how == "replace-char" else 0
            lines[i] = line[:k] + char + line[k + drop :]
    return "".join(lines)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_demo())
def test_mutated_demo_never_crashes(text: str) -> None:
    check_never_crashes(text)
