"""Generate ``specs/schema.json`` and ``docs/spec-reference.md`` from the spec models.

    python -m reconciler.docgen          # (re)write both files
    python -m reconciler.docgen --check  # exit 1 naming each stale file; write nothing

Both outputs are pure functions of ``reconciler.core.spec`` (and, for the example in the
reference, of ``specs/demo.yaml``), so a test can regenerate them in memory and compare.
Importing this module does no I/O.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from reconciler.core.spec import StorageCluster
from reconciler.core.specload import MAX_SPEC_BYTES
from reconciler.core.spectypes import PATTERN_HELP

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = Path("specs/schema.json")
REFERENCE_FILE = Path("docs/spec-reference.md")
EXAMPLE_FILE = Path("specs/demo.yaml")
COMMAND = "python -m reconciler.docgen"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_LIMIT = f"{MAX_SPEC_BYTES // 1024} KiB"

# Intros for models without a docstring (a docstring, when one is added, takes precedence).
_INTRO_FALLBACK: dict[str, str] = {
    "Metadata": "Identifies the cluster (used in alerts and status).",
    "ClusterSpec": "The desired state of the cluster.",
    "Target": "The iSCSI target that exports the DRBD devices on the primary.",
    "Lun": "One logical unit of the target, backed by one DRBD resource.",
    "Timings": "How often the agent ticks, and how long it waits and retries. All in seconds.",
    "Alerts": "How the agent reports problems.",
    "Mail": "Alert mail through an SMTP server.",
}

# Rules that involve more than one field (the model validators in reconciler/core/spec.py).
_RULES: dict[str, tuple[str, ...]] = {
    "Node": ("`transport: netns` requires `namespace`; `namespace` is only used with `netns`.",),
    "Promotion": (
        "Heuristic addresses are unique, and none is a VIP or a node's address: an address that "
        "answers from a cluster node cannot tell which side still sees the outside world.",
    ),
    "RoleSource": (
        "`type: static` requires `preferred`.",
        "`preferred` must be the name of one of the two nodes.",
    ),
    "LivenessTimings": ("`timeout` is at most `interval`.",),
    "Adapters": (
        "`liveness: sim` requires `drbd: sim`; absent, `liveness` is `sim` when `drbd`, `vip` "
        "and `target` are all `sim`, else `ping`.",
    ),
    "Mail": ("`enabled: true` requires at least one address in `to`.",),
    "Target": (
        "`driver: lio` is refused (not implemented yet: only tgt is supported).",
        "Every entry of `initiators` is `ALL`, an IPv4 address or network, or an initiator IQN.",
        "LUN numbers, SCSI ids and SCSI serial numbers are unique; every LUN's `resource` is "
        "declared under `spec.resources`, and no resource is exported by two LUNs.",
    ),
    "ClusterSpec": (
        "The two nodes have different names, and share no address (one node may use one "
        "address for both its replication and management links).",
        "Resource names, DRBD minors, backing disks and devices (`devicePath` or "
        "`/dev/drbd<minor>`) are unique, and no resource's disk is a device of the cluster.",
        "VIP addresses are unique, and no VIP is a node's replication or management address "
        "(a VIP must float).",
    ),
}


# --- JSON Schema -------------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    """The JSON Schema of a spec document (YAML keys, i.e. aliases; what a file may contain)."""
    generated = StorageCluster.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, **generated}


def render_schema() -> str:
    # pydantic emits keys in a stable order (properties in declaration order, i.e. document
    # order; everything else sorted), so the file only changes when the models do.
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


# --- Markdown reference ------------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Model classes mentioned by a field annotation (``tuple[Node, Node]`` -> [Node])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        for model in _models_in(arg):
            if model not in found:
                found.append(model)
    return found


def _walk(
    model: type[BaseModel], path: str, via: FieldInfo | None
) -> Iterator[tuple[type[BaseModel], str, FieldInfo | None]]:
    """Every model in document order (depth first, fields in declaration order) with its
    YAML path and the field that leads to it."""
    yield model, path, via
    props = _model_schema(model).get("properties", {})
    for name, info in model.model_fields.items():
        key = info.alias or name
        prop = props.get(key, {})
        sub = f"{path}.{key}" if path else key
        if prop.get("type") == "array":
            sub += "[]"
        for child in _models_in(info.annotation):
            yield from _walk(child, sub, info)


def _root_schema() -> dict[str, Any]:
    return StorageCluster.model_json_schema(by_alias=True, mode="validation")


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    root = _root_schema()
    if model is StorageCluster:
        return root
    found: dict[str, Any] = root["$defs"][model.__name__]
    return found


def _anchor(name: str) -> str:
    return f"#{name.lower()}"


def _one_of(values: Sequence[Any]) -> str:
    shown = [f"`{v}`" for v in values]
    return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = str(prop["$ref"]).rsplit("/", 1)[-1]
        target = defs.get(name, {})
        if "enum" in target:
            return _one_of(target["enum"])
        return f"[{name}]({_anchor(name)})"
    if "anyOf" in prop:
        branches = [b for b in prop["anyOf"] if b.get("type") != "null"]
        text = " or ".join(_type_text(b, defs) for b in branches)
        return f"{text} or null" if len(branches) < len(prop["anyOf"]) else text
    if "const" in prop:
        return _one_of([prop["const"]])
    if "enum" in prop:
        return _one_of(prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            items = [_type_text(p, defs) for p in prop["prefixItems"]]
            if len(set(items)) == 1 and prop.get("maxItems") == len(items):
                return f"list of exactly {len(items)} {items[0]}"
            return "list: " + ", ".join(items)
        text = f"list of {_type_text(prop.get('items', {}), defs)}"
        if prop.get("minItems"):
            text += f" (at least {prop['minItems']})"
        return text
    if kind == "string":
        fmt = prop.get("format")
        if fmt == "ipv4":
            return "IPv4 address"
        if fmt == "ipv4interface":
            return "IPv4 address/prefix"
        if "maxLength" in prop:
            return f"string (at most {prop['maxLength']} characters)"
        return "string"
    if kind in ("integer", "number"):
        bounds = []
        if "minimum" in prop:
            bounds.append(f"≥ {_number(prop['minimum'])}")
        if "exclusiveMinimum" in prop:
            bounds.append(f"> {_number(prop['exclusiveMinimum'])}")
        if "maximum" in prop:
            bounds.append(f"≤ {_number(prop['maximum'])}")
        if "exclusiveMaximum" in prop:
            bounds.append(f"< {_number(prop['exclusiveMaximum'])}")
        name = "integer" if kind == "integer" else "number"
        return f"{name} {', '.join(bounds)}" if bounds else name
    if kind == "boolean":
        return "boolean"
    if kind == "object":
        return "mapping"
    return "any"


def _pattern(prop: dict[str, Any]) -> str | None:
    if "pattern" in prop:
        return str(prop["pattern"])
    for branch in prop.get("anyOf", ()):
        if "pattern" in branch:
            return str(branch["pattern"])
    return None


def _format_help(pattern: str) -> str:
    text = PATTERN_HELP.get(pattern)
    if text is None:
        return f"Must match `{pattern}`."
    text = text.removeprefix("expected ")
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "—"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, BaseModel):
        return "`{}` (all defaults)"
    return f"`{_yaml_value(to_jsonable_python(value))}`"


def _cell(text: str) -> str:
    # '<' could open an HTML tag and '|' would end the cell; '>' is harmless inside a table.
    return text.replace("<", "&lt;").replace("|", "\\|").replace("\n", " ").strip()


def _description(prop: dict[str, Any]) -> str:
    text = str(prop.get("description", "")).strip()
    pattern = _pattern(prop)
    if pattern is not None:
        fmt = _format_help(pattern)
        if text.rstrip(".") != fmt.rstrip("."):
            text = f"{text} {fmt}".strip() if text else fmt
    return text


def _intro(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    if "Usage docs:" in doc:  # pydantic's own BaseModel docstring, never a model's
        doc = ""
    return doc or _INTRO_FALLBACK.get(model.__name__, "")


def _section(
    model: type[BaseModel], path: str, via: FieldInfo | None, defs: dict[str, Any]
) -> list[str]:
    name = model.__name__
    lines = [f"## {name}", ""]
    where = f"`{path}`" if path else "the document root"
    intro = _intro(model)
    if not intro and via is not None and via.description:
        intro = via.description
    lines.append(f"At {where}. {intro}".rstrip())
    lines.append("")
    lines.append("| Key | Type | Default | Required | Description |")
    lines.append("| --- | --- | --- | --- | --- |")
    props = _model_schema(model).get("properties", {})
    for field_name, info in model.model_fields.items():
        key = info.alias or field_name
        prop = props.get(key, {})
        description = _description(prop)
        if not description:  # a field holding a model: say what that model is for
            description = " ".join(_intro(m) for m in _models_in(info.annotation))
        row = [
            f"`{key}`",
            _type_text(prop, defs),
            _default_text(info),
            "yes" if info.is_required() else "no",
            description,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    rules = _RULES.get(name, ())
    if rules:
        lines.append("")
        lines.append("Rules across fields:")
        lines.append("")
        lines.extend(f"- {rule}" for rule in rules)
    lines.append("")
    return lines


def render_reference(example: str) -> str:
    """The Markdown reference; ``example`` is the text of a complete spec (specs/demo.yaml)."""
    defs: dict[str, Any] = _root_schema().get("$defs", {})
    sections = list(_walk(StorageCluster, "", None))
    out = [
        "# Spec reference: `StorageCluster` (`tandem/v1`)",
        "",
        f"<!-- Generated by `{COMMAND}` from reconciler/core/spec.py. Do not edit by hand. -->",
        "",
        "A spec is one YAML document that describes the desired state of a two-node storage "
        "cluster: the two nodes, the DRBD resources replicated between them, the floating "
        "addresses (VIPs) and the iSCSI target that follow the primary, who decides which node "
        "is primary, and how the agent times, retries and alerts. Every node runs "
        "`reconcile` on the same file.",
        "",
        "- Keys are camelCase. An unknown key is an error, so a typo never turns into a silent "
        "default.",
        "- Every string that can reach a command line (names, devices, interfaces, IQNs, paths) "
        "must match a conservative format, given per field below.",
        "- Durations are in seconds; fractions are allowed.",
        "- Values are read as YAML types, not converted: a number is not text (`lun: '1'` is an "
        "error), `true` is not a number, `1` is not `true`, a date (`2024-01-01`) is not text "
        "unless quoted. YAML tags (`!foo`) are not used.",
        f"- A spec is a UTF-8 text file of at most {_LIMIT}; a larger, binary or otherwise "
        "encoded file is refused before it is parsed, with the byte offset of the problem.",
        "- `reconcile validate -f FILE` checks a file: it exits 0, or exits 2 and prints "
        "`file:line:column: field.path: what was expected` for every problem.",
        f"- [`{SCHEMA_FILE.as_posix()}`](../{SCHEMA_FILE.as_posix()}) is the JSON Schema of a "
        "spec, for editors: with the YAML language server, start a spec with "
        "`# yaml-language-server: $schema=<path to specs/schema.json>`.",
        "",
        "## Contents",
        "",
    ]
    for model, path, _via in sections:
        shown = f" (`{path}`)" if path else " (document root)"
        out.append(f"- [{model.__name__}]({_anchor(model.__name__)}){shown}")
    out += [
        "",
        "## Example",
        "",
        f"The simulated demo cluster, [`{EXAMPLE_FILE.as_posix()}`](../{EXAMPLE_FILE.as_posix()}) "
        "(embedded in the `reconcile` command as its default spec). "
        "[`specs/xenserver-pool.yaml`](../specs/xenserver-pool.yaml) is the reference design on "
        "real hardware.",
        "",
        "```yaml",
        example.rstrip("\n"),
        "```",
        "",
    ]
    for model, path, via in sections:
        out += _section(model, path, via, defs)
    return "\n".join(out).rstrip("\n") + "\n"


# --- files -------------------------------------------------------------------------------------


ARCHITECTURE_FILE = "docs/architecture.md"


def render_architecture(current: str) -> str:
    """docs/architecture.md with its generated state-diagram blocks brought up to date
    (the prose around them is hand-written and kept as it is)."""
    import re

    from reconciler.core.diagram import mermaid

    text = current
    for which in ("resource", "serving"):
        begin, end = f"<!-- BEGIN GENERATED: {which} -->", f"<!-- END GENERATED: {which} -->"
        block = f"{begin}\n```mermaid\n{mermaid(which)}\n```\n{end}"
        pattern = re.escape(begin) + r".*?" + re.escape(end)
        text = re.sub(pattern, block.replace("\\", "\\\\"), text, flags=re.S)
    return text


def generate(root: Path = REPO_ROOT) -> dict[Path, str]:
    """What each generated file should contain (reads the example spec; writes nothing)."""
    example = (root / EXAMPLE_FILE).read_text(encoding="utf-8")
    outputs = {
        root / SCHEMA_FILE: render_schema(),
        root / REFERENCE_FILE: render_reference(example),
    }
    arch = root / ARCHITECTURE_FILE
    if arch.exists():
        outputs[arch] = render_architecture(arch.read_text(encoding="utf-8"))
    return outputs


def _stale(outputs: dict[Path, str]) -> list[Path]:
    stale: list[Path] = []
    for path, text in outputs.items():
        try:
            current: str | None = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            stale.append(path)
    return stale


def stale_files(root: Path = REPO_ROOT) -> list[Path]:
    """Generated files whose content on disk (or absence) differs from what would be written."""
    return _stale(generate(root))


def write_all(root: Path = REPO_ROOT) -> list[Path]:
    """Write every generated file that differs; return the ones written."""
    outputs = generate(root)
    written: list[Path] = []
    for path in _stale(outputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs[path], encoding="utf-8", newline="\n")
        written.append(path)
    return written


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=f"Generate {SCHEMA_FILE} and {REFERENCE_FILE} from the spec models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and name each file that is out of date",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT,
        help="the repository checkout (default: the one this module is in)",
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.check:
        stale = stale_files(root)
        for path in stale:
            print(f"{_shown(path, root)} is stale; run: {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    written = write_all(root)
    for path in written:
        print(f"wrote {_shown(path, root)}")
    if not written:
        print("up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
