"""The spec loader: shipped specs load, and every kind of bad input is reported at its exact
``line:column`` with the field path and what was expected - by ``load_spec`` and by
``reconcile validate`` (exit 2, never a traceback) - and nothing but ``SpecError`` ever escapes.

Bad documents are made by editing the text of specs/demo.yaml; expected positions are computed
from the edited text (see ``at``), so they stay right when the demo changes.
"""

from __future__ import annotations

import copy
import datetime
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from reconciler import docgen
from reconciler.core import specload
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import (
    MAX_SPEC_BYTES,
    SpecError,
    SpecProblem,
    load_spec,
    load_spec_bytes,
)

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
    add(
        "not-yaml-colon",
        t,
        at(t, "minor: 1: 2", ": 2"),
        "",
        "not valid YAML: a ':' here starts a mapping inside a value (quote the value",
    )
    t = edit(DEMO, "[198.51.100.254]", "[198.51.100.254")
    add("not-yaml-unclosed-list", t, at(t, "  resources:", ":"), "", "not valid YAML")
    t = edit(DEMO, "    drbd: sim\n", "\tdrbd: sim\n")
    add("not-yaml-tab", t, at(t, "\tdrbd"), "", "not valid YAML: a tab: indent with spaces")
    t = DEMO + "---\napiVersion: tandem/v1\n"
    add(
        "two-documents",
        t,
        at(t, "---\n"),
        "",
        "not valid YAML: a second document ('---'): a spec is one document",
    )
    t = edit(DEMO, "  name: demo\n", "  name: demo\n  name: demo2\n")
    add("duplicate-yaml-key", t, at(t, "  name: demo2", "name"), "", "duplicate key")
    t = edit(DEMO, "name: demo", "name: de\x00mo")
    offset = len(t[: t.index("\x00")].encode())
    add("nul-character", t, at(t, "\x00"), "", f"control character U+0000 at byte offset {offset}")
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
        "expected a mapping",
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
    add(
        "string-for-int", t, at(t, "minor: one", "one"), "spec.resources[0].minor", "a whole number"
    )
    t = edit(DEMO, "      - lun: 1\n", "      - lun: 256\n")
    add(
        "out-of-range",
        t,
        at(t, "lun: 256", "256"),
        "spec.target.luns[0].lun",
        "expected at most 255 (got 256)",
    )
    t = edit(DEMO, "    tickInterval: 2", "    tickInterval: 0")
    add(
        "zero-duration",
        t,
        at(t, "tickInterval: 0", "0"),
        "spec.timings.tickInterval",
        "expected more than 0 (got 0)",
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
        "expected at most 1048575 (got a 16000-bit number)",
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
        "is also node1's managementAddress; it must float",
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

    # Holes closed by issue 11 (point 2): each was accepted, or reported in pydantic's words.
    # Two nodes sharing an address (`--once` then promoted both, or pinged itself as the peer).
    t = edit(DEMO, "replicationAddress: 198.51.100.130", "replicationAddress: 198.51.100.129")
    add(
        "same-replication-address",
        t,
        at(t, "198.51.100.129\n      managementAddress: 198.51.100.2", "198"),
        "spec.nodes[1].replicationAddress",
        "198.51.100.129 is already node1's replicationAddress; each node needs addresses",
    )
    t = edit(DEMO, "managementAddress: 198.51.100.2", "managementAddress: 198.51.100.1")
    add(
        "same-management-address",
        t,
        at(t, "198.51.100.1\n  roleSource", "198"),
        "spec.nodes[1].managementAddress",
        "198.51.100.1 is already node1's managementAddress",
    )
    t = edit(DEMO, "managementAddress: 198.51.100.2", "managementAddress: 198.51.100.129")
    add(
        "node-address-of-the-other-node",
        t,
        at(t, "managementAddress: 198.51.100.129", "198"),
        "spec.nodes[1].managementAddress",
        "198.51.100.129 is already node1's replicationAddress",
    )
    t = edit(DEMO, "replicationAddress: 198.51.100.129", "replicationAddress: 0.0.0.0")
    add(
        "node-address-unspecified",
        t,
        at(t, "0.0.0.0"),
        "spec.nodes[0].replicationAddress",
        "0.0.0.0 is the unspecified address; expected a host's unicast address",
    )
    # Heuristics that always answer (from a cluster node) cannot tell the healthy side.
    t = edit(DEMO, "[198.51.100.254]", "[198.51.100.3]")
    add(
        "heuristic-is-the-vip",
        t,
        at(t, "[198.51.100.3]", "198"),
        "spec.promotion.heuristics[0]",
        "heuristic 198.51.100.3 is a VIP",
    )
    t = edit(DEMO, "[198.51.100.254]", "[198.51.100.254, 198.51.100.130]")
    add(
        "heuristic-is-a-node-address",
        t,
        at(t, "198.51.100.130]", "198"),
        "spec.promotion.heuristics[1]",
        "heuristic 198.51.100.130 is node2's replicationAddress",
    )
    t = edit(DEMO, "[198.51.100.254]", "[198.51.100.254, 198.51.100.254]")
    add(
        "duplicate-heuristic",
        t,
        at(t, ", 198.51.100.254]", "198"),
        "spec.promotion.heuristics[1]",
        "duplicate heuristic address (each address counts once toward the majority)",
    )
    t = edit(DEMO, "[198.51.100.254]", "[127.0.0.1]")
    add(
        "heuristic-loopback",
        t,
        at(t, "127.0.0.1"),
        "spec.promotion.heuristics[0]",
        "127.0.0.1 is a loopback address",
    )
    # The target driver: 'lio' was accepted and silently run as tgt.
    t = edit(DEMO, "driver: tgt", "driver: lio")
    add(
        "driver-lio",
        t,
        at(t, "driver: lio", "lio"),
        "spec.target.driver",
        "not implemented yet: only tgt is supported",
    )
    # VIP addresses.
    t = edit(DEMO, "address: 198.51.100.3/24", "address: 198.51.100.3")
    add(
        "vip-without-prefix",
        t,
        at(t, "address: 198.51.100.3\n", "198"),
        "spec.vips[0].address",
        "expected an address with its prefix, e.g. 198.51.100.3/24",
    )
    t = edit(DEMO, "address: 198.51.100.3/24", "address: 198.51.100.0/24")
    add(
        "vip-network-address",
        t,
        at(t, "198.51.100.0/24"),
        "spec.vips[0].address",
        "198.51.100.0 is the network address of 198.51.100.0/24",
    )
    t = edit(DEMO, "address: 198.51.100.3/24", "address: 198.51.100.3/33")
    add(
        "vip-bad-prefix",
        t,
        at(t, "198.51.100.3/33"),
        "spec.vips[0].address",
        "expected an IPv4 address with its prefix, e.g. 10.0.0.3/24 (got '198.51.100.3/33')",
    )
    # Wrong YAML types are errors (pydantic's lax mode turned `minor: true` into 1) and are
    # reported in the product's words.
    t = edit(DEMO, "      minor: 1\n", "      minor: true\n")
    add(
        "bool-for-int",
        t,
        at(t, "minor: true", "true"),
        "spec.resources[0].minor",
        "expected a whole number (got true)",
    )
    t = edit(DEMO, "      minor: 1\n", "      minor: 1.0\n")
    add(
        "float-for-int",
        t,
        at(t, "minor: 1.0", "1.0"),
        "spec.resources[0].minor",
        "expected a whole number (got 1.0)",
    )
    t = edit(DEMO, "      - lun: 1\n", "      - lun: '1'\n")
    add(
        "text-for-int",
        t,
        at(t, "lun: '1'", "'1'"),
        "spec.target.luns[0].lun",
        "expected a whole number (got '1')",
    )
    t = edit(DEMO, "    tickInterval: 2", "    tickInterval: .nan")
    add(
        "nan-duration",
        t,
        at(t, ".nan"),
        "spec.timings.tickInterval",
        "expected a finite number (got nan)",
    )
    t = edit(DEMO, "    tickInterval: 2", "    tickInterval: yes")
    add(
        "text-for-duration",
        t,
        at(t, "tickInterval: yes", "yes"),
        "spec.timings.tickInterval",
        "expected a number (got 'yes')",
    )
    t = edit(DEMO, "    syslog: false", "    syslog: 1")
    add(
        "int-for-bool",
        t,
        at(t, "syslog: 1", "1"),
        "spec.alerts.syslog",
        "expected true or false (got 1)",
    )
    t = edit(DEMO, "  name: demo", "  name: 2024-01-01")
    add(
        "date-for-text",
        t,
        at(t, "2024-01-01"),
        "metadata.name",
        "expected text (got the date 2024-01-01; quote it to make it text)",
    )
    t = edit(DEMO, "  name: demo", "  name: !custom demo")
    add(
        "tagged-value",
        t,
        at(t, "!custom demo"),
        "metadata.name",
        "expected text (got a value tagged !custom (a spec uses no YAML tags))",
    )
    t = edit(DEMO, "      minor: 1\n", "      minor: 2024-13-45\n")
    add(
        "unreadable-date",
        t,
        at(t, "2024-13-45"),
        "",
        "not valid YAML: cannot read '2024-13-45' as a date (quote it to make it text)",
    )
    t = edit(DEMO, "      minor: 1\n", "      minor: !!int one\n")
    add(
        "unreadable-tagged-int",
        t,
        at(t, "!!int one"),
        "",
        "not valid YAML: cannot read 'one' as an integer",
    )
    t = edit(
        DEMO, "    - address: 198.51.100.3/24\n      interface: eth0\n", "    - 198.51.100.3/24\n"
    )
    add(
        "text-for-mapping",
        t,
        at(t, "- 198.51.100.3/24", "198"),
        "spec.vips[0]",
        "expected a mapping (indented 'key: value' lines) (got '198.51.100.3/24')",
    )
    t = edit(DEMO, "initiators: [ALL]", "initiators: ALL")
    add(
        "text-for-list",
        t,
        at(t, "initiators: ALL", "ALL"),
        "spec.target.initiators",
        "expected a list ('- item' lines or [a, b]) (got 'ALL')",
    )
    t = edit(DEMO, "metadata:\n  name: demo\n", "metadata: [demo]\n")
    add(
        "list-for-mapping",
        t,
        at(t, "[demo]"),
        "metadata",
        "expected a mapping (indented 'key: value' lines) (got a list)",
    )
    # One device, disk or LUN identity used twice.
    resource2 = "    - name: iscsi2\n      minor: 2\n      disk: /dev/vdb\n"
    t = edit(DEMO, "  vips:\n", resource2 + "  vips:\n")
    add(
        "duplicate-disk",
        t,
        at(t, "disk: /dev/vdb\n  vips", "/dev"),
        "spec.resources[1].disk",
        "duplicate backing disk (two resources would overwrite each other's data): /dev/vdb",
    )
    resource2 = "    - name: iscsi2\n      minor: 2\n      disk: /dev/drbd1\n"
    t = edit(DEMO, "  vips:\n", resource2 + "  vips:\n")
    add(
        "disk-is-a-cluster-device",
        t,
        at(t, "/dev/drbd1"),
        "spec.resources[1].disk",
        "disk /dev/drbd1 is the device of resource 'iscsi1'",
    )
    t = edit(DEMO, "      disk: /dev/vdb\n", "      disk: /dev/vdb\n      devicePath: /dev/drbd2\n")
    t = edit(t, "  vips:\n", "    - name: iscsi2\n      minor: 2\n      disk: /dev/vdc\n  vips:\n")
    add(
        "device-used-twice",
        t,
        at(t, "minor: 2\n      disk: /dev/vdc", "2"),
        "spec.resources[1].minor",
        "device /dev/drbd2 is already the device of resource 'iscsi1'",
    )
    lun2 = (
        "      - lun: 2\n        resource: iscsi1\n        scsiId: other\n        scsiSn: OTHER\n"
    )
    t = edit(DEMO, "    initiators:", lun2 + "    initiators:")
    add(
        "lun-resource-exported-twice",
        t,
        at(t, "resource: iscsi1\n        scsiId: other", "iscsi1"),
        "spec.target.luns[1].resource",
        "duplicate LUN resource",
    )
    resource2 = "    - name: iscsi2\n      minor: 2\n      disk: /dev/vdc\n"
    lun2 = (
        "      - lun: 2\n        resource: iscsi2\n        scsiId: tandem-iscsi1\n"
        "        scsiSn: OTHER\n"
    )
    t = edit(
        edit(DEMO, "  vips:\n", resource2 + "  vips:\n"),
        "    initiators:",
        lun2 + "    initiators:",
    )
    add(
        "duplicate-scsi-id",
        t,
        at(t, "tandem-iscsi1\n        scsiSn: OTHER", "tandem"),
        "spec.target.luns[1].scsiId",
        "duplicate SCSI id: tandem-iscsi1",
    )
    lun2 = (
        "      - lun: 2\n        resource: iscsi2\n        scsiId: other\n"
        "        scsiSn: TANDEM0001\n"
    )
    t = edit(
        edit(DEMO, "  vips:\n", resource2 + "  vips:\n"),
        "    initiators:",
        lun2 + "    initiators:",
    )
    add(
        "duplicate-scsi-sn",
        t,
        at(t, "scsiSn: TANDEM0001\n    initiators", "TANDEM"),
        "spec.target.luns[1].scsiSn",
        "duplicate SCSI serial number: TANDEM0001",
    )
    # Fields that were silently ignored or failed only when used.
    t = edit(
        DEMO,
        "      managementAddress: 198.51.100.1\n",
        "      managementAddress: 198.51.100.1\n      namespace: ns1\n",
    )
    add(
        "namespace-without-netns",
        t,
        at(t, "namespace: ns1", "ns1"),
        "spec.nodes[0].namespace",
        "'namespace' is only used with transport 'netns'",
    )
    mail = '  alerts:\n    mail:\n      subject: "storage\\nBcc: all@example.com"\n'
    t = edit(DEMO, "  alerts:\n", mail)
    add(
        "mail-subject-two-lines",
        t,
        at(t, '"storage'),
        "spec.alerts.mail.subject",
        "expected one line of text",
    )
    t = edit(DEMO, "  alerts:\n", "  alerts:\n    mail:\n      to: ['Ops <ops@example.com>']\n")
    add(
        "mail-address-with-name",
        t,
        at(t, "'Ops <"),
        "spec.alerts.mail.to[0]",
        "expected a plain mail address, e.g. ops@example.com",
    )
    return cases


BAD = _bad_cases()


@dataclass(frozen=True)
class BadBytes:
    """A file's raw bytes and the one problem they must produce (always with no field path)."""

    id: str
    data: bytes
    line: int
    column: int
    says: str


def _pad_to_limit(text: str) -> bytes:
    """``text`` followed by comment lines: exactly MAX_SPEC_BYTES bytes, still the same spec."""
    data = text.encode()
    filler = MAX_SPEC_BYTES - len(data)
    lines, rest = divmod(filler, 80)
    data += (b"#" * 79 + b"\n") * lines
    data += b"#" * (rest - 1) + b"\n" if rest else b""
    assert len(data) == MAX_SPEC_BYTES
    return data


PADDED_DEMO = _pad_to_limit(DEMO)
TOO_LARGE = f"larger than {MAX_SPEC_BYTES // 1024} KiB ({MAX_SPEC_BYTES} bytes)"


def _bad_bytes() -> list[BadBytes]:
    latin1 = edit(DEMO, "name: demo", "name: d\xe9mo").encode("latin-1")
    offset = latin1.index(b"\xe9")
    line, column = at(edit(DEMO, "name: demo", "name: d\xe9mo"), "\xe9")
    ctrl = DEMO.encode().replace(b"name: demo", b"name: de\x1bmo", 1)
    escape = ctrl.index(b"\x1b")
    return [
        BadBytes(
            "png",
            b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00" + bytes(range(256)),
            1,
            1,
            "this is a PNG image (byte offset 0), not a YAML spec",
        ),
        BadBytes("gzip", b"\x1f\x8b\x08\x00" + bytes(64), 1, 1, "this is a gzip archive"),
        BadBytes(
            "latin-1",
            latin1,
            line,
            column,
            f"not UTF-8 text: byte 0xe9 at byte offset {offset} is not valid UTF-8",
        ),
        BadBytes(
            "invalid-utf8-start",
            b"apiVersion: tandem/v1\nkind: \xc0\xaf\n",  # an overlong '/': never valid UTF-8
            2,
            7,
            "not UTF-8 text: byte 0xc0 at byte offset 28",
        ),
        BadBytes("utf-16", DEMO.encode("utf-16"), 1, 1, "the file is UTF-16 text; save"),
        BadBytes(
            "control-bytes",
            bytes(range(0x20)),
            1,
            1,
            "control character U+0000 at byte offset 0",
        ),
        BadBytes(
            "escape-character",
            ctrl,
            *at(DEMO.replace("name: demo", "name: de\x1bmo", 1), "\x1b"),
            f"control character U+001B at byte offset {escape}",
        ),
        BadBytes(
            "ten-megabytes",
            DEMO.encode() + (b"#" * 99 + b"\n") * 100_000,
            1,
            1,
            f"the file is {TOO_LARGE}, the most a spec may be",
        ),
        BadBytes(
            "one-byte-too-many",
            PADDED_DEMO + b"\n",
            1,
            1,
            TOO_LARGE,
        ),
    ]


BAD_BYTES = _bad_bytes()


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


@pytest.mark.parametrize("case", BAD_BYTES, ids=lambda c: c.id)
def test_bad_bytes_are_reported_with_their_offset(case: BadBytes) -> None:
    with pytest.raises(SpecError) as info:
        load_spec_bytes(case.data, filename="bad.yaml")
    (problem,) = info.value.problems
    assert (problem.line, problem.column, problem.path) == (case.line, case.column, ""), problem
    assert case.says in problem.message


def test_the_size_limit_is_checked_before_parsing() -> None:
    """An oversized document is refused for its size even when its first line is not YAML (the
    parser never ran), as text and as bytes; a document of exactly the limit is parsed."""
    text = "a: [\n" + "#" * MAX_SPEC_BYTES
    for data in (text, text.encode()):
        with pytest.raises(SpecError) as info:
            load_spec(data) if isinstance(data, str) else load_spec_bytes(data)
        (problem,) = info.value.problems
        assert TOO_LARGE in problem.message
    # The limit is in bytes: half as many 'é' as the limit allows bytes are two bytes each.
    with pytest.raises(SpecError) as info:
        load_spec("# " + "é" * (MAX_SPEC_BYTES // 2))
    assert TOO_LARGE in info.value.problems[0].message
    assert load_spec_bytes(PADDED_DEMO).metadata.name == "demo"


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


@pytest.mark.parametrize("case", BAD_BYTES, ids=lambda c: c.id)
def test_validate_reports_bad_bytes(case: BadBytes, tmp_path: Path) -> None:
    """Binary junk, another encoding, an oversized file: exit 2 with the byte offset and its
    line:column (invalid UTF-8 was "cannot read spec ...: 'utf-8' codec can't decode byte 0x89
    in position 0: invalid start byte"; a 10 MB file took 18 s to be refused)."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(case.data)
    run = validate(path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "codec" not in run.stderr
    expected = f"{path}:{case.line}:{case.column}: "
    lines = [line for line in run.stderr.splitlines() if line.startswith(expected)]
    assert lines, f"no line starting with {expected!r} in:\n{run.stderr}"
    assert case.says in lines[0], run.stderr
    assert "nothing was changed" in run.stderr


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


# --- the product's words, never the libraries' ------------------------------------------------

# Phrases of pydantic's and ruamel's default messages (and of Python's), e.g. "Input should be a
# valid dictionary or instance of Vip", "'abc' is not a valid float range".
LIBRARY_WORDING = (
    "Input should",
    "Input is not",
    "valid dictionary",
    "instance of",
    "union_tag",
    "model_type",
    "Value error",
    "Assertion failed",
    "function-after",
    "function-before",
    "function-wrap",
    "[type=",
    "pydantic",
    "For further information",
    "errors.pydantic.dev",
    "ruamel",
    "codec",
    "NoneType",
    "tuple",
    "dictionary",
    "float range",
    "unable to",
)

# One value of each YAML kind; each is wrong for most fields.
WRONG_VALUES: dict[str, object] = {
    "text": "abc",
    "empty-text": "",
    "long-text": "x" * 300,
    "address-like-text": "10.0.0.1",
    "integer": 7,
    "negative": -3,
    "huge-integer": 10**30,
    "fraction": 1.5,
    "nan": float("nan"),
    "infinity": float("inf"),
    "true": True,
    "nothing": None,
    "list": [1, 2],
    "empty-list": [],
    "nested-list": [[1]],
    "mapping": {"a": 1},
    "empty-mapping": {},
    "date": datetime.date(2024, 1, 1),
}


def _complete_document() -> dict[str, Any]:
    """The demo with every field present (defaults written out), and every optional list or
    value filled in, so that every field of every model has a path to put a wrong value at."""
    doc: dict[str, Any] = load_spec(DEMO).model_dump(mode="json", by_alias=True)
    doc["spec"]["roleSource"].update(type="static", preferred="node1")
    doc["spec"]["alerts"]["mail"]["to"] = ["ops@example.com"]
    doc["spec"]["resources"][0]["devicePath"] = "/srv/iscsi1.img"
    doc["spec"]["target"]["chap"] = {"secretsFile": "/etc/tandem/chap.yaml", "mutual": True}
    doc["spec"]["witness"]["endpoints"] = ["http://192.0.2.9:2379"]
    doc["spec"]["witness"]["watchdog"] = {"device": "/dev/watchdog", "timeout": 5.0}
    load_spec(_yaml_text(doc))  # still valid
    return doc


def _yaml_text(doc: object) -> str:
    yaml = YAML()
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _paths(node: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [path] if path else []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        found += _paths(value, (*path, key))
    return found


def _with(doc: object, path: tuple[str | int, ...], value: object) -> Any:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)
    return doc


COMPLETE = _complete_document()
FIELD_PATHS = _paths(COMPLETE)


def test_the_complete_document_reaches_every_model_field() -> None:
    keys = {str(p[-1]) for p in FIELD_PATHS}
    models: list[type[BaseModel]] = [StorageCluster]
    while models:
        model = models.pop()
        for name, info in model.model_fields.items():
            assert (info.alias or name) in keys, f"{model.__name__}.{name} is never exercised"
            models += docgen._models_in(info.annotation)


def _leaks(problems: Sequence[SpecProblem]) -> list[str]:
    return [
        p.format("bad.yaml")
        for p in problems
        if any(w.lower() in p.message.lower() for w in LIBRARY_WORDING)
    ]


@pytest.mark.parametrize("kind", WRONG_VALUES)
def test_no_library_wording_for_any_wrong_value_in_any_field(kind: str) -> None:
    """Each kind of wrong value at every field (and every section and list item): the messages
    are the product's. A failure lists every message that leaks, to translate in _message.

    Validates the data directly (what load_spec does once the YAML is read; positions are
    covered by the cases above): 1,400 documents through the YAML parser would take minutes."""
    leaks: list[str] = []
    for path in FIELD_PATHS:
        try:
            StorageCluster.model_validate(_with(COMPLETE, path, WRONG_VALUES[kind]))
        except ValidationError as exc:
            problems = specload._problems(exc, CommentedMap())
            assert problems
            leaks += [f"{path}: {line}" for line in _leaks(problems)]
    assert not leaks, "\n".join(leaks)


WHOLE_DOCUMENT_KINDS = ("text", "fraction", "true", "nothing", "list", "date")


def _every_leaf(node: object, value: object) -> object:
    if isinstance(node, dict):
        return {k: _every_leaf(v, value) for k, v in node.items()}
    if isinstance(node, list):
        return [_every_leaf(v, value) for v in node]
    return copy.deepcopy(value)


def _every_section(doc: dict[str, Any], value: object) -> dict[str, Any]:
    return {
        **{k: copy.deepcopy(value) for k in doc if k != "spec"},
        "spec": {k: copy.deepcopy(value) for k in doc["spec"]},
    }


def _wrong_document(kind: str, where: str) -> str:
    value = WRONG_VALUES[kind]
    doc = (
        _every_leaf(COMPLETE, value) if where == "every-field" else _every_section(COMPLETE, value)
    )
    return _yaml_text(doc)


@pytest.mark.parametrize("kind", WHOLE_DOCUMENT_KINDS)
@pytest.mark.parametrize("where", ["every-field", "every-section"])
def test_load_spec_uses_no_library_wording(kind: str, where: str) -> None:
    problems = problems_of(_wrong_document(kind, where))
    assert len(problems) > 1
    assert not _leaks(problems), "\n".join(_leaks(problems))


@pytest.mark.parametrize("kind", WHOLE_DOCUMENT_KINDS)
@pytest.mark.parametrize("where", ["every-field", "every-section"])
def test_validate_uses_no_library_wording(kind: str, where: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_wrong_document(kind, where), encoding="utf-8")
    run = validate(path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    problems = [line for line in run.stderr.splitlines() if line.startswith(f"{path}:")]
    assert len(problems) > 1, run.stderr
    leaking = [line for line in problems if any(w.lower() in line.lower() for w in LIBRARY_WORDING)]
    assert not leaking, "\n".join(leaking)


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
