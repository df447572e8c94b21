"""Load a spec from YAML text, with every error tied to ``file:line:column`` and a field path.

Pure: takes text (``load_spec``) or a file's bytes (``load_spec_bytes``), returns a
``StorageCluster`` or raises ``SpecError`` holding every problem found. Never lets a YAML or
pydantic exception escape (the CLI turns ``SpecError`` into exit 2 without a traceback, whatever
the input: empty, binary, too large, not YAML, a list, wrong types, unknown keys).

Messages are the product's own: pydantic's and ruamel's default wording ("Input should be a
valid dictionary or instance of Vip") never reaches the user; ``_message`` translates each error
type, and tests/test_spec_validation.py feeds every kind of wrong value to every field to keep
it so. A document larger than ``MAX_SPEC_BYTES`` is refused before it is parsed (ruamel reads
about 100 KB of dense YAML a second: a multi-megabyte file would otherwise take many seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from reconciler.core.spec import StorageCluster
from reconciler.core.spectypes import PATTERN_HELP


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


# A spec is a few kilobytes; the largest sensible one (255 LUNs, each with its own resource) is
# about 40 KB. Anything larger is the wrong file, refused before parsing: ruamel's pure-Python
# parser reads dense YAML at about 100 KB a second, so the limit also bounds the time a legal
# file can take (tests/bench/spec_load.py prints the figures).
MAX_SPEC_BYTES = 128 * 1024
_LIMIT_TEXT = f"{MAX_SPEC_BYTES // 1024} KiB"

# Magic numbers of files that end up passed as a spec by mistake.
_BINARY_KINDS = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"\xfd7zXZ", "an xz archive"),
    (b"BZh", "a bzip2 archive"),
)
_UTF16_32_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def load_spec_bytes(data: bytes, *, filename: str = "<spec>") -> StorageCluster:
    """A spec file's raw bytes: too large, binary or not UTF-8 is a ``SpecError`` (with the byte
    offset and its line:column), else the decoded text goes to ``load_spec``."""
    if len(data) > MAX_SPEC_BYTES:  # a reader may stop at MAX_SPEC_BYTES + 1
        raise SpecError([_TOO_LARGE], filename)
    for bom, encoding in _UTF16_32_BOMS:
        if data.startswith(bom):
            raise SpecError(
                [SpecProblem(1, 1, "", f"the file is {encoding} text; save the spec as UTF-8")],
                filename,
            )
    kind = next((what for magic, what in _BINARY_KINDS if data.startswith(magic)), None)
    if kind is not None:
        raise SpecError(
            [SpecProblem(1, 1, "", f"this is {kind} (byte offset 0), not a YAML spec")], filename
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _byte_line_col(data, exc.start)
        byte = data[exc.start]
        raise SpecError(
            [
                SpecProblem(
                    line,
                    col,
                    "",
                    f"not UTF-8 text: byte 0x{byte:02x} at byte offset {exc.start} is not valid "
                    "UTF-8 (a spec is a UTF-8 YAML file: save it as UTF-8, or is this a binary "
                    "file?)",
                )
            ],
            filename,
        ) from None
    return load_spec(text, filename=filename)


_TOO_LARGE = SpecProblem(
    1,
    1,
    "",
    f"the file is larger than {_LIMIT_TEXT} ({MAX_SPEC_BYTES} bytes), the most a spec may be "
    "- is this the right file?",
)


def _byte_line_col(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset."""
    start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def load_spec(text: str, *, filename: str = "<spec>") -> StorageCluster:
    # Checked before parsing (a character is 1-4 bytes: most texts need no encoding to know).
    if len(text) * 4 > MAX_SPEC_BYTES and (
        len(text.encode("utf-8", errors="surrogatepass")) > MAX_SPEC_BYTES
    ):
        raise SpecError([_TOO_LARGE], filename)
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
        problem = _yaml_problem((exc.problem or exc.context or "invalid YAML").strip())
        raise SpecError(
            [SpecProblem(line, col, "", f"not valid YAML: {problem}")], filename
        ) from None
    except ReaderError as exc:
        # A character YAML does not allow (NUL, other control characters): report where it is.
        line, col = _line_col(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1])
        offset = len(text[: exc.position].encode("utf-8", errors="surrogatepass"))
        raise SpecError(
            [
                SpecProblem(
                    line,
                    col,
                    "",
                    f"not valid YAML: control character U+{char:04X} at byte offset {offset} "
                    "(a spec is text: is this a binary file?)",
                )
            ],
            filename,
        ) from None
    except YAMLError as exc:
        raise SpecError([SpecProblem(1, 1, "", f"not valid YAML: {exc}")], filename) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError):
        # ruamel's constructors can fail outside YAMLError, e.g. an integer of more than 4300
        # digits (ValueError from int()), `!!int x`, a date like 2024-13-45: still a bad spec,
        # never a traceback. The failing value is found again to say where it is.
        raise SpecError([_unreadable_value(text)], filename) from None
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


