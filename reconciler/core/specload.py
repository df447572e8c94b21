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
from ruamel.yaml.reader import ReaderError

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
    try:
        return _load(text, filename)
    except RecursionError:
        raise SpecError(
            [SpecProblem(1, 1, "", "the document is nested too deeply to be a StorageCluster")],
            filename,
        ) from None


def _load(text: str, filename: str) -> StorageCluster:
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
    except ReaderError as exc:
        # A character YAML does not allow (NUL, other control characters): report where it is.
        line, col = _line_col(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1])
        raise SpecError(
            [SpecProblem(line, col, "", f"not valid YAML: {exc.reason} (character #x{char:04x})")],
            filename,
        ) from None
    except YAMLError as exc:
        raise SpecError([SpecProblem(1, 1, "", f"not valid YAML: {exc}")], filename) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # ruamel's constructors can fail outside YAMLError, e.g. an integer of more than 4300
        # digits (ValueError from int()): still a bad spec, never a traceback.
        raise SpecError(
            [SpecProblem(1, 1, "", f"not valid YAML: cannot read a value ({exc})")], filename
        ) from None
    if data is None:
        raise SpecError(
            [SpecProblem(1, 1, "", "the file is empty; expected a StorageCluster document")],
            filename,
        )
    if not isinstance(data, CommentedMap):
        kind = "a list" if isinstance(data, CommentedSeq) else f"the single value {_short(data)}"
        raise SpecError(
            [
                SpecProblem(
                    1, 1, "", f"expected a mapping (apiVersion, kind, metadata, spec), got {kind}"
                )
            ],
            filename,
        )
    try:
        return StorageCluster.model_validate(_plain(data, {}))
    except ValidationError as exc:
        raise SpecError(_problems(exc, data), filename) from None


def _line_col(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    position = max(0, min(position, len(text)))
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def _text(value: Any) -> str:
    """str(), also for a YAML integer too large for it (str() raises beyond 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<a {value.bit_length()}-bit number>"
    return str(value)


def _short(value: Any) -> str:
    text = repr(_text(value))
    return text if len(text) <= 40 else text[:37] + "...'"


def _plain(node: Any, seen: dict[int, Any]) -> Any:
    """ruamel's round-trip containers -> plain dicts/lists (keys as strings).

    A node reached again through a YAML alias is converted once and shared, so anchors that
    reference each other (a "billion laughs" document) cannot blow up time or memory.
    """
    if not isinstance(node, dict | list):
        return node
    if id(node) in seen:
        return seen[id(node)]
    if isinstance(node, dict):
        plain_map: dict[str, Any] = {}
        seen[id(node)] = plain_map
        for k, v in node.items():
            plain_map[_text(k)] = _plain(v, seen)
        return plain_map
    plain_list: list[Any] = []
    seen[id(node)] = plain_list
    plain_list.extend(_plain(v, seen) for v in node)
    return plain_list


def _problems(exc: ValidationError, root: CommentedMap) -> list[SpecProblem]:
    out: list[SpecProblem] = []
    errors = exc.errors(include_url=False)
    deeper = {tuple(e["loc"][:-1]) for e in errors if len(e["loc"]) > 1}
    for err in errors:
        if err["type"] == "too_short" and any(
            d[: len(err["loc"])] == tuple(err["loc"]) for d in deeper
        ):
            continue  # an item failed: its own error says why; "too short" is noise
        raw = list(err["loc"])
        key = err["type"] == "extra_forbidden"
        # An unknown key is the last part of its loc even when it looks like a union tag.
        loc = [
            p
            for i, p in enumerate(raw)
            if not (_is_union_tag(p) and not (key and i == len(raw) - 1))
        ]
        ctx = err.get("ctx") or {}
        if err["type"] == "cross_field":
            loc += list(ctx.get("at", ()))  # the field that breaks a model-level rule
        where = list(loc)
        if err["type"] == "too_long" and isinstance(ctx.get("max_length"), int):
            where.append(ctx["max_length"])  # point at the first item too many
        line, col = _position(root, where, key=key)
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
    ctx = err.get("ctx") or {}
    if kind == "missing":
        index = err["loc"][-1] if err["loc"] else None
        if isinstance(index, int):
            return f"the list is too short: item {index + 1} is missing"
        return "required field is missing"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s), got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} item(s), got {ctx.get('actual_length')}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        msg = PATTERN_HELP.get(pattern, f"expected text matching {pattern}").rstrip(".")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    value = err.get("input")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        # str() of a huge int raises ValueError (more than 4300 digits); none would fit anyway.
        return f"{msg} (got a {value.bit_length()}-bit number)"
    if isinstance(value, str | int | float | bool) and len(str(value)) < 80:
        return f"{msg} (got {value!r})"
    return msg


def _position(root: Any, loc: Sequence[Any], *, key: bool) -> tuple[int, int]:
    """Line/column (1-based) of the deepest node of ``loc`` present in the YAML."""
    node = root
    line, col = 1, 1
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and (part := _key(node, part)) is not None:
            owner = _owner(node, part)
            kpos, vpos = _pos(owner.lc.key, part), _pos(owner.lc.value, part)
            if kpos is None or vpos is None:
                # No position known: point at the mapping, or go on into the value.
                if node.lc.line is not None:
                    line, col = node.lc.line + 1, node.lc.col + 1
                if last or node[part] is None:
                    return line, col
                node = node[part]
                continue
            if (last and key) or node[part] is None:
                # An empty value (`target:`) has no position of its own: ruamel reports the
                # next token, often on a later line. Point at the key.
                return kpos[0] + 1, kpos[1] + 1
            line, col = vpos[0] + 1, vpos[1] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            ipos = _pos(node.lc.item, part)
            if ipos is not None:
                line, col = ipos[0] + 1, ipos[1] + 1
            node = node[part]
        else:
            if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
                return node.lc.line + 1, node.lc.col + 1
            return line, col
    return line, col


def _pos(lookup: Any, part: Any) -> tuple[int, int] | None:
    """ruamel's recorded (line, column) of a key/value/item; None (or KeyError) if it has none."""
    try:
        pos = lookup(part)
    except (KeyError, IndexError, TypeError):
        return None
    return (int(pos[0]), int(pos[1])) if pos is not None else None


def _owner(node: CommentedMap, part: Any) -> CommentedMap:
    """The mapping whose text holds key ``part``: ``node``, or one merged into it (`<<: *a`)."""
    todo, seen = [node], set()
    while todo:
        candidate = todo.pop(0)
        if id(candidate) in seen:
            continue
        seen.add(id(candidate))
        if _pos(candidate.lc.key, part) is not None:
            return candidate
        todo += [m for m in getattr(candidate, "merge", None) or () if isinstance(m, CommentedMap)]
    return node


def _key(node: CommentedMap, part: Any) -> Any:
    """The YAML key that ``part`` stands for (pydantic sees keys as strings: `5:` is '5')."""
    if part in node:
        return part
    return next((k for k in node if _text(k) == str(part)), None)
