"""Loading a policy from YAML, JSON, a mapping or a Policy, with errors that name file, line and field.

Both readers build plain data plus a map from every data path (``("rules", 1, "caps", 0)``) to the
1-based line it starts on; pydantic's error locations are data paths, so every schema or semantic
error can point at its line. Numbers with a fraction become ``Decimal`` from their source text, so a
written ``0.50`` is exactly ``Decimal("0.50")``.
"""

from __future__ import annotations

import bisect
import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agentguard_otel.errors import PolicyError
from agentguard_otel.policy.model import DEFAULT_POLICY, SEMANTIC_ERROR, Policy

DataPath = tuple[str | int, ...]
Lines = dict[DataPath, int]

_YAML_MAP = "tag:yaml.org,2002:map"
_YAML_SEQ = "tag:yaml.org,2002:seq"
_YAML_FLOAT = "tag:yaml.org,2002:float"
_YAML_MERGE = "tag:yaml.org,2002:merge"
_DICT_KEY = "[key]"  # pydantic's marker for an error in a dict key rather than its value

# The JSON text is syntax-checked by the json module first, so these only need to find token ends.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_JSON_WORDS: tuple[tuple[str, Any], ...] = (
    ("true", True), ("false", False), ("null", None),
    # Accepted by the json module; kept as Decimal so the schema rejects them at their line.
    ("NaN", Decimal("NaN")), ("Infinity", Decimal("Infinity")), ("-Infinity", Decimal("-Infinity")),
)


def load_policy(source: str | os.PathLike[str] | Mapping[str, Any] | Policy | None, *,
                priced: Callable[[str], bool] | None = None) -> Policy:
    """A path to ``.yaml``/``.yml``/``.json``, a mapping, a Policy (returned as is), or None (the
    permissive shadow-mode default). Raises PolicyError naming file, line and field. ``priced``
    tells whether a model id has a price: then a ``downgrade_to`` without one is an error too
    (under ``unknown_model: block`` it would be blocked, or sent unpriced)."""
    if source is None:
        return DEFAULT_POLICY
    if isinstance(source, Policy):
        return source
    if isinstance(source, Mapping):
        data = dict(source)
        return _validate(data, {}, None, priced)
    return _load_file(Path(source), priced)


def _load_file(path: Path, priced: Callable[[str], bool] | None) -> Policy:
    file = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise PolicyError(f"unsupported policy file type {suffix or '(no extension)'!r}; "
                          "use .yaml, .yml or .json", file=file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file: {exc.strerror or exc}", file=file) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyError("the policy file is not UTF-8 text", file=file,
                          line=raw.count(b"\n", 0, exc.start) + 1) from exc
    reader = _JsonReader(text, file) if suffix == ".json" else _YamlReader(text, file)
    data = reader.read()
    if not isinstance(data, dict):
        raise PolicyError("a policy must be a mapping (version, rules, ...)", file=file,
                          line=reader.lines.get(()))
    data.setdefault("id", path.stem)
    return _validate(data, reader.lines, file, priced)


