"""How the gateway's configuration reports mistakes: every one at once, each with the file, the
line and the field, never with a secret."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigurationError
from .._yaml import Loc
from ..redaction import Redactor

__all__ = [
    "GatewayConfigError",
    "Problem",
    "Problems",
    "describe",
    "format_field",
    "is_secret_loc",
    "pydantic_message",
]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a gateway file: the field (``routes["GET /x"].price``), what is wrong, and
    the 1-based line when known."""

    field: str
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class GatewayConfigError(ConfigurationError):
    """A gateway file is invalid. ``problems`` lists every mistake found; ``str()`` gives one line
    per mistake, each naming the file, the line and the field. Never contains a secret."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(problem.render(source) for problem in self.problems))


def format_field(loc: Loc) -> str:
    """``("routes", "POST /v1/messages", "match", 0, "price")`` → ``routes["POST /v1/messages"]
    .match[0].price``: dotted where a key is a plain name, bracketed and quoted otherwise."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


class Problems:
    """Collects problems with their lines; raises them all at once."""

    def __init__(self, source: str, lines: Mapping[Loc, int], redactor: Redactor) -> None:
        self.source = source
        self.lines = lines
        self.redactor = redactor
        self.items: list[Problem] = []
        self.spelled: dict[Loc, Loc] = {}
        """Fields the file wrote under another accepted name (``store_url`` for ``store``):
        problems are reported under the name the file uses."""

    def add(self, loc: Loc, message: str) -> None:
        for canonical, written in self.spelled.items():
            if loc[: len(canonical)] == canonical:
                loc = (*written, *loc[len(canonical) :])
                break
        line = None
        for size in range(len(loc), -1, -1):  # the closest value the file has a line for
            line = self.lines.get(loc[:size])
            if line is not None:
                break
        self.items.append(Problem(format_field(loc), self.redactor(message), line))

    def raise_if_any(self) -> None:
        if self.items:
            ordered = sorted(self.items, key=lambda p: (p.line is None, p.line or 0, p.field))
            raise GatewayConfigError(self.source, ordered)


_TYPE_MESSAGES = {
    "string_type": "expected text",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping (name: value lines)",
    "model_type": "expected a mapping (name: value lines)",
    "model_attributes_type": "expected a mapping (name: value lines)",
    "list_type": "expected a list (lines starting with '- ')",
}


def describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def pydantic_message(error: Mapping[str, Any], secret: bool) -> str:
    kind = str(error.get("type", ""))
    loc = tuple(error.get("loc", ()))
    from .schema import ALIASES, KNOWN_NAMES

    alias = ALIASES.get(tuple(str(part) for part in loc))
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        same = [key[-1] for key, other in ALIASES.items() if other == name and key[:-1] == loc[:-1]]
        if same:
            return f"the same setting as {same[0]}: write one of them"
        close = difflib.get_close_matches(name, KNOWN_NAMES, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field{hint}"
    if kind == "missing":
        return "required, and missing" + (f" (or write {alias})" if alias else "")
    if kind in _TYPE_MESSAGES:
        message = _TYPE_MESSAGES[kind]
        if not secret and "input" in error:
            message += f", got {describe(error['input'])}"
        if kind == "string_type" and isinstance(error.get("input"), int | float | bool):
            message += " (put it in quotes)"
        return message
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def is_secret_loc(loc: Loc) -> bool:
    return "headers" in loc or "private_key" in loc or "secret" in loc
