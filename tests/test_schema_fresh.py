"""specs/schema.json and docs/spec-reference.md are generated from the spec models: they must
match what ``python -m reconciler.docgen`` would write now."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from reconciler import docgen

ROOT = Path(__file__).resolve().parent.parent
FIX = f"the spec models changed: run `{docgen.COMMAND}` and commit the result"


def _on_disk(relative: Path) -> str:
    path = ROOT / relative
    assert path.exists(), f"{relative} is missing: run `{docgen.COMMAND}`"
    return path.read_text(encoding="utf-8")


def test_schema_json_is_fresh() -> None:
    assert _on_disk(docgen.SCHEMA_FILE) == docgen.render_schema(), (
        f"{docgen.SCHEMA_FILE} is stale; {FIX}"
    )


def test_spec_reference_is_fresh() -> None:
    example = (ROOT / docgen.EXAMPLE_FILE).read_text(encoding="utf-8")
    assert _on_disk(docgen.REFERENCE_FILE) == docgen.render_reference(example), (
        f"{docgen.REFERENCE_FILE} is stale; {FIX}"
    )


def test_check_mode_passes_on_this_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert docgen.main(["--check"]) == 0, capsys.readouterr().err


def test_check_mode_names_stale_files_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "specs").mkdir()
    shutil.copy(ROOT / docgen.EXAMPLE_FILE, tmp_path / docgen.EXAMPLE_FILE)
    (tmp_path / docgen.SCHEMA_FILE).write_text("{}\n", encoding="utf-8")

    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"specs/schema.json is stale; run: {docgen.COMMAND}" in err
    assert f"docs/spec-reference.md is stale; run: {docgen.COMMAND}" in err
    assert (tmp_path / docgen.SCHEMA_FILE).read_text(encoding="utf-8") == "{}\n"
    assert not (tmp_path / docgen.REFERENCE_FILE).exists()

    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 0
    assert (tmp_path / docgen.SCHEMA_FILE).read_text(encoding="utf-8") == _on_disk(
        docgen.SCHEMA_FILE
    )
    assert (tmp_path / docgen.REFERENCE_FILE).read_text(encoding="utf-8") == _on_disk(
        docgen.REFERENCE_FILE
    )


def test_schema_is_stable_json_with_a_trailing_newline() -> None:
    text = docgen.render_schema()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text == docgen.render_schema()
    loaded = json.loads(text)
    assert loaded["$schema"] == docgen.JSON_SCHEMA_DIALECT
    assert loaded["title"] == "StorageCluster"
    assert loaded["additionalProperties"] is False
    assert list(loaded["properties"]) == ["apiVersion", "kind", "metadata", "spec"]


def _plain(node: object) -> object:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_match_the_schema(path: Path) -> None:
    schema = json.loads(_on_disk(docgen.SCHEMA_FILE))
    jsonschema.Draft202012Validator.check_schema(schema)
    document = _plain(YAML(typ="safe").load(path.read_text(encoding="utf-8")))
    jsonschema.Draft202012Validator(schema).validate(document)


def test_schema_rejects_a_typo() -> None:
    schema = json.loads(_on_disk(docgen.SCHEMA_FILE))
    document = _plain(YAML(typ="safe").load((ROOT / docgen.EXAMPLE_FILE).read_text()))
    assert isinstance(document, dict)
    document["spec"]["timings"]["tickIntervall"] = 3
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
    assert any("tickIntervall" in e.message for e in errors)


def test_reference_has_a_section_per_model_in_document_order() -> None:
    example = (ROOT / docgen.EXAMPLE_FILE).read_text(encoding="utf-8")
    text = docgen.render_reference(example)
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    models = headings[headings.index("StorageCluster") :]
    assert models[:4] == ["StorageCluster", "Metadata", "ClusterSpec", "Node"]
    schema = json.loads(docgen.render_schema())
    objects = {name for name, d in schema["$defs"].items() if d.get("type") == "object"}
    assert set(models) == objects | {"StorageCluster"}
    assert example.strip() in text


def test_importing_docgen_does_no_io() -> None:
    """Only running it reads specs/ or writes docs/: importing it opens neither."""
    probe = (
        "import sys\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and (\n"
        "        '/specs/' in args[0] or '/docs/' in args[0]\n"
        "    ):\n"
        "        seen.append(args[0])\n"
        "sys.addaudithook(hook)\n"
        "import reconciler.docgen\n"
        "print(seen)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert run.stdout.strip() == "[]", run.stdout
