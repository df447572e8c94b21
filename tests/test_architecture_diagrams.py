"""docs/architecture.md carries the planner's state diagrams, exported from transitions."""

from __future__ import annotations

import re

import pytest

from reconciler.core.diagram import mermaid
from tests.simcluster import ROOT


@pytest.mark.parametrize("which", ["resource", "serving"])
def test_diagram_in_docs_matches_the_planner(which: str) -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    found = re.search(
        rf"<!-- BEGIN GENERATED: {which} -->\n```mermaid\n(.*?)\n```\n"
        rf"<!-- END GENERATED: {which} -->",
        text,
        re.S,
    )
    assert found, f"no generated {which} diagram block in docs/architecture.md"
    assert found.group(1) == mermaid(which), (
        "the state diagram in docs/architecture.md is stale: run `python -m reconciler.docgen`"
    )


def test_diagram_shows_the_safety_guard() -> None:
    assert "promote [promotion_allowed]" in mermaid("resource")