class _YamlReader:
    """Walks the composed YAML node tree (which keeps every node's position) instead of ``safe_load``."""

    def __init__(self, text: str, file: str) -> None:
        self._text = text
        self._file = file
        self.lines: Lines = {}
        self._open: set[int] = set()  # collections on the current path: a recursive alias would never end

    def read(self) -> Any:
        self._refuse_aliases()
        try:
            loader = yaml.SafeLoader(self._text)
        except yaml.YAMLError as exc:
            raise self._syntax_error(exc) from exc
        try:
            root = loader.get_single_node()
            if root is None:
                raise PolicyError("the policy file is empty", file=self._file, line=1)
            return self._value(loader, root, (), _line(root))
        except yaml.YAMLError as exc:
            raise self._syntax_error(exc) from exc
        finally:
            loader.dispose()

    def _syntax_error(self, exc: yaml.YAMLError) -> PolicyError:
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            detail = f"{exc.problem} ({exc.context})" if exc.context else str(exc.problem)
            return PolicyError(f"YAML error: {detail}", file=self._file,
                               line=mark.line + 1 if mark is not None else None)
        if isinstance(exc, yaml.reader.ReaderError):
            return PolicyError(f"YAML error: unacceptable character #x{exc.character:04x} ({exc.reason})",
                               file=self._file, line=self._text.count("\n", 0, exc.position) + 1)
        return PolicyError(f"YAML error: {exc}", file=self._file)

    def _refuse_aliases(self) -> None:
        """A policy needs no anchors or aliases, and a few lines of them can expand without bound
        (an alias bomb): they are refused before anything is composed."""
        try:
            for event in yaml.parse(self._text, Loader=yaml.SafeLoader):
                if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                    mark = event.start_mark
                    raise PolicyError("YAML anchors and aliases are refused (a policy needs none)", file=self._file,
                                      line=mark.line + 1 if mark is not None else None)
        except yaml.YAMLError as exc:
            raise self._syntax_error(exc) from exc

    def _error(self, message: str, line: int, path: DataPath) -> PolicyError:
        return PolicyError(message, file=self._file, line=line, field=_dotted(path) or None)

    def _value(self, loader: yaml.SafeLoader, node: yaml.Node, path: DataPath, line: int) -> Any:
        self.lines[path] = line
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(loader, node, path)
        if id(node) in self._open:
            raise self._error("a YAML alias refers to a node that contains it", line, path)
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _YAML_SEQ:
                return [self._value(loader, item, (*path, index), _line(item))
                        for index, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode) and node.tag == _YAML_MAP:
                return self._mapping(loader, node, path)
            raise self._error(f"unsupported YAML tag {node.tag!r}", line, path)
        finally:
            self._open.discard(id(node))

    def _mapping(self, loader: yaml.SafeLoader, node: yaml.MappingNode, path: DataPath) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        # Merge keys (<<: *defaults) first, the first-listed source winning; explicit keys override them.
        for key_node, value_node in node.value:
            if key_node.tag == _YAML_MERGE:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in reversed(sources):
                    merged = self._value(loader, source, path, self.lines[path])
                    if not isinstance(merged, dict):
                        raise self._error("a merge key (<<) needs a mapping or a list of mappings",
                                          _line(source), path)
                    result.update(merged)
        explicit: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _YAML_MERGE:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._error("mapping keys must be plain scalars", _line(key_node), path)
            key = self._scalar(loader, key_node, path)
            key_path = (*path, key)
            if key in explicit:
                raise self._error(f"duplicate key {key!r}", _line(key_node), key_path)
            explicit.add(key)
            result[key] = self._value(loader, value_node, key_path, _line(key_node))
        return result

    def _scalar(self, loader: yaml.SafeLoader, node: yaml.ScalarNode, path: DataPath) -> Any:
        if node.tag == _YAML_FLOAT:
            try:
                return Decimal(node.value.replace("_", ""))
            except InvalidOperation:
                raise self._error(f"{node.value!r} is not a decimal number", _line(node), path) from None
        try:
            return loader.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            raise self._error(f"YAML error: {exc.problem}", _line(node), path) from exc


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _JsonReader:
    """A small walk over already-valid JSON that records where every key and item starts."""

    def __init__(self, text: str, file: str) -> None:
        self._text = text
        self._file = file
        self._newlines = [match.start() for match in re.finditer("\n", text)]
        self.lines: Lines = {}

    def read(self) -> Any:
        try:
            json.loads(self._text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"JSON error: {exc.msg}", file=self._file, line=exc.lineno) from exc
        start = self._skip(0)
        value, _ = self._value(start, (), self._line(start))
        return value

    def _line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _skip(self, pos: int) -> int:
        while self._text[pos] in " \t\r\n":
            pos += 1
        return pos

    def _value(self, pos: int, path: DataPath, line: int) -> tuple[Any, int]:
        self.lines[path] = line
        char = self._text[pos]
        if char == "{":
            return self._object(pos, path)
        if char == "[":
            return self._array(pos, path)
        if char == '"':
            return self._string(pos)
        for word, value in _JSON_WORDS:
            if self._text.startswith(word, pos):
                return value, pos + len(word)
        number = self._token(_JSON_NUMBER, pos)
        fraction, exponent = number.groups()
        parsed = Decimal(number.group()) if fraction or exponent else int(number.group())
        return parsed, number.end()

    def _string(self, pos: int) -> tuple[str, int]:
        token = self._token(_JSON_STRING, pos)
        text: str = json.loads(token.group())
        return text, token.end()

    def _token(self, pattern: re.Pattern[str], pos: int) -> re.Match[str]:
        token = pattern.match(self._text, pos)
        if token is None:  # json.loads accepted the text, so only a bug in this reader gets here
            raise PolicyError("JSON error: unexpected token", file=self._file, line=self._line(pos))
        return token

    def _object(self, pos: int, path: DataPath) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        pos = self._skip(pos + 1)
        while self._text[pos] != "}":
            key_line = self._line(pos)
            key, pos = self._string(pos)
            key_path = (*path, key)
            if key in result:
                raise PolicyError(f"duplicate key {key!r}", file=self._file, line=key_line,
                                  field=_dotted(key_path))
            pos = self._skip(self._skip(pos) + 1)  # past the colon
            result[key], pos = self._value(pos, key_path, key_line)
            pos = self._skip(pos)
            if self._text[pos] == ",":
                pos = self._skip(pos + 1)
        return result, pos + 1

    def _array(self, pos: int, path: DataPath) -> tuple[list[Any], int]:
        result: list[Any] = []
        pos = self._skip(pos + 1)
        while self._text[pos] != "]":
            item, pos = self._value(pos, (*path, len(result)), self._line(pos))
            result.append(item)
            pos = self._skip(pos)
            if self._text[pos] == ",":
                pos = self._skip(pos + 1)
        return result, pos + 1


