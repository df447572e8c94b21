"""Load a spec from YAML text, with every error tied to ``file:line:column`` and a field path.

Pure: takes text, returns a ``StorageCluster`` or raises ``SpecError`` holding every problem
found. Never lets a YAML or pydantic exception escape (the CLI turns ``SpecError`` into exit 2
without a traceback, whatever the input: empty, not YAML, a list, wrong types, unknown keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler.core.spec import PATTERN_HELP, StorageCluster


@dataclass(frozen=True, slots=True)
class SpecProblem:
    line: int  # 1-based
    column: int  # 1-based
    path: str
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(Exception):
    def __init__(self, problems: Sequence[SpecProblem], filename: str = "<spec>") -> None:
        self.problems = tuple(problems)
        self.filename = filename
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.format(self.filename) for p in self.problems)


def load_spec(text: str, *, filename: str = "<spec>") -> StorageCluster:
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise SpecError(
            [SpecProblem(line, col, "", f"not valid YAML: {problem}")], filename
        ) from None
    except YAMLError as exc:
        raise SpecError([SpecProblem(1, 1, "", f"not valid YAML: {exc}")], filename) from None
    if data is None:
        raise SpecError(
            [SpecProblem(1, 1, "", "the file is empty; expected a StorageCluster document")],
            filename,
        )
    if not isinstance(data, CommentedMap):
        kind = "a list" if isinstance(data, CommentedSeq) else f"a {type(data).__name__}"
        raise SpecError(
            [
                SpecProblem(
                    1, 1, "", f"expected a mapping (apiVersion, kind, metadata, spec), got {kind}"
                )
            ],
            filename,
        )
    try:
        return StorageCluster.model_validate(_plain(data))
    except ValidationError as exc:
        raise SpecError(_problems(exc, data), filename) from None


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers -> plain dicts/lists (keys as strings)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _problems(exc: ValidationError, root: CommentedMap) -> list[SpecProblem]:
    out: list[SpecProblem] = []
    errors = exc.errors(include_url=False)
    deeper = {tuple(e["loc"][:-1]) for e in errors if len(e["loc"]) > 1}
    for err in errors:
        if err["type"] == "too_short" and any(
            d[: len(err["loc"])] == tuple(err["loc"]) for d in deeper
        ):
            continue  # an item failed: its own error says why; "too short" is noise
        loc = [p for p in err["loc"] if not _is_union_tag(p)]
        line, col = _position(root, loc, key=err["type"] == "extra_forbidden")
        out.append(SpecProblem(line, col, _path(loc), _message(err)))
    out.sort(key=lambda p: (p.line, p.column, p.path))
    return out


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the union member's type name (e.g. 'function-after[...]') into loc.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _path(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _message(err: Any) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see docs/spec-reference.md)"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        pattern = str((err.get("ctx") or {}).get("pattern", ""))
        msg = PATTERN_HELP.get(pattern, msg)
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    value = err.get("input")
    if (
        kind not in ("missing",)
        and isinstance(value, str | int | float | bool)
        and len(str(value)) < 80
    ):
        return f"{msg} (got {value!r})"
    return msg


def _position(root: Any, loc: Sequence[Any], *, key: bool) -> tuple[int, int]:
    """Line/column (1-based) of the deepest node of ``loc`` present in the YAML."""
    node = root
    line, col = 1, 1
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            kl, kc = node.lc.key(part)
            vl, vc = node.lc.value(part)
            if last and key:
                return kl + 1, kc + 1
            line, col = (vl + 1, vc + 1)
            if not isinstance(node[part], CommentedMap | CommentedSeq):
                line, col = vl + 1, vc + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            il, ic = node.lc.item(part)
            line, col = il + 1, ic + 1
            node = node[part]
        else:
            if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
                return node.lc.line + 1, node.lc.col + 1
            return line, col
    return line, col