# ruamel's parser jargon -> what to look at. Matched on the start of its problem text.
_YAML_JARGON = (
    ("expected <block end>, but found", "a line is indented wrongly, or a value is stray"),
    (
        "mapping values are not allowed here",
        "a ':' here starts a mapping inside a value (quote the value if the ':' is part of it)",
    ),
    ("could not find expected ':'", "a key without ':' (or a wrongly indented line)"),
    ("found character '\\t' that cannot start any token", "a tab: indent with spaces"),
    ("but found another document", "a second document ('---'): a spec is one document"),
    ("expected a single document", "a second document ('---'): a spec is one document"),
)


def _yaml_problem(problem: str) -> str:
    for jargon, plain in _YAML_JARGON:
        if problem.startswith(jargon):
            return plain
    return problem


_TAG_WORDS = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:timestamp": "a date (quote it to make it text)",
    "tag:yaml.org,2002:bool": "true or false",
}


def _unreadable_value(text: str) -> SpecProblem:
    """The first scalar ruamel cannot construct, at its position (the text already parsed, so
    composing it again cannot fail)."""
    yaml = YAML(typ="rt")
    try:
        root: Node | None = yaml.compose(text)
    except (YAMLError, ValueError, TypeError, RecursionError):
        root = None
    todo, seen = [root] if root is not None else [], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            try:
                yaml.constructor.construct_object(node, deep=True)
            except (YAMLError, ValueError, TypeError, AttributeError, KeyError, IndexError):
                tag = str(getattr(node.tag, "value", node.tag) or "")
                what = _TAG_WORDS.get(tag, f"a value tagged {tag}")
                line, col = node.start_mark.line + 1, node.start_mark.column + 1
                shown = _short(node.value) if len(str(node.value)) < 4300 else "a very long value"
                return SpecProblem(line, col, "", f"not valid YAML: cannot read {shown} as {what}")
        elif isinstance(node, SequenceNode):
            todo.extend(reversed(node.value))
        elif isinstance(node, MappingNode):
            for key, value in reversed(node.value):
                todo += [value, key]
    return SpecProblem(1, 1, "", "not valid YAML: a value cannot be read")


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


# What each pydantic error type expected, in the product's words (its own wording - "Input
# should be a valid dictionary or instance of Vip" - names Python types and classes).
_EXPECTED = {
    "model_type": "a mapping (indented 'key: value' lines)",
    "model_attributes_type": "a mapping (indented 'key: value' lines)",
    "dict_type": "a mapping (indented 'key: value' lines)",
    "tuple_type": "a list ('- item' lines or [a, b])",
    "list_type": "a list ('- item' lines or [a, b])",
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "ip_v4_address": "an IPv4 address, e.g. 10.0.0.1",
    "ip_v4_interface": "an IPv4 address with its prefix, e.g. 10.0.0.3/24",
    "none_required": "no value",
}
_BOUNDS = {
    "greater_than": ("more than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}
# Errors about the field itself (its type or value): the message shows what was found.
_SHOWS_INPUT = {*_EXPECTED, *_BOUNDS, "literal_error", "enum", "string_pattern_mismatch"}


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see docs/spec-reference.md)"
    if kind == "missing":
        index = err["loc"][-1] if err["loc"] else None
        if isinstance(index, int):
            return f"the list is too short: item {index + 1} is missing"
        return "required field is missing"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s), got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} item(s), got {ctx.get('actual_length')}"
    if kind in ("string_too_short", "string_too_long"):
        bound = ctx.get("min_length") if kind == "string_too_short" else ctx.get("max_length")
        which = "at least" if kind == "string_too_short" else "at most"
        return f"expected {which} {bound} character(s) (got {len(str(value))})"
    if kind in _EXPECTED:
        msg = f"expected {_EXPECTED[kind]}"
    elif kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        msg = f"expected {words} {_number(ctx.get(key))}"
    elif kind in ("literal_error", "enum"):
        msg = f"expected {ctx.get('expected')}"
    elif kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        msg = PATTERN_HELP.get(pattern, f"expected text matching {pattern}").rstrip(".")
    else:
        # value_error / assertion_error from the models' own validators, cross_field and
        # not_implemented: already the product's words. Anything else: pydantic's message with
        # its "Input should be" turned around (tests check no such wording is reachable).
        msg = str(err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        if msg.startswith("Input should be "):
            msg = "expected " + msg.removeprefix("Input should be ")
    if kind in _SHOWS_INPUT or (kind in ("value_error", "not_implemented") and _scalar(value)):
        return f"{msg} (got {_found(value)})"
    return msg


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _found(value: Any) -> str:
    """What a value is, for "(got ...)": the value itself when short, else its kind."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 128:
        # str() of a huge int raises ValueError (more than 4300 digits); none would fit anyway.
        return f"a {value.bit_length()}-bit number"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) < 80 else f"{len(value)} characters of text"
    if isinstance(value, TaggedScalar):
        return f"a value tagged {value.tag.value} (a spec uses no YAML tags)"
    if hasattr(value, "isoformat") and hasattr(value, "toordinal"):
        # A YAML timestamp (a date or datetime). Duck-typed: the pure core imports no
        # datetime module (an import-linter contract), so no clock can creep in.
        return f"the date {value.isoformat()}; quote it to make it text"
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, set | frozenset):
        return "a set (!!set)"
    return "a value of another kind"


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
