"""A strict YAML reader for gateway files: plain data, no surprises, and line numbers.

PyYAML's ``safe_load`` follows YAML 1.1, whose implicit types bite configuration files: an
unquoted address ``0x8335…`` becomes a number, ``anthropic-version: 2023-06-01`` a date,
``country: no`` the boolean false, ``1:30`` the number 90. This reader resolves unquoted
scalars like YAML 1.2's core schema instead: ``true``/``false``, ``null``/``~``, decimal
integers and floats; everything else stays a string. Duplicate keys (two routes with the same
key, the last silently winning) are an error. Each value's line is kept so that errors can
point at it.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_VALUES", "Loc", "YAMLProblem", "read_yaml"]

MAX_VALUES = 100_000
"""Most values a gateway file may hold, aliases expanded (a real one has a few hundred)."""

Loc = tuple[str | int, ...]

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema resolution and duplicate-key detection."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class-level table

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""])
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])


def _construct_int(loader: _Loader, node: ScalarNode) -> int:
    # SafeConstructor's int also reads 0x, 0o, 0b and sexagesimal forms: only decimals here.
    return int(str(loader.construct_scalar(node)))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class YAMLProblem(Exception):
    """The text is not YAML this reader accepts; ``line``/``column`` are 1-based."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def read_yaml(text: str) -> tuple[Any, dict[Loc, int]]:
    """Parse one YAML document; returns the data and the 1-based line of every value.

    Raises :class:`YAMLProblem` on a syntax error, a duplicate key or several documents.
    """
    loader = _Loader(text)
    lines: dict[Loc, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        # Before constructing: aliases expand, and a few nested ones can make billions of values.
        _record_lines(node, (), lines)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        if mark is None:
            raise YAMLProblem(problem) from None
        raise YAMLProblem(problem, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise YAMLProblem(f"not valid YAML ({type(exc).__name__})") from None
    finally:
        loader.dispose()
    return data, lines


def _record_lines(node: Node, loc: Loc, lines: dict[Loc, int], line: int | None = None) -> None:
    if len(lines) >= MAX_VALUES or len(loc) > 64:
        raise YAMLProblem(
            f"too many values (more than {MAX_VALUES}, or nested deeper than 64, aliases expanded)",
            node.start_mark.line + 1,
            node.start_mark.column + 1,
        )
    # A mapping entry is reported on its key's line: a nested block value starts below it.
    lines[loc] = line if line is not None else node.start_mark.line + 1
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode):
                key_line = key_node.start_mark.line + 1
                _record_lines(value_node, (*loc, str(key_node.value)), lines, key_line)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*loc, index), lines)