@dataclass(frozen=True)
class _Issue:
    path: DataPath
    line: int | None
    message: str
    branch_only: bool  # the value had the wrong type for one member of a union (pydantic reports each)


def _validate(data: dict[str, Any], lines: Lines, file: str | None, priced: Callable[[str], bool] | None) -> Policy:
    try:
        return Policy.model_validate(data, context={"priced": priced})
    except ValidationError as exc:
        issues = _merge_union_branches([_issue(error, data, lines) for error in exc.errors()])
        first, *others = sorted(issues, key=lambda issue: issue.line if issue.line is not None else 1 << 62)
        # One error names the place; the others follow as further "file:line: field: message" lines.
        message = first.message + "".join(f"\n{_render(issue, file)}" for issue in others)
        raise PolicyError(message, file=file, line=first.line, field=_dotted(first.path) or None) from None


def _issue(error: ErrorDetails, data: Any, lines: Lines) -> _Issue:
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == SEMANTIC_ERROR:
        loc += tuple(ctx["at"])
    path, branch_only = _data_path(loc, data)
    message = error["msg"]
    if error["type"] == "value_error":  # drop pydantic's "Value error, " prefix from our own messages
        message = str(ctx["error"])
    elif error["type"] == "extra_forbidden":
        message = _unknown_key_message(loc)
    elif _DICT_KEY in loc:
        message = f"invalid key {error['input']!r}: {message}"
    line = next((lines[path[:end]] for end in range(len(path), -1, -1) if path[:end] in lines), None)
    return _Issue(path, line, message, branch_only)


def _data_path(loc: tuple[str | int, ...], data: Any) -> tuple[DataPath, bool]:
    """Follow pydantic's location through the data; the names pydantic gives union members
    (``"str"``, ``"list[str]"``) are not data and are skipped."""
    path: list[str | int] = []
    node = data
    branch_only = False
    for part in loc:
        if part == _DICT_KEY:
            break
        if isinstance(node, Mapping):
            path.append(part)
            if part not in node:  # a missing required field
                break
            node = node[part]
            branch_only = False
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
            branch_only = False
        else:
            branch_only = True
    return tuple(path), branch_only


def _merge_union_branches(issues: list[_Issue]) -> list[_Issue]:
    """A value of the wrong type yields one error per union member. When some member got further
    (e.g. a list with one bad item), only its errors matter; otherwise say once what was expected."""
    deeper = {issue.path[:end] for issue in issues if not issue.branch_only
              for end in range(len(issue.path) + 1)}
    kept: list[_Issue] = []
    merged: dict[DataPath, list[str]] = {}
    for issue in issues:
        if not issue.branch_only:
            kept.append(issue)
        elif issue.path not in deeper:
            if issue.path not in merged:
                merged[issue.path] = []
                kept.append(issue)
            merged[issue.path].append(issue.message)
    prefix = "Input should be "
    result: list[_Issue] = []
    for issue in kept:
        messages = merged.get(issue.path) if issue.branch_only else None
        if messages and len(messages) > 1:
            if all(text.startswith(prefix) for text in messages):
                text = prefix + " or ".join(text.removeprefix(prefix) for text in messages)
            else:
                text = " or ".join(messages)
            issue = _Issue(issue.path, issue.line, text, True)
        result.append(issue)
    return result


def _unknown_key_message(loc: tuple[str | int, ...]) -> str:
    key = loc[-1]
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown key {key!r}"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint} (allowed: {', '.join(allowed)})"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class validating the object at ``loc`` (list indexes are transparent)."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        nested = _find_model(field.annotation) if field is not None else None
        if nested is None:
            return None
        model = nested
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _dotted(path: DataPath) -> str:
    """``("rules", 1, "caps", 0, "window")`` -> ``rules[1].caps[0].window``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _render(issue: _Issue, file: str | None) -> str:
    return str(PolicyError(issue.message, file=file, line=issue.line, field=_dotted(issue.path) or None))
