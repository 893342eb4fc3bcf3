"""Flask config, Django settings and the gateway file, mapped onto :class:`GateSettings`.

The three name the same settings in their own style: ``X402GATE_PAY_TO`` in Flask's
``app.config``, ``"PAY_TO"`` in Django's ``X402GATE`` dict, ``pay_to:`` in YAML. A reader collects
every problem at once (unknown keys with the closest known one, missing and invalid values) and
raises one :class:`SettingsError` naming each key as the user wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigurationError
from ..options import suggest
from .model import SETTING_NAMES, GateSettings
from .validators import Conflict, Missing

__all__ = [
    "DJANGO",
    "FLASK",
    "MAPPING",
    "YAML",
    "SettingProblem",
    "SettingsError",
    "Spelling",
    "read_django_setting",
    "read_flask_config",
    "read_settings",
]


@dataclass(frozen=True, slots=True)
class Spelling:
    """How one framework writes the setting names: a prefix and upper or lower case."""

    source: str
    """Where the settings come from, for messages (``"Flask config"``)."""
    prefix: str = ""
    upper: bool = True

    def key(self, name: str) -> str:
        """The user's spelling of the setting ``name`` (``pay_to`` → ``X402GATE_PAY_TO``)."""
        return self.prefix + (name.upper() if self.upper else name)

    def name(self, key: str) -> str | None:
        """The setting a user's key names, or ``None`` when it names none."""
        if not key.startswith(self.prefix):
            return None
        bare = key[len(self.prefix) :]
        if bare != (bare.upper() if self.upper else bare.lower()):
            return None  # "Pay_To" is not the spelling of this framework
        name = bare.lower()
        return name if name in SETTING_NAMES else None


FLASK = Spelling("Flask config", prefix="X402GATE_")
DJANGO = Spelling("settings.X402GATE")
YAML = Spelling("the gateway file", upper=False)
MAPPING = Spelling("gate_from_settings", upper=False)


@dataclass(frozen=True, slots=True)
class SettingProblem:
    """One wrong setting: its key as written and what is wrong with it."""

    key: str
    message: str
    name: str | None = None
    """The setting in the model's spelling (``None`` for an unknown key)."""

    def __str__(self) -> str:
        # "PAY_TO is required", "PAY_TO must not be ...": a sentence when the message is one.
        sentence = self.message.startswith(("is ", "must ", "cannot ", "has "))
        return f"{self.key} {self.message}" if sentence else f"{self.key}: {self.message}"


class SettingsError(ConfigurationError):
    """Every problem of a settings source, each with its key (see :attr:`problems`)."""

    def __init__(self, source: str, problems: tuple[SettingProblem, ...]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            text = f"{source}: {problems[0]}"
        else:
            lines = "".join(f"\n  {problem}" for problem in problems)
            text = f"{source}: {len(problems)} problems:{lines}"
        super().__init__(text)


def read_settings(values: Mapping[str, Any], spelling: Spelling) -> GateSettings:
    """:class:`GateSettings` from ``values`` keyed in ``spelling``; :class:`SettingsError`
    listing every unknown key, missing and invalid value otherwise."""
    problems: list[SettingProblem] = []
    known = [spelling.key(name) for name in SETTING_NAMES]
    fields: dict[str, Any] = {}
    for key, value in values.items():
        name = spelling.name(key) if isinstance(key, str) else None
        if name is None:
            guess = suggest(key, known) if isinstance(key, str) else None
            hint = f" (did you mean {guess!r}?)" if guess is not None else ""
            problems.append(SettingProblem(str(key), f"is not a setting{hint}"))
        else:
            fields[name] = value
    try:
        settings = GateSettings.of(fields)
    except ValidationError as exc:
        problems.extend(_problems(exc, spelling))
        settings = None
    if problems or settings is None:
        problems.sort(key=lambda p: SETTING_NAMES.index(p.name) if p.name else -1)
        raise SettingsError(spelling.source, tuple(problems))
    return settings


def _problems(error: ValidationError, spelling: Spelling) -> list[SettingProblem]:
    found = []
    for item in error.errors(include_url=False, include_input=False):
        name = str(item["loc"][0]) if item["loc"] else None
        cause = (item.get("ctx") or {}).get("error")
        message = str(cause) if isinstance(cause, ConfigurationError) else item["msg"]
        if isinstance(cause, Missing):
            instead = "".join(f" (or {spelling.key(other)})" for other in cause.instead)
            message = f"is required{instead}: {message}"
        elif isinstance(cause, Conflict):
            message = f"{message}: {', '.join(spelling.key(other) for other in cause.others)}"
        key = spelling.key(name) if name is not None else spelling.source
        found.append(SettingProblem(key, message, name))
    return found


def read_flask_config(config: Mapping[str, Any]) -> GateSettings:
    """The ``X402GATE_*`` keys of a Flask ``app.config``; other keys are Flask's own."""
    ours = {k: v for k, v in config.items() if isinstance(k, str) and k.startswith(FLASK.prefix)}
    return read_settings(ours, FLASK)


def read_django_setting(setting: Any) -> GateSettings:
    """Django's ``settings.X402GATE`` dict."""
    if not isinstance(setting, Mapping):
        found = "missing" if setting is None else f"a {type(setting).__name__}"
        problem = SettingProblem("X402GATE", f"must be a dict; it is {found}")
        raise SettingsError("settings", (problem,))
    return read_settings(setting, DJANGO)
